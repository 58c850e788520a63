"""`periscope api`: run the REST API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from periscope.settings import get_settings

__all__ = ["api_app"]

api_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@api_app.callback()
def api(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: the api_host setting).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: the api_port setting).")
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI docs at /docs, Prometheus metrics at /metrics)."""
    import uvicorn

    from serving.api import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        access_log=False,  # /metrics counts requests; a log line per request costs latency
    )
