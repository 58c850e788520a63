"""`periscope api` runs the REST API with uvicorn; `periscope dashboard` the live dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from periscope.settings import Settings, get_settings

__all__ = ["api_app", "dashboard_app"]

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


dashboard_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@dashboard_app.callback()
def dashboard(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: the dashboard_host setting).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default: the dashboard_port setting)."),
    ] = None,
) -> None:
    """Serve the live dashboard (Streamlit): entities, series, anomalies, models, system health."""
    import sys
    import threading

    from streamlit.web import cli as streamlit_cli

    from serving.dashboard import APP_PATH

    settings = get_settings()
    host, port = host or settings.dashboard_host, port or settings.dashboard_port
    typer.echo(
        f"dashboard: http://{host}:{port}  (panels refresh every {settings.dashboard_refresh_s:g} s)"
    )
    # Streamlit runs in this process (as `python -m streamlit` would), so the gold tables it
    # shows can be read while its server starts: the first visitor finds them warm.
    threading.Thread(target=_warm, args=(settings,), name="warm-gold", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP_PATH),
                "--server.address", host, "--server.port", str(port), "--server.headless", "true",
                "--browser.gatherUsageStats", "false", "--theme.base", "light"]  # fmt: skip
    streamlit_cli.main(prog_name="streamlit")


def _warm(settings: Settings) -> None:
    import time

    from serving.dashboard import warm_gold_tables

    started = time.monotonic()
    try:
        windows = warm_gold_tables(settings)
    except Exception as error:  # the pages read them again (and show the error) on a visit
        typer.echo(f"dashboard: could not read gold ahead of the first visit: {error}", err=True)
        return
    read = ", ".join(f"{source} {n:,}" for source, n in windows.items() if n) or "none yet"
    typer.echo(f"dashboard: gold windows in memory ({read}) in {time.monotonic() - started:.1f} s")
    if unread := [source for source, n in windows.items() if n is None]:
        typer.echo(f"dashboard: could not read the gold table of {', '.join(unread)}", err=True)
