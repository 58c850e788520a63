"""The `periscope` command line (Typer). Every command has `--help`.

Stages add their own command groups here as they land (`ingest`, `bronze`, `silver`, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from periscope.cli_options import source_option
from periscope.errors import PeriscopeError
from periscope.output import Column, print_rows, print_table
from periscope.settings import Settings, get_settings

__all__ = ["app", "main"]

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="periscope",
    help="Periscope: a streaming medallion lakehouse (Kafka → Delta → Postgres) on real engines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
services_app = typer.Typer(
    help="Run the local Kafka broker and PostgreSQL server.", no_args_is_help=True
)
topics_app = typer.Typer(
    help="Create and inspect the Kafka topics of every source.", no_args_is_help=True
)
app.add_typer(services_app, name="services")
app.add_typer(topics_app, name="topics")

ServiceName = Annotated[
    list[str] | None,
    typer.Argument(
        help="kafka, postgres, superset and/or prometheus (default: kafka and postgres).",
        show_default=False,
    ),
]


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
    )
    # kafka-python logs every refused connection as an ERROR while a broker starts; Periscope
    # raises its own clear errors when Kafka really is unreachable.
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    logging.getLogger("py4j").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _settings() -> Settings:
    return get_settings()


def _service_names(names: list[str] | None, *, every: bool = False) -> list[str]:
    from periscope.services import DEFAULT_SERVICE_NAMES, SERVICE_NAMES

    # Without names: kafka and postgres (Superset is opt-in); `down` stops every one.
    chosen = names or list(SERVICE_NAMES if every else DEFAULT_SERVICE_NAMES)
    unknown = sorted(set(chosen) - set(SERVICE_NAMES))
    if unknown:
        raise typer.BadParameter(
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}"
        )
    return chosen


# --- services ------------------------------------------------------------------------------
@services_app.command("up")
def services_up(names: ServiceName = None) -> None:
    """Start the services (idempotent) and wait until each one answers."""
    from periscope.services import get_service

    settings = _settings()
    for name in _service_names(names):
        service = get_service(name, settings)
        with console.status(f"starting {name} on {service.address} ..."):
            outcome = service.start()
        console.print(f"[green]✔[/] {name:<9} {outcome}, listening on {service.address}")


@services_app.command("down")
def services_down(names: ServiceName = None) -> None:
    """Stop the services cleanly (idempotent)."""
    from periscope.services import get_service

    settings = _settings()
    for name in reversed(_service_names(names, every=True)):
        with console.status(f"stopping {name} ..."):
            outcome = get_service(name, settings).stop()
        console.print(f"[green]✔[/] {name:<9} {outcome}")


@services_app.command("status")
def services_status(names: ServiceName = None) -> None:
    """Show what runs where; exits 1 when a service is down or unhealthy."""
    from periscope.services import get_service

    settings = _settings()
    all_ok = True
    for name in _service_names(names):
        st = get_service(name, settings).status()
        all_ok &= st.healthy
        if st.healthy:
            state = "[green]✔ healthy[/]"
        elif st.running:
            state = "[yellow]✘ running, not answering[/]"
        else:
            state = "[red]✘ stopped[/]"
        pid = f"pid {st.pid}" if st.pid else ""
        console.print(f"{name:<9} {state}  {st.address}  {pid}", highlight=False)
        console.print(f"          {st.detail}; log {st.log}", highlight=False, soft_wrap=True)
    if not all_ok:
        raise typer.Exit(1)


@services_app.command("watch")
def services_watch(
    names: ServiceName = None,
    every: Annotated[
        float, typer.Option(min=0.5, help="Seconds between looks at the services.")
    ] = 5.0,
) -> None:
    """Restart a service that crashed (its process gone without a stop), until stopped.

    `periscope up` runs this under supervisord; a service stopped on purpose (`services down`)
    stays stopped.
    """
    import signal
    import threading

    from periscope.services import get_service
    from periscope.supervise.watchdog import watch

    settings = _settings()
    services = [get_service(name, settings) for name in _service_names(names)]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    for watched in watch(services, every_s=every, stop=stop):
        console.print(f"{watched.service.name:<9} restarted {watched.restarts} time(s)")


@services_app.command("logs")
def services_logs(
    name: Annotated[str, typer.Argument(help="kafka or postgres.")],
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Print the end of a service's log file."""
    from periscope.services import get_service
    from periscope.services._process import tail

    service = get_service(_service_names([name])[0], _settings())
    log_file = service.status().log
    if follow:
        os.execvp("tail", ["tail", "-n", str(lines), "-F", str(log_file)])
    console.print(f"[dim]==> {log_file} <==[/]")
    print(tail(log_file, lines))


