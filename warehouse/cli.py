"""`periscope warehouse load|query` and `periscope dbt sync|build|run|test|docs|freshness` (entry points)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from periscope import get_settings
from periscope.cli_options import source_option
from periscope.output import Column, FormatOption, print_rows

__all__ = ["dbt_app", "warehouse_app"]

console = Console()
err_console = Console(stderr=True)

warehouse_app = typer.Typer(
    help=(
        "Copy the lake (silver observations and features, gold predictions and event "
        "predictions) into Postgres."
    ),
    no_args_is_help=True,
)
dbt_app = typer.Typer(
    help=(
        "Run dbt on dbt_project/ (lake schema -> staging -> intermediate -> marts star schema), "
        "connected with Periscope's settings, after writing the files derived from the source "
        "contracts (periscope dbt sync). Extra arguments go to dbt: "
        "periscope dbt build --select fct_forecast_accuracy+"
    ),
    no_args_is_help=True,
)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _count(n: int) -> str:
    return f"{n:,}"


def _status(status: str) -> str | Text:
    return Text("skipped: not in the lake yet", style="dim") if status == "skipped" else status


_SUMMARY_COLUMNS = (
    Column("table"),
    Column("status", show=_status),
    Column("mode"),
    Column("from version", justify="right"),
    Column("to version", justify="right"),
    Column("rows copied", justify="right", show=_count),
    Column("rows upserted", justify="right", show=_count),
    Column("forecasts", justify="right", show=_count),
    Column("rows in Delta", justify="right", show=_count),
    Column("rows in Postgres", justify="right", show=_count),
)


@warehouse_app.command("load")
def load(
    source: Annotated[
        list[str] | None,
        source_option("Source whose tables to load (repeatable); default: every source."),
    ] = None,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            "-t",
            help=(
                "observations, features, predictions and/or the speed layer's "
                "<event>_predictions (taxi: trip_predictions; only for sources whose contract "
                "names event predictions), repeatable; default: all. The generic "
                "event_predictions still picks every speed layer (deprecated)."
            ),
            show_default=False,
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Reload the chosen tables in full instead of incrementally."),
    ] = False,
    drop_orphans: Annotated[
        bool,
        typer.Option(
            "--drop-orphans",
            help="Drop the Postgres tables (and _load_state rows) left under an older name "
            "(taxi_event_predictions, now taxi_trip_predictions); a load only warns of them.",
        ),
    ] = False,
    fmt: FormatOption = "table",
) -> None:
    """Copy new lake rows into the Postgres schema `lake`, incrementally and idempotently.

    Tables: silver/<source>_observations, silver/<source>_features and gold/<source>_predictions, whose forecasts list becomes lake.<source>_forecasts (one row per entity, window, measure and horizon), and for sources whose contract names event predictions the speed layer's gold/<source>_<event>_predictions (one row per event; taxi: gold/taxi_trip_predictions).

    Only rows of the Delta files added since the version recorded in lake._load_state are copied: COPY into a staging table, upsert by key, one transaction per table, so a crash never leaves half a batch. A second run copies nothing. Tables not in the lake yet are skipped; exits 1 when none of the chosen tables exists.
    """
    from warehouse.loader import load_tables
    from warehouse.plan import TableSpec, generic_table_note, table_specs

    try:
        specs = table_specs(source, table)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if note := generic_table_note(source, table):
        err_console.print(f"[yellow]{note}[/]", soft_wrap=True)
    settings = get_settings()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        # CSV and JSON own stdout: the bar goes to stderr then.
        console=console if fmt == "table" else err_console,
    ) as progress:
        tasks: dict[str, object] = {}

        def on_progress(spec: TableSpec, done: int, total: int) -> None:
            if spec.name not in tasks:
                tasks[spec.name] = progress.add_task(spec.name, total=total)
            progress.update(tasks[spec.name], completed=done, total=total)  # type: ignore[arg-type]

        results = load_tables(
            settings, specs, full=full, on_progress=on_progress, drop_orphans=drop_orphans
        )

    with_forecasts = {s.name for s in specs if s.forecasts_table}
    rows = [
        (
            r.table,
            r.status,
            r.mode or None,
            r.from_version,
            r.to_version,
            *(
                (None,) * 5
                if r.status == "skipped"
                else (
                    r.rows_loaded,
                    r.rows_changed,
                    r.forecasts_loaded if r.table in with_forecasts else None,
                    r.delta_rows,
                    r.lake_rows if r.status == "loaded" else None,
                )
            ),
        )
        for r in results
    ]
    print_rows(
        _SUMMARY_COLUMNS,
        rows,
        fmt=fmt,
        title=f"Lake -> Postgres {settings.postgres_host}:{settings.postgres_port}",
        console=console,
    )
    if results and all(r.status == "skipped" for r in results):
        err_console.print("[yellow]nothing to load:[/] none of these tables is in the lake yet")
        raise typer.Exit(1)


@warehouse_app.command("query")
def query(
    sql: Annotated[str, typer.Argument(help="A SELECT over the marts, e.g. marts.fct_anomaly.")],
    role: Annotated[
        Literal["bi", "owner"],
        typer.Option(help="Connect as bi_reader (what BI tools see) or as the owner."),
    ] = "bi",
    limit_rows: Annotated[int, typer.Option(min=1, help="Show at most this many rows.")] = 100,
    fmt: FormatOption = "table",
) -> None:
    """Run one SQL query on the warehouse and print the result (as bi_reader by default)."""
    import psycopg2

    settings = get_settings()
    try:
        with psycopg2.connect(settings.postgres_dsn(role)) as conn, conn.cursor() as cur:
            cur.execute(sql)
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchmany(limit_rows)
            total = cur.rowcount
    except psycopg2.Error as exc:
        console.print(f"[bold red]error:[/] {str(exc).strip()}")
        raise typer.Exit(1) from None
    shown = f"{len(rows)} of {total}" if total > len(rows) else f"{len(rows)}"
    print_rows(columns, rows, fmt=fmt, caption=f"{shown} row(s)", null="NULL", console=console)
    if fmt != "table" and total > len(rows):
        err_console.print(
            f"[yellow]wrote the first {len(rows)} of {total} rows:[/] raise --limit-rows"
        )


@dbt_app.command("sync")
def dbt_sync() -> None:
    """Write the dbt files derived from the source contracts (lake sources, staging models, seeds, the contracts macro) into dbt_project's generated/ folders; stale ones are removed. build, run and test sync first."""
    from warehouse.dbt import sync_project

    result = sync_project()
    for path in result.written:
        console.print(f"[green]wrote[/]   {path}", soft_wrap=True)
    for path in result.removed:
        console.print(f"[yellow]removed[/] {path}", soft_wrap=True)
    console.print(
        f"{len(result.written)} written, {len(result.removed)} removed, "
        f"{len(result.unchanged)} unchanged"
    )


