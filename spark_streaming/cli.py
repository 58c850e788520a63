"""`periscope bronze ...` (mounted by periscope/cli.py)."""

from __future__ import annotations

import typer

bronze_app = typer.Typer(
    help="Land Kafka records in the Delta bronze layer, exactly once.", no_args_is_help=True
)