# --- topics --------------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create every source's topics (raw, dlq, features, predictions); existing ones are kept."""
    from periscope.topics import create_topics

    settings = _settings()
    for topic, created in create_topics(settings).items():
        mark = "[green]created[/]" if created else "[dim]exists [/]"
        console.print(f"{mark}  {topic}")


@topics_app.command("list")
def topics_list(
    internal: Annotated[bool, typer.Option(help="Include Kafka's internal topics.")] = False,
) -> None:
    """List the topics on the broker."""
    from periscope.topics import list_topics

    for topic in list_topics(_settings(), include_internal=internal):
        print(topic)


@topics_app.command("describe")
def topics_describe(
    topics: Annotated[
        list[str] | None, typer.Argument(help="Topics to describe (default: all).")
    ] = None,
) -> None:
    """Show partitions, replication and retention of topics."""
    from periscope.topics import describe_topics

    table = Table(title="Kafka topics")
    for column in ("topic", "partitions", "replication", "retention"):
        table.add_column(column)
    try:
        infos = describe_topics(_settings(), topics)
    except KeyError as exc:
        raise PeriscopeError(str(exc.args[0])) from None
    for info in infos:
        retention = f"{info.retention_ms / 3_600_000:g} h" if info.retention_ms is not None else "?"
        table.add_row(info.name, str(info.partitions), str(info.replication_factor), retention)
    print_table(table, console=console)


# --- lake ----------------------------------------------------------------------------------
lake_app = typer.Typer(
    help="Inspect and maintain the lake: reconcile every record between layers; compact and vacuum.",
    no_args_is_help=True,
)
app.add_typer(lake_app, name="lake")


def _add_orchestration_commands() -> None:
    """`periscope orchestrate` and `periscope lake maintain` (periscope/orchestration)."""
    from periscope.orchestration.cli import register

    register(app, lake_app)


_add_orchestration_commands()


@lake_app.command("audit")
def lake_audit(
    source: Annotated[
        list[str] | None, source_option("Source to audit (repeatable); default: every source.")
    ] = None,
    require_caught_up: Annotated[
        bool,
        typer.Option("--require-caught-up", help="Also fail when records are still in flight."),
    ] = False,
) -> None:
    """Kafka records, bronze rows, silver observations, quarantined, duplicates, late, gold, per source.

    Exits 1 when they do not add up.
    """
    from periscope.audit import audit_source
    from periscope.contracts import CONTRACTS, get_contract

    settings = _settings()
    contracts = [get_contract(name) for name in (source or list(CONTRACTS))]
    audits = [audit_source(settings, c, require_caught_up=require_caught_up) for c in contracts]
    table = Table(title="Lake audit: every record accounted for")
    table.add_column("records")
    for a in audits:
        table.add_column(a.source, justify="right")
    rows: dict[str, list[int | None]] = {
        "in Kafka (<source>-raw)": [a.kafka for a in audits],
        "in bronze": [a.bronze for a in audits],
        "processed by silver": [a.processed for a in audits],
        "  = silver observations": [a.tables["observations"] for a in audits],
        "  + quarantined": [a.tables["quarantined"] for a in audits],
        "  + dropped as duplicates": [a.tables["duplicates"] for a in audits],
        "too late for features": [a.tables["late"] for a in audits],
        "in flight": [a.not_landed + a.not_processed for a in audits],
        "silver feature windows": [a.windows for a in audits],
        "  scored in gold": [a.gold for a in audits],
    }
    for label, values in rows.items():
        table.add_row(label, *["-" if v is None else f"{v:,}" for v in values])
    table.add_row(
        "verdict", *["[green]adds up[/]" if not a.problems else "[red]MISMATCH[/]" for a in audits]
    )
    print_table(table, console=console)
    problems = [f"{a.source}: {p}" for a in audits for p in a.problems]
    for problem in problems:
        err_console.print(f"[red]✘[/] {problem}")
    if problems:
        raise typer.Exit(1)


