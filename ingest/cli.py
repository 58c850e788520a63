"""`periscope ingest ...`: producers into `<source>-raw` (mounted by periscope/cli.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from periscope import get_settings
from periscope.cli_options import source_option

__all__ = ["app"]

console = Console()

app = typer.Typer(
    help="Produce records into Kafka: replay real history, poll Open-Meteo, inject chaos.",
    no_args_is_help=True,
)

Source = Annotated[str, source_option("The source to produce.")]


def _stations(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


@app.command("replay")
def replay_command(
    source: Source = "weather",
    limit: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Stop after this many good records. With --follow-clock: caps the first "
            "run's slice (cut at a whole timestamp); later runs ignore it.",
        ),
    ] = None,
    stations: Annotated[
        str | None,
        typer.Option(help="Comma-separated station ids (weather), e.g. portland,seattle."),
    ] = None,
    speedup: Annotated[
        float,
        typer.Option(
            min=0.0, help="Pace by event time N× faster than real time; 0 = as fast as possible."
        ),
    ] = 0.0,
    rebase_now: Annotated[
        bool, typer.Option("--rebase-now", help="Shift timestamps so the replay ends now.")
    ] = False,
    follow_clock: Annotated[
        bool,
        typer.Option(
            "--follow-clock",
            help="Replay history as if it arrived in real time, across runs: the first run "
            "sends the first --days D days rebased to end now and saves the offset in "
            ".local/replay/<source>.json; each later run sends only the records due "
            "since. Excludes --rebase-now and --speedup.",
        ),
    ] = False,
    days: Annotated[
        float | None,
        typer.Option(
            help="With --follow-clock: days of history the first run replays (later runs "
            "keep the first run's slice and offset).",
        ),
    ] = None,
    bad_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, help="Share of malformed records in all records sent (0-0.99)."
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for where malformed records go.")] = 0,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Replay only records at or after this event time (UTC), e.g. 2017-01-01."
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(help="Replay only records before this event time (UTC), e.g. 2017-03-01."),
    ] = None,
) -> None:
    """Replay a real dataset from ../shared/data into `<source>-raw`."""
    if since is not None and until is not None and since >= until:
        raise typer.BadParameter(
            f"must be after --since ({since:%Y-%m-%d %H:%M})", param_hint="'--until'"
        )
    if follow_clock and (since is not None or until is not None):
        raise typer.BadParameter(
            "cannot be combined with --since/--until: it replays from the start of the history",
            param_hint="'--follow-clock'",
        )
    if days is not None and not days > 0:
        raise typer.BadParameter(f"must be > 0, got {days:g}", param_hint="'--days'")
    if follow_clock:
        if rebase_now:
            raise typer.BadParameter(
                "cannot be combined with --rebase-now: it rebases already, with the "
                "offset its first run saved",
                param_hint="'--follow-clock'",
            )
        if speedup != 0.0:
            raise typer.BadParameter(
                "cannot be combined with --speedup: it sends what is due at once",
                param_hint="'--follow-clock'",
            )
        from ingest.replay import describe_follow, replay_follow
        from periscope.metrics import serve_metrics

        serve_metrics("ingest", get_settings())
        follow = replay_follow(
            get_settings(),
            source,
            days=days,
            limit=limit,
            stations=_stations(stations),
            bad_rate=bad_rate,
            seed=seed,
            progress=True,
        )
        for note in follow.notes:
            console.print(f"note: {note}")
        console.print(describe_follow(follow), soft_wrap=True)
        return
    if days is not None:
        raise typer.BadParameter("--days only applies with --follow-clock", param_hint="'--days'")

    from ingest.replay import replay
    from periscope.metrics import serve_metrics

    if speedup:  # a paced replay runs for a while: show what it produced
        serve_metrics("ingest", get_settings())
    report = replay(
        get_settings(),
        source,
        limit=limit,
        stations=_stations(stations),
        speedup=speedup,
        rebase_now=rebase_now,
        bad_rate=bad_rate,
        seed=seed,
        progress=True,
        since=since,
        until=until,
    )
    console.print(
        f"replayed {report.sent} records into {report.topic} "
        f"({report.good} good, {report.bad} malformed; events {report.first_event} .. {report.last_event})"
    )


@app.command("chaos")
def chaos_command(
    source: Source = "weather",
    count: Annotated[int, typer.Option(min=1, help="How many malformed records.")] = 70,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Send malformed records (every kind in turn) for the silver stage to quarantine."""
    from ingest.chaos import produce_chaos

    report = produce_chaos(get_settings(), source, count=count, seed=seed, progress=True)
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.by_kind.items()))
    console.print(f"sent {report.sent} malformed records into {report.topic}: {kinds}")


@app.command("live")
def live_command(
    stations: Annotated[
        str | None,
        typer.Option(help="Comma-separated station ids; default: PERISCOPE_LIVE_STATIONS or all."),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=60.0,
            max=300.0,
            help="Seconds between polls (default: PERISCOPE_LIVE_POLL_INTERVAL_S).",
        ),
    ] = None,
    max_polls: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many polls.")
    ] = None,
) -> None:
    """Poll Open-Meteo current conditions for the stations and send new observations."""
    from ingest.datasets import load_stations
    from ingest.live import run_live, select_stations
    from periscope.metrics import serve_metrics

    settings = get_settings()
    chosen = select_stations(load_stations(settings.data_dir), stations or settings.live_stations)
    serve_metrics("ingest", settings)
    report = run_live(settings, stations=chosen, interval_s=interval, max_polls=max_polls)
    console.print(
        f"live: {report.polls} polls, {report.sent} observations sent, "
        f"{report.duplicates_skipped} duplicates skipped, {report.failed_polls} failed polls"
    )
