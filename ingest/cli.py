"""`periscope ingest ...`: producers into `<source>-raw` (mounted by periscope/cli.py)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Produce records into Kafka: replay real history, poll Open-Meteo, inject chaos.",
    no_args_is_help=True,
)