# --- sql -----------------------------------------------------------------------------------
@app.command("sql")
def sql_query(
    query: Annotated[
        str | None,
        typer.Argument(
            help="SQL over the views <layer>.<table>, e.g. silver.weather_features.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        Literal["table", "csv", "json", "parquet"],
        typer.Option("--format", "-f", help="table, csv, json (one array) or parquet."),
    ] = "table",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file, not stdout; needed for parquet."),
    ] = None,
    as_of_version: Annotated[
        int | None,
        typer.Option("--as-of-version", min=0, help="Read one table as of this Delta version."),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            help="The table --as-of-version applies to; default: the one lake table the query names.",
        ),
    ] = None,
    limit_rows: Annotated[
        int | None,
        typer.Option(
            "--limit-rows", min=1, help="At most this many rows; default 100 for the table format."
        ),
    ] = None,
    list_tables: Annotated[
        bool,
        typer.Option(
            "--tables",
            help="List the lake's tables and their versions (--format table, csv or json).",
        ),
    ] = False,
) -> None:
    """Query the lake's Delta tables with DuckDB, also while streams write to them.

    Every table is a view <layer>.<table>:
    periscope sql "select count(*) from silver.weather_features".
    """
    from periscope import lake, sql

    settings = _settings()
    if list_tables:
        if fmt == "parquet":
            raise typer.BadParameter("--tables lists as table, csv or json")
        rows = [(t.name, t.version, t.path) for t in lake.tables(settings)]
        columns = [Column("view"), Column("version", justify="right"), Column("path")]
        title = f"Lake tables under {settings.lake_root}"
        if output is not None and fmt != "table":
            with output.open("w", encoding="utf-8", newline="") as out:
                print_rows(columns, rows, fmt=fmt, out=out)
        elif output is not None:
            raise typer.BadParameter("--output needs --format csv or json")
        else:
            print_rows(columns, rows, fmt=fmt, title=title, console=console)
        return
    if query is None:
        raise typer.BadParameter("give a query, or --tables to list the tables")
    if fmt == "table" and output is not None:
        raise typer.BadParameter("--output needs --format csv, json or parquet")
    if fmt == "parquet" and output is None:
        raise typer.BadParameter("--format parquet needs --output FILE")
    if table is not None and as_of_version is None:
        raise typer.BadParameter("--table only says which table --as-of-version applies to")
    if as_of_version is not None and table is None:
        table = sql.table_for_version(query, lake.tables(settings))

    con = lake.connect(settings, as_of_version=as_of_version, table=table)
    result = sql.run(con, query)
    if result is None:  # a statement without rows, e.g. SET
        return
    if fmt != "table":
        sql.write(result.limit(limit_rows) if limit_rows else result, fmt, output)
        return
    shown = sql.preview(result, limit_rows or 100)
    print_rows(
        shown.columns, shown.rows, caption=f"{len(shown.rows)} row(s)", null="NULL", console=console
    )
    if shown.truncated:
        err_console.print(
            f"[yellow]showing the first {len(shown.rows)} rows:[/] "
            "raise --limit-rows, or write them all with --format csv|json|parquet"
        )


# --- settings ------------------------------------------------------------------------------
@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked) and where they come from."""
    settings = _settings()
    table = Table(title="Periscope settings (PERISCOPE_<NAME>, then .env, then defaults)")
    table.add_column("name")
    table.add_column("value")
    for key, value in settings.model_dump().items():
        table.add_row(key, Text(str(value)))
    print_table(table, console=console)


def _add_stage_commands() -> None:
    """Mount each stage's command group, declared as a `periscope.commands` entry point.

    The stages import `periscope`, never the reverse: the CLI finds their commands through
    package metadata (pyproject.toml), so `periscope ingest ...` works without this module
    importing `ingest`.
    """
    for entry in sorted(entry_points(group="periscope.commands"), key=lambda e: e.name):
        app.add_typer(entry.load(), name=entry.name)


_add_stage_commands()


def _add_supervise_commands() -> None:
    """`periscope up/down/ps` (periscope/supervise): the live pipeline under supervisord."""
    from periscope.supervise.cli import register

    register(app)


_add_supervise_commands()


def main() -> None:
    """Console entry point: user-facing errors print one clear message, not a traceback."""
    try:
        app()
    except PeriscopeError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