def _dbt(ctx: typer.Context, *args: str) -> None:
    from warehouse.dbt import run_dbt

    code = run_dbt(get_settings(), [*args, *ctx.args])
    if code:
        raise typer.Exit(code)


@dbt_app.command("build", context_settings=_PASS_THROUGH)
def dbt_build(ctx: typer.Context) -> None:
    """dbt build: seeds, models, unit tests and data tests, in DAG order (after a sync)."""
    _dbt(ctx, "build")


@dbt_app.command("run", context_settings=_PASS_THROUGH)
def dbt_run(ctx: typer.Context) -> None:
    """dbt run: build the models (facts incrementally) without tests (after a sync)."""
    _dbt(ctx, "run")


@dbt_app.command("test", context_settings=_PASS_THROUGH)
def dbt_test(ctx: typer.Context) -> None:
    """dbt test: data tests (keys, relationships, the lake reconciliation) and unit tests (after a sync)."""
    _dbt(ctx, "test")


@dbt_app.command("docs", context_settings=_PASS_THROUGH)
def dbt_docs(ctx: typer.Context) -> None:
    """dbt docs generate: the catalog and lineage site in dbt_project/target/."""
    _dbt(ctx, "docs", "generate")


@dbt_app.command("freshness", context_settings=_PASS_THROUGH)
def dbt_freshness(ctx: typer.Context) -> None:
    """dbt source freshness: how long ago each lake table was loaded."""
    _dbt(ctx, "source", "freshness")
