"""`periscope orchestrate` (Dagster's UI and daemon) and `periscope lake maintain`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from periscope.output import Column, FormatOption, print_rows
from periscope.settings import Settings, get_settings

__all__ = ["dagster_command", "dagster_env", "dagster_yaml", "maintain", "orchestrate", "register"]

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger(__name__)

DEFINITIONS_MODULE = "periscope.orchestration.definitions"


def dagster_home(settings: Settings) -> Path:
    return settings.local_dir / "dagster"


def dagster_yaml(settings: Settings) -> str:
    """The Dagster instance's settings: storage, one run at a time, no telemetry.

    >>> from periscope.settings import Settings
    >>> "max_concurrent_runs: 1" in dagster_yaml(Settings(postgres_owner_password="x",
    ...                                                   postgres_bi_password="x"))
    True
    """
    lines = [
        "# Written by `periscope orchestrate` from Periscope's settings on every start.",
        "telemetry:",
        "  enabled: false",  # no internet here, and nothing to report
        "run_queue:",
        "  max_concurrent_runs: 1",  # two cores: a retrain and a dbt build never overlap",
    ]
    if settings.dagster_storage == "postgres":
        lines += [
            "storage:",
            "  postgres:",
            "    postgres_db:",
            f"      hostname: {settings.postgres_host}",
            f"      port: {settings.postgres_port}",
            f"      db_name: {settings.postgres_db}",
            "      username: {env: PERISCOPE_POSTGRES_OWNER_USER}",
            "      password: {env: PERISCOPE_POSTGRES_OWNER_PASSWORD}",  # never written to disk
        ]
    else:
        lines += ["storage:", "  sqlite:", f"    base_dir: {dagster_home(settings) / 'storage'}"]
    return "\n".join(lines) + "\n"


def dagster_command(settings: Settings) -> list[str]:
    """`dagster dev` (webserver + daemon + code server in one process tree) on our definitions."""
    beside = Path(sys.executable).parent / "dagster"
    executable = str(beside) if beside.exists() else (shutil.which("dagster") or "dagster")
    return [
        executable,
        "dev",
        "-m",
        DEFINITIONS_MODULE,
        "--host",
        settings.dagster_host,
        "--port",
        str(settings.dagster_port),
    ]


def dagster_env(settings: Settings) -> dict[str, str]:
    """Our environment, DAGSTER_HOME, and the warehouse connection dbt and Postgres storage read."""
    from periscope.orchestration.dbt import dbt_env_vars

    return {
        **os.environ,
        **dbt_env_vars(settings),
        "DAGSTER_HOME": str(dagster_home(settings)),
    }


def orchestrate(
    prepare: Annotated[
        bool,
        typer.Option(
            "--prepare/--no-prepare",
            help="Sync dbt's generated files and parse the manifest first (a new contract's "
            "models then show as assets).",
        ),
    ] = True,
) -> None:
    """Start Dagster (UI, daemon: schedules and sensors) on 127.0.0.1:<dagster_port>.

    Runs in the foreground until stopped (Ctrl-C or SIGTERM): one command a supervisor can
    run. State (run history, schedules' ticks) is kept in SQLite under .local/dagster, or in the
    project's Postgres with PERISCOPE_DAGSTER_STORAGE=postgres.
    """
    from periscope.orchestration.dbt import prepare_dbt_project

    settings = get_settings()
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml(settings), encoding="utf-8")
    if prepare:
        with console.status("dbt sync and parse ..."):
            manifest = prepare_dbt_project(settings, log=log)
        console.print(f"dbt manifest: {manifest}")
    command = dagster_command(settings)
    console.print(
        f"Dagster UI on http://{settings.dagster_host}:{settings.dagster_port} "
        f"(DAGSTER_HOME={home}, storage {settings.dagster_storage})"
    )
    sys.stdout.flush()
    # `dagster dev` loads a .env of its working directory over the environment it was given;
    # Periscope reads its own .env already, where the environment wins. So: start from home.
    os.chdir(home)
    # `dagster dev` stops on SIGTERM by treating it as SIGINT; a process started in the
    # background inherits SIGINT ignored, and would then ignore both. Defaults survive exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Replace this process: a supervisor's signals reach `dagster dev`, which stops its children.
    os.execvpe(command[0], command, dagster_env(settings))


_MAINTAIN_COLUMNS = (
    Column("table"),
    Column("version", justify="right"),
    Column("files before", justify="right"),
    Column("files after", justify="right"),
    Column("compaction"),
    Column("files vacuumed", justify="right"),
    Column("error"),
)


def maintain(
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            "-t",
            help="A lake table, e.g. silver.weather_features (repeatable); default: every one.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")
    ] = False,
    retention_hours: Annotated[
        int | None,
        typer.Option(
            min=7 * 24,
            help="Vacuum files removed more than this long ago; default: the "
            "vacuum_retention_hours setting (168, a week).",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Compact the small files of every lake table and vacuum files old versions no longer need.

    Bronze: its ingest_date partitions with several files are compacted (today's once it has 8:
    the stream only appends). Silver and gold: 8 or more small *closed* files (their newest
    window more than a day older than the table's newest) are rewritten sorted by window_start
    (or event_time) into ~16 MiB files, so later MERGEs skip them; open files are left to the
    streams. A table without a time column (silver's batch ledger) has its small files packed.
    Compaction changes no rows and commits with dataChange=false, which streams reading the
    table skip.
    Vacuum keeps the files of the last week's versions: time travel within it, and a stream
    restarted from its checkpoint within it, still work. Exits 1 when a table failed.
    """
    from periscope.maintenance import maintain_lake

    settings = get_settings()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console if fmt == "table" else err_console,
    ) as progress:
        task = progress.add_task("tables", total=None)

        def on_table(t: object) -> None:
            progress.update(task, description=str(getattr(t, "name", "")))
            progress.advance(task)

        results = maintain_lake(
            settings,
            only=table,
            retention_hours=retention_hours,
            dry_run=dry_run,
            on_table=on_table,
        )
    rows = [
        (
            r.table,
            r.version_after,
            r.files_before,
            r.files_after,
            r.compaction,
            r.files_vacuumed,
            r.error,
        )
        for r in results
    ]
    hours = settings.vacuum_retention_hours if retention_hours is None else retention_hours
    print_rows(
        _MAINTAIN_COLUMNS,
        rows,
        fmt=fmt,
        title=f"Lake maintenance{' (dry run)' if dry_run else ''}, vacuum retention {hours} h",
        null="",
        console=console,
    )
    if any(r.error for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer, lake_app: typer.Typer) -> None:
    """Mount `orchestrate` on the root app and `maintain` on `periscope lake`."""
    app.command("orchestrate")(orchestrate)
    lake_app.command("maintain")(maintain)
