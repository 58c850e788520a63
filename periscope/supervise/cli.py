"""`periscope up`, `periscope down` and `periscope ps`: the live pipeline under supervisord."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from periscope.cli_options import source_option
from periscope.output import print_table
from periscope.settings import get_settings

__all__ = ["register"]

console = Console()

# The services `up` starts before the programs (and `down` stops after them).
_SERVICES = ("kafka", "postgres")
_STATE_STYLE = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow"}


def _has_command(root: object, path: tuple[str, ...]) -> bool:
    """True when `periscope <path...>` is a command of the mounted CLI (a tree of `.commands`)."""
    command = root
    for word in path:
        commands = getattr(command, "commands", None) or {}
        if word not in commands:
            return False
        command = commands[word]
    return True


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{_duration((datetime.now(UTC) - moment).total_seconds())} ago"


def register(app: typer.Typer) -> None:
    """Add up/down/ps to the root CLI."""

    @app.command("up")
    def up(
        source: Annotated[
            list[str] | None,
            source_option("Source to run (repeatable); default: weather, air_quality."),
        ] = None,
        live: Annotated[
            bool,
            typer.Option(
                "--live",
                help="Poll Open-Meteo for sources that have it (weather) instead of replaying.",
            ),
        ] = False,
        days: Annotated[
            float,
            typer.Option(min=0.01, help="Days of history the first follow-clock replay sends."),
        ] = 40.0,
        stations: Annotated[
            str | None,
            typer.Option(help="Comma-separated weather station ids (default: the demo's five)."),
        ] = None,
        every: Annotated[
            float, typer.Option(min=1.0, help="Seconds between follow-clock replay runs.")
        ] = 60.0,
        wait: Annotated[
            float, typer.Option(min=0.0, help="Seconds to wait for every program to be RUNNING.")
        ] = 120.0,
    ) -> None:
        """Start Kafka and PostgreSQL, create the topics, then run every long-running stage under supervisord.

        Programs (in start order; `down` stops in the reverse): api, dashboard and the Dagster
        webserver (`periscope orchestrate`) when those commands exist, score, silver, bronze, and one ingest per source.
        Crashed programs are restarted (with backoff while they fail during start-up); each logs to
        .local/logs/<program>.log. Running it again applies changed options.
        """
        from periscope.services import get_service
        from periscope.supervise.config import SupervisePaths, render_config
        from periscope.supervise.control import Supervisor
        from periscope.supervise.programs import (
            DEFAULT_SOURCES,
            DEFAULT_STATIONS,
            IngestPlan,
            plan_programs,
        )
        from periscope.topics import create_topics

        settings = get_settings()
        for name in _SERVICES:
            service = get_service(name, settings)
            with console.status(f"starting {name} on {service.address} ..."):
                outcome = service.start()
            console.print(f"[green]✔[/] {name:<9} {outcome}, listening on {service.address}")
        created = sum(create_topics(settings).values())
        console.print(f"[green]✔[/] topics    {created} created, the others exist")

        plan = IngestPlan(
            sources=tuple(source or DEFAULT_SOURCES),
            live=live,
            days=days,
            stations=stations or DEFAULT_STATIONS,
            every_s=every,
        )
        root = typer.main.get_command(app)
        programs = plan_programs(plan, lambda path: _has_command(root, path))
        paths = SupervisePaths.from_settings(settings)
        supervisor = Supervisor(paths)
        config = render_config(programs, paths, directory=settings.project_dir)
        console.print(f"[green]✔[/] supervisor {supervisor.start(config)}; config {paths.config}")
        with console.status("waiting for the programs to start ...") as status:
            infos = supervisor.wait_started(
                timeout_s=wait,
                tick=lambda infos: status.update(
                    "starting: "
                    + ", ".join(f"{i.name} {i.state}" for i in infos if i.state != "RUNNING")
                ),
            )
        for info in infos:
            style = _STATE_STYLE.get(info.state, "red")
            console.print(
                f"[{style}]{'✔' if info.state == 'RUNNING' else '✘'}[/] {info.name:<18} "
                f"[{style}]{info.state}[/] {info.description}; log {paths.program_log(info.name)}",
                highlight=False,
                soft_wrap=True,
            )
        if any(i.state != "RUNNING" for i in infos):
            raise typer.Exit(1)

    @app.command("down")
    def down(
        keep_services: Annotated[
            bool, typer.Option("--keep-services", help="Leave Kafka and PostgreSQL running.")
        ] = False,
    ) -> None:
        """Stop the supervised programs in dependency order (ingest, bronze, silver, score, readers), then the services.

        Each stage finishes its current micro-batch or round first; one that takes longer than its
        stop timeout is killed with its whole process group.
        """
        from periscope.services import get_service
        from periscope.supervise.config import SupervisePaths
        from periscope.supervise.control import Supervisor

        settings = get_settings()
        supervisor = Supervisor(SupervisePaths.from_settings(settings))
        if supervisor.running():
            started = time.monotonic()
            with console.status("stopping ...") as status:
                stopped = supervisor.stop(
                    on_program=lambda name: status.update(f"stopping {name} ...")
                )
            console.print(
                f"[green]✔[/] stopped {', '.join(stopped) or 'nothing (no program was running)'} "
                f"and supervisord in {time.monotonic() - started:.0f} s"
            )
        else:
            console.print("[dim]supervisord is not running[/]")
        if keep_services:
            return
        for name in reversed(_SERVICES):
            with console.status(f"stopping {name} ..."):
                outcome = get_service(name, settings).stop()
            console.print(f"[green]✔[/] {name:<9} {outcome}")

    @app.command("ps")
    def ps(
        source: Annotated[
            list[str] | None,
            source_option(
                "Source whose backlog to show (repeatable); default: weather, air_quality."
            ),
        ] = None,
        lag: Annotated[
            bool,
            typer.Option(
                "--lag/--no-lag", help="Read the lake and Kafka for last commit and backlog."
            ),
        ] = True,
    ) -> None:
        """Show every supervised program (pid, uptime, restarts, state) and the services.

        With --lag (default) also each stage's last commit to its lake table and how far behind it is:
        bronze in Kafka records not yet landed, silver in bronze rows not yet processed, score in silver
        batches not yet scored (the counts of `periscope lake audit`). Exits 1 when a program is not RUNNING.
        """
        from periscope.services import get_service
        from periscope.supervise.config import SupervisePaths
        from periscope.supervise.control import Supervisor
        from periscope.supervise.programs import DEFAULT_SOURCES
        from periscope.supervise.progress import StageProgress, stage_progress

        settings = get_settings()
        paths = SupervisePaths.from_settings(settings)
        supervisor = Supervisor(paths)
        table = Table(title=f"periscope programs (logs in {paths.logs})")
        for column in ("program", "state", "pid", "uptime", "restarts", "last commit", "behind"):
            table.add_column(column, justify="right" if column in ("pid", "restarts") else "left")
        for name in _SERVICES:
            st = get_service(name, settings).status()
            state = (
                "[green]HEALTHY[/]"
                if st.healthy
                else ("[yellow]RUNNING[/]" if st.running else "[red]STOPPED[/]")
            )
            table.add_row(f"{name} (service)", state, str(st.pid or "-"), "-", "-", "-", "-")
        all_running = supervisor.running()
        if all_running:
            progress: dict[str, StageProgress] = (
                stage_progress(settings, source or list(DEFAULT_SOURCES)) if lag else {}
            )
            for info in supervisor.programs():
                style = _STATE_STYLE.get(info.state, "red")
                stage = progress.get(info.name)
                table.add_row(
                    info.name,
                    f"[{style}]{info.state}[/]",
                    str(info.pid or "-"),
                    _duration(info.uptime_s),
                    str(info.restarts),
                    _ago(stage.last_commit) if stage else "-",
                    stage.behind if stage else "-",
                )
                all_running &= info.state == "RUNNING"
        print_table(table, console=console)
        if not supervisor.running():
            console.print("supervisord is not running: start everything with `periscope up`")
        if not all_running:
            raise typer.Exit(1)
