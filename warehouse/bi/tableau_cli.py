"""`periscope tableau write|extract` (entry point `tableau`): the Tableau files on the marts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from periscope import get_settings
from periscope.settings import Settings
from warehouse.bi.tableau_sheets import Connection
from warehouse.bi.tableau_workbook import write_files

__all__ = ["app", "default_connection", "settings_connection"]

console = Console()

app = typer.Typer(
    help=(
        "Tableau on the marts: the workbook and data sources (.twb/.tds, connecting as bi_reader "
        "to schema marts) and a .hyper extract of the marts."
    ),
    no_args_is_help=True,
)


def settings_connection(settings: Settings) -> Connection:
    """The connection the settings describe (host, port, database, the BI role)."""
    return Connection(
        settings.postgres_host,
        settings.postgres_port,
        settings.postgres_db,
        settings.postgres_bi_user,
    )


def default_connection() -> Connection:
    """The connection of the settings' defaults: what the committed files name."""
    fields = Settings.model_fields
    return Connection(
        fields["postgres_host"].default,
        fields["postgres_port"].default,
        fields["postgres_db"].default,
        fields["postgres_bi_user"].default,
    )


@app.command("write")
def write(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to write into; default: <local_dir>/bi/tableau.", show_default=False
        ),
    ] = None,
    defaults: Annotated[
        bool,
        typer.Option(
            "--defaults",
            help=(
                "Name the settings' default host, port and database instead of yours (how the "
                "committed files in warehouse/bi/tableau are made)."
            ),
        ),
    ] = False,
) -> None:
    """Write periscope.twb (sheets and dashboards: Forecast accuracy, Anomalies, Observations, Taxi demand) and one .tds per data source, connecting to your warehouse as bi_reader; no password is written, Tableau asks for it (PERISCOPE_POSTGRES_BI_PASSWORD in .env)."""
    if defaults:
        conn = default_connection()
        folder = out or get_settings().local_dir / "bi" / "tableau"
    else:
        settings = get_settings()
        conn = settings_connection(settings)
        folder = out or settings.local_dir / "bi" / "tableau"
    for path in write_files(conn, folder):
        console.print(f"[green]wrote[/] {path}", soft_wrap=True)
    console.print(f"connection: {conn.user}@{conn.host}:{conn.port}/{conn.database}, schema marts")


@app.command("extract")
def extract(
    out: Annotated[
        Path | None,
        typer.Option(
            help="The .hyper file; default: <local_dir>/bi/marts.hyper.", show_default=False
        ),
    ] = None,
) -> None:
    """Write a Tableau .hyper extract of every table in schema marts, read as bi_reader (replaces the file when done)."""
    from warehouse.bi.tableau_extract import write_extract

    settings = get_settings()
    path = out or settings.local_dir / "bi" / "marts.hyper"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tables"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("marts -> hyper", total=None)

        def on_table(table: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=table)

        counts = write_extract(settings, path, on_table=on_table)
    for table, rows in counts.items():
        console.print(f"  {table:<28} {rows:>12,} rows")
    console.print(f"[green]wrote[/] {path} ({len(counts)} tables)", soft_wrap=True)
