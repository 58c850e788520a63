"""What `periscope up` runs: one data structure listing every long-running program.

Each entry is a `periscope` command line. The list is in start order; supervisord stops in
the reverse order, so the producers stop first and each stage drains what is upstream of it
before its consumer stops (ingest, bronze, silver, score, then the readers). An entry whose
command is not installed (the dashboard or the Dagster commands before they land) is skipped.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_SOURCES",
    "DEFAULT_STATIONS",
    "IngestPlan",
    "Program",
    "periscope_executable",
    "plan_programs",
]

# The demo's sources and stations (Makefile DEMO_*): a source without history has nothing to
# replay, and a handful of stations keeps a laptop responsive.
DEFAULT_SOURCES = ("weather", "air_quality")
DEFAULT_STATIONS = "portland,seattle,denver,new_york,jerusalem"
# Sources that have a live producer (`periscope ingest live`, Open-Meteo).
LIVE_SOURCES = frozenset({"weather"})

StopSignal = Literal["TERM", "INT"]


@dataclass(frozen=True)
class Program:
    """One supervised process.

    `argv` follows `periscope` (or, for a `repeat` program, is re-run every `every_s` seconds).
    `needs` is the command that must exist for the program to be included.
    """

    name: str
    argv: tuple[str, ...]
    needs: tuple[str, ...]
    # Bronze and silver drain their micro-batch on SIGTERM (SparkContext takes SIGINT over while
    # starting); score drains its round on SIGINT (Ray's driver aborts on SIGTERM).
    stop_signal: StopSignal = "TERM"
    # How long a stop may take before supervisord SIGKILLs the process group (a batch's worth).
    stop_wait_s: int = 60
    # A process must stay up this long to count as started (else it is retried with backoff).
    start_s: int = 10
    every_s: float | None = None  # a one-shot command, re-run on this interval
    env: dict[str, str] = field(default_factory=dict)
    # The stop signal goes to the whole process group, for a program whose children do not
    # stop with it (`dagster dev` left its code server and an in-flight run for 1-2 minutes).
    stop_as_group: bool = False


@dataclass(frozen=True)
class IngestPlan:
    """How `up` feeds the raw topics."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    live: bool = False  # Open-Meteo for sources that have it, follow-clock replay otherwise
    days: float = 40.0  # history the first follow-clock run sends
    stations: str = DEFAULT_STATIONS
    bad_rate: float = 0.01
    every_s: float = 60.0  # how often the follow-clock replay sends what is due


def _source_flags(sources: Sequence[str]) -> tuple[str, ...]:
    return tuple(flag for source in sources for flag in ("--source", source))


def _ingest_programs(plan: IngestPlan) -> list[Program]:
    programs = []
    for source in plan.sources:
        if plan.live and source in LIVE_SOURCES:
            programs.append(
                Program(
                    f"ingest-{source}",
                    ("ingest", "live", "--stations", plan.stations),
                    needs=("ingest", "live"),
                    stop_signal="INT",  # it closes its producer (flushes) on KeyboardInterrupt
                )
            )
            continue
        stations = ("--stations", plan.stations) if source == "weather" else ()
        argv = (
            "ingest",
            "replay",
            "--source",
            source,
            "--follow-clock",
            "--days",
            f"{plan.days:g}",
            "--bad-rate",
            f"{plan.bad_rate:g}",
            *stations,
        )
        programs.append(
            Program(
                f"ingest-{source}",
                argv,
                needs=("ingest", "replay"),
                every_s=plan.every_s,
                # the first run sends the whole --days slice before it saves its state
                stop_wait_s=300,
            )
        )
    return programs


def plan_programs(
    plan: IngestPlan, has_command: Callable[[tuple[str, ...]], bool]
) -> list[Program]:
    """Every program `up` runs, in start order (stop order is the reverse).

    `has_command(("dashboard",))` says whether `periscope dashboard` exists; entries whose
    command is missing are left out.
    """
    sources = _source_flags(plan.sources)
    candidates = [
        # First to start, last to stop: restarts Kafka or PostgreSQL when they crash.
        Program("services", ("services", "watch"), needs=("services", "watch"), stop_wait_s=10),
        Program("api", ("api",), needs=("api",)),
        Program("dashboard", ("dashboard",), needs=("dashboard",)),
        # `dagster dev` (web server, daemon, code server) in one process tree; SIGTERM stops it.
        Program("dagster", ("orchestrate",), needs=("orchestrate",), stop_as_group=True),
        # score finishes its round on SIGINT (once Ray runs, SIGTERM makes Ray's driver abort).
        Program(
            "score",
            ("score", *sources),
            needs=("score",),
            stop_signal="INT",
            stop_wait_s=180,
            start_s=15,
        ),
        Program(
            "silver",
            ("silver", "run", *sources),
            needs=("silver", "run"),
            stop_signal="TERM",
            stop_wait_s=180,
            start_s=15,
        ),
        Program(
            "bronze",
            ("bronze", "run", *sources),
            needs=("bronze", "run"),
            stop_signal="TERM",
            stop_wait_s=120,
            start_s=15,
        ),
        *_ingest_programs(plan),
    ]
    return [p for p in candidates if has_command(p.needs)]


def periscope_executable() -> str:
    """The `periscope` script of this environment (beside its Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "periscope"
    return str(beside) if beside.exists() else "periscope"


def command_line(program: Program) -> str:
    """The shell-quoted command supervisord runs for a program."""
    periscope = [periscope_executable(), *program.argv]
    if program.every_s is None:
        return shlex.join(periscope)
    repeat = [sys.executable, "-m", "periscope.supervise.repeat", "--every", f"{program.every_s:g}"]
    return shlex.join([*repeat, "--", *periscope])
