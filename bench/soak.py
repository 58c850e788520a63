"""Soak: the supervised pipeline fed at a steady rate for half an hour, with the Delta
maintenance job running meanwhile; lag, event -> gold latency, memory and files per table
over time (issue 20, part 4).

As `bench/reliability.py` (whose pieces this imports) it runs `periscope up` (supervisord:
bronze, silver, score; the follow-clock ingest parked; the readers stopped) on its own Kafka
and PostgreSQL (a test instance's ports, `--instance N`, state in `.local/soak<N>`) and a
throwaway lake, and produces weather records of all 36 stations (`--bad-rate` malformed) at
`--rate` records/s for `--minutes` through the ingest producer. Past the dataset's 1.4M rows
the replay goes on with copies shifted past its last event time. Gold scores with the dev
MLflow store's weather champions (`--models dev`, a snapshot of .local/mlflow/mlflow.db).
First `--prime-seconds` of records are sent and scored (Ray start, model loading) before the
soak's clock starts. Every `--maintenance-every` minutes `periscope lake maintain` runs (what
Dagster's lake_maintenance job runs: compaction, then vacuum).

Every `--sample-every` seconds it samples:
- lag, in records, from Kafka and the lake (as `periscope ps` and the audit count): bronze =
  records in weather-raw not yet in bronze; silver = bronze rows silver has not processed (its
  batch ledger); gold = bronze rows of silver batches gold has not scored (gold's mark);
- memory: RSS of each stage's whole process tree (the Spark JVM and Ray's processes included),
  and its CPU seconds;
- files per lake table (files of the current version, what a reader opens), and the load average.

At the end, once the lake has caught up: event -> gold latency of every observation (its
Kafka timestamp -> the commit time of the first gold round whose silver mark covers its silver
batch, as bench/score.py --latency measures), per 5-minute slice of send time; and the
reliability suite's accounting (bronze = produced exactly once, the audit adds up, gold one
row per window).

Targets (a PASS/FAIL line each; exit 1 when one fails):
- lag: every stage <= 10,000 records behind in every sample while records are sent;
- latency: p95 <= 10 s in every 5-minute slice;
- memory: each stage's RSS over the last minute (median) < 20% above its first minute after
  warm-up (median); warm-up = the first `--warmup-minutes` of the soak; the peak is printed too;
- files: bounded by maintenance: per table, the peak file count of the last full maintenance
  cycle <= 1.5 x that of the first (a table maintenance never compacts grows every cycle);
- accounting: the three checks above pass.

Prints a table per 5-minute slice; saves series.csv (one row per sample), slices.csv,
maintenance.csv, report.txt and soak.png (lag, latency p95, RSS per stage, files per table)
under .local/bench/soak-<timestamp>/. Run it under `nice -n 10`:

    nice -n 10 .venv/bin/python bench/soak.py --instance 13                      # 30 min at 1,000 rec/s
    nice -n 10 .venv/bin/python bench/soak.py --instance 13 --minutes 5 --maintenance-every 2 --warmup-minutes 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as a script: the project's packages beside bench/
    sys.path.insert(0, str(PROJECT_DIR))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.bronze_throughput import _tree_usage  # noqa: E402
from bench.reliability import (  # noqa: E402
    SOURCE,
    STAGES,
    Check,
    Produced,
    check_audit,
    check_bronze,
    check_gold,
    fresh_instance,
    produce,
    start_pipeline,
    stop_pipeline,
    wait_caught_up,
)

# silver_latency imports the Spark stages: a broken import fails here, not after the soak
from bench.silver_latency import latency_summary  # noqa: E402
from periscope.contracts import get_contract  # noqa: E402
from periscope.settings import Settings  # noqa: E402
from periscope.topics import recreate_topics  # noqa: E402

console = Console(record=True, width=170)  # the tables are wide; a log file keeps them whole

MB = 1024 * 1024
SLICE_S = 300.0  # latency and the printed table per 5-minute slice
LAG_TARGET = 10_000  # records behind, every stage, every sample
LATENCY_P95_TARGET_S = 10.0
MEMORY_GROWTH_TARGET = 0.20
FILES_PEAK_GROWTH = 1.5  # last maintenance cycle's peak files / first cycle's
# The tables the issue names (the CSV holds every lake table).
TABLES = (
    "bronze.weather_raw",
    "silver.weather_observations",
    "silver.weather_features",
    "gold.weather_predictions",
)


# --- sampling ------------------------------------------------------------------------------------


def stage_lag(
    *,
    kafka: int,
    bronze: int,
    batch_ids: Sequence[int],
    batch_rows: Sequence[int],
    gold_mark: int | None,
) -> dict[str, int]:
    """Records each stage is behind: bronze (Kafka's records not in bronze), silver (bronze rows
    its ledger has not processed), score (bronze rows of silver batches past gold's mark).

    >>> stage_lag(kafka=100, bronze=90, batch_ids=[0, 1, 2], batch_rows=[30, 30, 20], gold_mark=0)
    {'bronze': 10, 'silver': 10, 'score': 50}
    """
    mark = -1 if gold_mark is None else gold_mark
    unscored = sum(rows for batch, rows in zip(batch_ids, batch_rows, strict=True) if batch > mark)
    return {"bronze": kafka - bronze, "silver": bronze - sum(batch_rows), "score": unscored}


def _lag(settings: Settings) -> dict[str, int]:
    from deltalake import DeltaTable

    from periscope.lake import GOLD_SCORE_APP_ID, read_delta, row_count_or_zero
    from periscope.topics import records_written

    contract = get_contract(SOURCE)

    def path(layer: str, entity: str) -> str:
        return settings.lake_path(contract.table(layer, entity))  # type: ignore[arg-type]

    kafka = records_written(settings, contract.topic("raw"))
    bronze = row_count_or_zero(path("bronze", "raw"))
    batches, gold = path("silver", "batches"), path("gold", "predictions")
    ids: list[int] = []
    rows: list[int] = []
    if DeltaTable.is_deltatable(batches):
        ledger = read_delta(batches, ["batch_id", "bronze_rows"])
        ids = [int(b) for b in ledger.column("batch_id").to_pylist()]
        rows = [int(r or 0) for r in ledger.column("bronze_rows").to_pylist()]
    mark = (
        DeltaTable(gold).transaction_version(GOLD_SCORE_APP_ID)
        if DeltaTable.is_deltatable(gold)
        else None
    )
    return stage_lag(kafka=kafka, bronze=bronze, batch_ids=ids, batch_rows=rows, gold_mark=mark)


def _files(settings: Settings) -> dict[str, int]:
    """Files of each lake table's current version."""
    from deltalake import DeltaTable

    from periscope.lake import tables

    return {
        t.name: int(DeltaTable(t.path).get_add_actions(flatten=True).num_rows)
        for t in tables(settings)
    }


def _stage_pids(settings: Settings) -> dict[str, int]:
    from periscope.supervise import SupervisePaths, Supervisor

    programs = Supervisor(SupervisePaths.from_settings(settings)).programs()
    return {p.name: p.pid for p in programs if p.name in STAGES and p.pid}


def take_sample(settings: Settings, t_s: float) -> dict[str, float]:
    """One row of the series: lag, RSS and CPU per stage, files per table, load average. A part
    that cannot be read (a commit or a restart in progress) is left out of the row."""
    began = time.monotonic()
    row: dict[str, float] = {"t_s": round(t_s, 1), "load1": os.getloadavg()[0]}
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("behind", lambda: _lag(settings)),
        ("files", lambda: _files(settings)),
        ("pid", lambda: _stage_pids(settings)),
    ]
    for prefix, read in parts:
        try:
            row.update({f"{prefix}_{k}": v for k, v in read().items()})
        except Exception as exc:  # noqa: BLE001 - a sample with a gap, said in the log
            console.log(f"sample at {t_s:.0f} s: {prefix} unreadable ({exc.__class__.__name__})")
    for stage in STAGES:
        pid = row.get(f"pid_{stage}")
        if pid:
            rss, cpu = _tree_usage(int(pid))
            row[f"rss_mb_{stage}"] = round(rss / MB, 1)
            row[f"cpu_s_{stage}"] = round(cpu, 1)
    row["sample_s"] = round(time.monotonic() - began, 2)  # what sampling itself costs
    return row


def run_sampler(
    settings: Settings,
    rows: list[dict[str, float]],
    started: float,
    every_s: float,
    stop: threading.Event,
) -> None:
    """Sample every `every_s` seconds from `started` (monotonic) until `stop` is set."""
    index = 0
    while not stop.is_set():
        row = take_sample(settings, time.monotonic() - started)
        rows.append(row)
        if index % max(1, round(60 / every_s)) == 0:  # a line a minute
            behind = ", ".join(f"{s} {row.get(f'behind_{s}', float('nan')):,.0f}" for s in STAGES)
            rss = ", ".join(f"{s} {row.get(f'rss_mb_{s}', float('nan')):,.0f}" for s in STAGES)
            console.log(
                f"{row['t_s'] / 60:5.1f} min  behind: {behind}  RSS MB: {rss}  "
                f"load {row['load1']:.1f}",
                highlight=False,
            )
        index += 1
        stop.wait(max(0.0, started + index * every_s - time.monotonic()))


# --- maintenance ---------------------------------------------------------------------------------


@dataclass
class MaintenanceRun:
    at_s: float  # start, seconds after the soak started
    seconds: float
    exit_code: int
    tables: list[dict[str, Any]] = field(default_factory=list)  # `lake maintain`'s JSON rows
    output: str = ""


def maintain_once(started: float) -> MaintenanceRun:
    """`periscope lake maintain --format json`, as Dagster's lake_maintenance op runs it."""
    executable = str(Path(sys.executable).parent / "periscope")
    at = time.monotonic()
    done = subprocess.run(
        [executable, "lake", "maintain", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    try:
        rows = json.loads(done.stdout)
    except json.JSONDecodeError:
        rows = []
    return MaintenanceRun(
        at_s=round(at - started, 1),
        seconds=round(time.monotonic() - at, 1),
        exit_code=done.returncode,
        tables=rows if isinstance(rows, list) else [],
        output=(done.stdout + done.stderr)[-3000:],
    )


def run_maintenance(
    runs: list[MaintenanceRun],
    started: float,
    every_s: float,
    until_s: float,
    stop: threading.Event,
) -> None:
    """A maintenance run at every multiple of `every_s` after `started` before `until_s`."""
    moment = every_s
    while moment < until_s:
        if stop.wait(max(0.0, started + moment - time.monotonic())):
            return
        run = maintain_once(started)
        runs.append(run)
        compacted = sum(
            1 for r in run.tables if not str(r.get("compaction", "")).startswith("none")
        )
        errors = [f"{r.get('table')}: {r.get('error')}" for r in run.tables if r.get("error")]
        console.log(
            f"maintenance at {run.at_s / 60:.1f} min: {run.seconds:.0f} s, exit {run.exit_code}, "
            f"{compacted} table(s) compacted"
            + (f"; errors: {'; '.join(errors)}" if errors else ""),
            highlight=False,
        )
        moment += every_s


# --- latency -------------------------------------------------------------------------------------


def first_covering_commit(
    batch_ids: np.ndarray, throughs: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Per silver batch, the time of the first gold commit whose mark covers it (NaN: none).

    >>> first_covering_commit(np.array([0, 2, 5]), np.array([1, 3]), np.array([10.0, 20.0]))
    array([10., 20., nan])
    """
    order = np.argsort(throughs, kind="stable")
    throughs, times = throughs[order], times[order]
    # the earliest time among commits with a mark >= each mark (a later round may re-commit)
    earliest = np.minimum.accumulate(times[::-1])[::-1] if len(times) else times
    index = np.searchsorted(throughs, batch_ids, side="left")
    covered = index < len(throughs)
    result = np.full(len(batch_ids), np.nan)
    result[covered] = earliest[index[covered]]
    return result


def event_to_gold(settings: Settings) -> pd.DataFrame:
    """Every observation's Kafka timestamp (epoch s) and its seconds to gold."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from periscope.lake import read_delta

    contract = get_contract(SOURCE)
    observations = read_delta(
        settings.lake_path(contract.table("silver", "observations")),  # type: ignore[arg-type]
        ["kafka_timestamp", "silver_batch_id"],
    )
    commits = [
        (int(c["periscope.silver_through"]), c["timestamp"] / 1000)
        for c in DeltaTable(
            settings.lake_path(contract.table("gold", "predictions"))  # type: ignore[arg-type]
        ).history()
        if "periscope.silver_through" in c
    ]
    throughs = np.array([c[0] for c in commits], dtype="int64")
    times = np.array([c[1] for c in commits], dtype="float64")
    stamps = observations.column("kafka_timestamp").cast(pa.timestamp("us", tz="UTC"))
    sent = stamps.cast(pa.int64()).to_numpy() / 1e6
    gold = first_covering_commit(
        observations.column("silver_batch_id").to_numpy().astype("int64"), throughs, times
    )
    return pd.DataFrame({"sent": sent, "latency_s": gold - sent})


# --- summaries (pure) ----------------------------------------------------------------------------


def latency_slices(latency: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """p50/p95/max per 5-minute slice of send time in [start, end) (epoch s)."""
    rows = []
    span = end - start
    # a tail under 30 s (the producer's last flush) joins the slice before it
    for lo in np.arange(0.0, max(span - 30.0, 1.0), SLICE_S):
        hi = span if lo + SLICE_S >= span - 30.0 else lo + SLICE_S
        sent = latency["sent"] - start
        values = latency.loc[(sent >= lo) & (sent < hi), "latency_s"]
        summary = latency_summary(values.dropna().tolist())
        rows.append(
            {
                "slice": f"{lo / 60:.0f}-{hi / 60:.0f} min",
                "from_s": lo,
                "to_s": hi,
                "records": len(values),
                "unscored": int(values.isna().sum()),
                "p50_s": summary["latency_p50_s"],
                "p95_s": summary["latency_p95_s"],
                "max_s": summary["latency_max_s"],
            }
        )
    return pd.DataFrame(rows)


def per_minute_p95(latency: pd.DataFrame, start: float) -> pd.Series:
    """p95 of latency per minute of send time (the plot's line)."""
    minute = ((latency["sent"] - start) // 60).astype("int64")
    return latency.groupby(minute)["latency_s"].quantile(0.95)


def memory_growth(series: pd.DataFrame, stage: str, *, warmup_s: float, end_s: float) -> dict:
    """RSS of a stage's tree: baseline = median of the first minute after warm-up, last = median
    of the last minute before `end_s`, peak after warm-up; growth = last / baseline - 1."""
    column = f"rss_mb_{stage}"
    if column not in series:
        return {"baseline_mb": None, "last_mb": None, "peak_mb": None, "growth": None}
    t, rss = series["t_s"], series[column]
    baseline = rss[(t >= warmup_s) & (t < warmup_s + 60)].median()
    last = rss[(t >= end_s - 60) & (t <= end_s)].median()
    peak = rss[(t >= warmup_s) & (t <= end_s)].max()
    growth = last / baseline - 1 if baseline and baseline == baseline else None
    return {"baseline_mb": baseline, "last_mb": last, "peak_mb": peak, "growth": growth}


def cycle_peaks(series: pd.DataFrame, table: str, *, every_s: float, end_s: float) -> list[float]:
    """Peak file count of `table` in each full maintenance cycle [k*every, (k+1)*every) before end."""
    column = f"files_{table}"
    if column not in series:
        return []
    peaks = []
    for k in range(int(end_s // every_s)):
        inside = (series["t_s"] >= k * every_s) & (series["t_s"] < (k + 1) * every_s)
        peaks.append(float(series.loc[inside, column].max()))
    return peaks


@dataclass(frozen=True)
class Verdict:
    target: str
    ok: bool
    detail: str


def verdicts(
    series: pd.DataFrame,
    slices: pd.DataFrame,
    checks: list[Check],
    *,
    produce_end_s: float,
    warmup_s: float,
    maintenance_every_s: float,
) -> list[Verdict]:
    """One PASS/FAIL per target."""
    during = series[series["t_s"] <= produce_end_s]
    out = []
    worst = {s: during.get(f"behind_{s}", pd.Series(dtype=float)).max() for s in STAGES}
    missing = [s for s, v in worst.items() if v != v]
    out.append(
        Verdict(
            f"lag <= {LAG_TARGET:,} records behind, every stage, every sample",
            not missing and all(v <= LAG_TARGET for v in worst.values()),
            ", ".join(f"{s} max {v:,.0f}" for s, v in worst.items()) + f" ({len(during)} samples)",
        )
    )
    p95 = slices["p95_s"]
    out.append(
        Verdict(
            f"event -> gold p95 <= {LATENCY_P95_TARGET_S:g} s in every 5-minute slice",
            bool(len(slices)) and p95.notna().all() and (p95 <= LATENCY_P95_TARGET_S).all(),
            "p95 per slice: " + ", ".join(f"{v:.1f}" for v in p95.fillna(float("nan"))) + " s",
        )
    )
    growths = {s: memory_growth(series, s, warmup_s=warmup_s, end_s=produce_end_s) for s in STAGES}
    out.append(
        Verdict(
            f"memory growth < {MEMORY_GROWTH_TARGET:.0%} after warm-up ({warmup_s / 60:g} min)",
            all(
                g["growth"] is not None and g["growth"] < MEMORY_GROWTH_TARGET
                for g in growths.values()
            ),
            "; ".join(
                f"{s} {g['baseline_mb'] or 0:,.0f} -> {g['last_mb'] or 0:,.0f} MB "
                f"({(g['growth'] or 0):+.1%}, peak {g['peak_mb'] or 0:,.0f})"
                for s, g in growths.items()
            ),
        )
    )
    peaks = {
        t: cycle_peaks(series, t, every_s=maintenance_every_s, end_s=produce_end_s) for t in TABLES
    }
    bounded = {t: len(p) >= 2 and p[-1] <= FILES_PEAK_GROWTH * p[0] for t, p in peaks.items()}
    out.append(
        Verdict(
            f"files bounded by maintenance (last cycle's peak <= {FILES_PEAK_GROWTH:g} x first's)",
            all(bounded.values()),
            "; ".join(
                f"{t} peaks {'/'.join(f'{v:,.0f}' for v in p) or '-'}{'' if bounded[t] else ' UNBOUNDED'}"
                for t, p in peaks.items()
            ),
        )
    )
    out.append(
        Verdict(
            "accounting (bronze exactly once, audit, gold one row per window)",
            bool(checks) and all(c.ok for c in checks),
            "; ".join(f"{c.name}: {'pass' if c.ok else 'FAIL'}" for c in checks),
        )
    )
    return out


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    rate: float = 1_000.0
    bad_rate: float = 0.01
    seed: int = 20
    maintenance_every_min: float = 10.0
    sample_every_s: float = 10.0
    warmup_min: float = 5.0
    prime_s: float = 30.0
    catch_up_timeout_s: float = 1800.0

    @property
    def records(self) -> int:
        return round(self.minutes * 60 * self.rate)


@dataclass
class SoakResult:
    config: SoakConfig
    engines: str = ""
    prime: Produced | None = None
    produced: Produced | None = None
    start_epoch: float = 0.0  # wall-clock time of the soak's first record
    produce_end_s: float = 0.0
    caught_up: bool = False
    catch_up_s: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    maintenance: list[MaintenanceRun] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    latency: pd.DataFrame = field(default_factory=pd.DataFrame)


def snapshot_models(local_dir: Path, source: Path | None = None) -> bool:
    """Copy an MLflow store's database (champions and their artifact locations; the dev store's
    by default) into this run's state, so score serves the trained weather champions and a
    retrain elsewhere during the soak does not change them. False when there is no such store."""
    source = source or PROJECT_DIR / ".local" / "mlflow" / "mlflow.db"
    if not source.exists():
        return False
    target = local_dir / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return True


def _combined(first: Produced, second: Produced) -> Produced:
    """Both productions as one, for the exactly-once check over the whole topic."""
    return Produced(
        sent=first.sent + second.sent,
        good=first.good + second.good,
        bad=first.bad + second.bad,
        stations=max(first.stations, second.stations),
        seconds=first.seconds + second.seconds,
        digests=first.digests + second.digests,
    )


def run(settings: Settings, result: SoakResult) -> None:
    """Start the pipeline, prime it, produce for `config.minutes` while sampling and maintaining,
    wait until the lake caught up, then account for every record, filling `result` as it goes
    (what was measured survives a failure). The pipeline is left running."""
    from periscope.services import KafkaBroker, PostgresServer
    from periscope.supervise import SupervisePaths, Supervisor

    config = result.config
    result.engines = f"bronze {settings.bronze_engine}, silver {settings.silver_engine}"
    for service in (KafkaBroker(settings), PostgresServer(settings)):
        service.start()
    recreate_topics(settings, [get_contract(SOURCE)])
    start_pipeline(settings)

    # Ray's start and the first model load are one-offs a running scorer has paid already.
    prime = produce(
        settings,
        records=round(config.prime_s * config.rate),
        rate=config.rate,
        bad_rate=config.bad_rate,
        seed=config.seed,
    )
    result.prime = prime
    primed, _ = wait_caught_up(settings, prime.sent, timeout_s=config.catch_up_timeout_s)
    if not primed:
        raise RuntimeError("the primer never reached gold: see the stages' logs")

    sampler_stop, maintenance_stop = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    started = time.monotonic()

    def start_clock() -> None:
        nonlocal started
        started = time.monotonic()
        result.start_epoch = time.time()
        threads.append(
            threading.Thread(
                target=run_sampler,
                args=(settings, result.samples, started, config.sample_every_s, sampler_stop),
                daemon=True,
            )
        )
        threads.append(
            threading.Thread(
                target=run_maintenance,
                args=(
                    result.maintenance,
                    started,
                    config.maintenance_every_min * 60,
                    config.minutes * 60,
                    maintenance_stop,
                ),
                daemon=True,
            )
        )
        for thread in threads:
            thread.start()

    try:
        main = produce(
            settings,
            records=config.records,
            rate=config.rate,
            bad_rate=config.bad_rate,
            seed=config.seed + 1,
            on_start=start_clock,
            skip=prime.good,
        )
        result.produce_end_s = time.monotonic() - started
        result.produced = main
        maintenance_stop.set()  # no new run; one in progress finishes
        if len(threads) > 1:
            threads[1].join(timeout=1800)
        result.caught_up, result.catch_up_s = wait_caught_up(
            settings, prime.sent + main.sent, timeout_s=config.catch_up_timeout_s
        )
    finally:
        maintenance_stop.set()
        sampler_stop.set()
        for thread in threads:
            thread.join(timeout=120)
    for program in Supervisor(SupervisePaths.from_settings(settings)).programs():
        result.restarts[program.name] = program.restarts

    everything = _combined(prime, main)
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("bronze", lambda: check_bronze(settings, everything)),
        ("audit", lambda: check_audit(settings)),
        ("gold", lambda: check_gold(settings)),
    ]
    for name, check in checks:
        try:
            result.checks.append(check())
        except Exception as exc:  # a check that cannot run fails, with why
            result.checks.append(Check(name, False, f"{exc.__class__.__name__}: {exc}"))
    with console.status("event -> gold latency of every observation ..."):
        result.latency = event_to_gold(settings)


# --- report --------------------------------------------------------------------------------------


def slice_table(result: SoakResult) -> pd.DataFrame:
    """Per 5-minute slice: latency, worst lag, RSS at the slice's end, peak files, load."""
    end = result.start_epoch + result.produce_end_s
    slices = latency_slices(result.latency, result.start_epoch, end)
    series = pd.DataFrame(result.samples)
    for index, row in slices.iterrows():
        inside = series[(series["t_s"] >= row["from_s"]) & (series["t_s"] < row["to_s"])]
        for stage in STAGES:
            column = f"behind_{stage}"
            slices.loc[index, column] = inside[column].max() if column in inside else np.nan
            column = f"rss_mb_{stage}"
            slices.loc[index, column] = (
                inside[column].iloc[-1] if column in inside and len(inside) else np.nan
            )
        for table in TABLES:
            column = f"files_{table}"
            slices.loc[index, column] = inside[column].max() if column in inside else np.nan
        slices.loc[index, "load1_mean"] = inside["load1"].mean()
        slices.loc[index, "load1_max"] = inside["load1"].max()
    return slices


def _n(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_report(result: SoakResult, slices: pd.DataFrame, verdict_list: list[Verdict]) -> None:
    c, produced = result.config, result.produced
    if produced:
        console.print(
            f"produced {produced.sent:,} records ({produced.good:,} good + {produced.bad:,} "
            f"malformed, {produced.stations} stations) in {produced.seconds:.0f} s = "
            f"{produced.rate:,.0f} rec/s (target {c.rate:,.0f}), after a primer of "
            f"{result.prime.sent if result.prime else 0:,}; {result.engines}; caught up "
            f"{result.catch_up_s:.0f} s after the last record; supervisord restarts: "
            + ", ".join(f"{s} {result.restarts.get(s, 0)}" for s in STAGES),
            highlight=False,
        )
    first = Table(
        title="soak per 5-minute slice: event -> gold latency, lag (max records behind), load"
    )
    for name in (
        "slice",
        "records",
        "p50 s",
        "p95 s",
        "max s",
        "bronze",
        "silver",
        "score",
        "load avg (mean/max)",
    ):
        first.add_column(name, justify="right")
    second = Table(
        title="soak per 5-minute slice: RSS of each stage's process tree (MB, at its end), files per table (max)"
    )
    for name in (
        "slice",
        "RSS bronze",
        "RSS silver",
        "RSS score",
        *(t.split("_", 1)[1] for t in TABLES),
    ):
        second.add_column(name, justify="right")
    for _, row in slices.iterrows():
        first.add_row(
            row["slice"], f"{row['records']:,}", _n(row["p50_s"], ".2f"), _n(row["p95_s"], ".2f"),
            _n(row["max_s"], ".2f"), *(_n(row[f"behind_{s}"]) for s in STAGES),
            f"{_n(row['load1_mean'], '.1f')} / {_n(row['load1_max'], '.1f')}",
        )  # fmt: skip
        second.add_row(
            row["slice"], *(_n(row[f"rss_mb_{s}"]) for s in STAGES),
            *(_n(row[f"files_{t}"]) for t in TABLES),
        )  # fmt: skip
    console.print(first)
    console.print(second)

    maintenance = Table(title="maintenance runs (`periscope lake maintain`): files before -> after")
    maintenance.add_column("at")
    maintenance.add_column("took")
    maintenance.add_column("exit")
    for t in TABLES:
        maintenance.add_column(t.split("_", 1)[1], justify="right")
    maintenance.add_column("errors")
    for run_ in result.maintenance:
        by_table = {r.get("table"): r for r in run_.tables}
        maintenance.add_row(
            f"{run_.at_s / 60:.1f} min", f"{run_.seconds:.0f} s", str(run_.exit_code),
            *(
                f"{by_table[t].get('files before')} -> {by_table[t].get('files after')}"
                if t in by_table else "-"
                for t in TABLES
            ),
            "; ".join(f"{r.get('table')}: {str(r.get('error'))[:120]}" for r in run_.tables if r.get("error")),
        )  # fmt: skip
    console.print(maintenance)

    series = pd.DataFrame(result.samples)
    files = Table(title="files per lake table over the soak (current version)")
    for name in ("table", "max", "last"):
        files.add_column(name, justify="right")
    for column in sorted(c for c in series if c.startswith("files_")):
        files.add_row(
            column.removeprefix("files_"),
            _n(series[column].max()),
            _n(series[column].dropna().iloc[-1] if series[column].notna().any() else None),
        )
    console.print(files)

    checks = Table(title="accounting (the reliability suite's checks)")
    checks.add_column("check")
    checks.add_column("detail")
    checks.add_column("result")
    for check in result.checks:
        checks.add_row(check.name, check.detail, "[green]pass[/]" if check.ok else "[red]FAIL[/]")
    console.print(checks)
    load = series["load1"] if "load1" in series else pd.Series(dtype=float)
    console.print(
        f"load average (1 min) over the samples: min {_n(load.min(), '.1f')}, median "
        f"{_n(load.median(), '.1f')}, max {_n(load.max(), '.1f')} (2 cores)",
        highlight=False,
    )
    for v in verdict_list:
        console.print(
            f"{'[green]PASS[/]' if v.ok else '[red]FAIL[/]'}  {v.target}: {v.detail}",
            highlight=False,
        )


def plot(result: SoakResult, path: Path) -> None:
    """lag, latency p95 per minute, RSS per stage, files per table, over the soak's minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = pd.DataFrame(result.samples)
    minutes = series["t_s"] / 60
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    lag, latency, memory, files = axes
    for stage in STAGES:
        if f"behind_{stage}" in series:
            lag.plot(minutes, series[f"behind_{stage}"], label=stage)
    lag.axhline(LAG_TARGET, color="red", linestyle=":", label=f"target {LAG_TARGET:,}")
    lag.set_ylabel("records behind")
    lag.legend(loc="upper left", fontsize=8)
    load = lag.twinx()
    load.plot(minutes, series["load1"], color="grey", linestyle="--", linewidth=0.8)
    load.set_ylabel("load average (grey)")

    p95 = per_minute_p95(result.latency, result.start_epoch)
    p95 = p95[(p95.index >= 0) & (p95.index < result.produce_end_s / 60)]
    latency.plot(p95.index + 0.5, p95.to_numpy(), marker=".", label="p95 per minute")
    latency.axhline(LATENCY_P95_TARGET_S, color="red", linestyle=":", label="target 10 s")
    latency.set_ylabel("event -> gold p95 (s)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper left", fontsize=8)

    for stage in STAGES:
        if f"rss_mb_{stage}" in series:
            memory.plot(minutes, series[f"rss_mb_{stage}"], label=stage)
    memory.axvline(result.config.warmup_min, color="grey", linestyle=":", label="end of warm-up")
    memory.set_ylabel("RSS of process tree (MB)")
    memory.set_ylim(bottom=0)
    memory.legend(loc="upper left", fontsize=8)

    for table in TABLES:
        if f"files_{table}" in series:
            files.plot(minutes, series[f"files_{table}"], label=table)
    files.set_ylabel("files in the table")
    files.set_xlabel("minutes since the soak started")
    files.legend(loc="upper left", fontsize=8)
    for run_ in result.maintenance:
        for ax in axes:
            ax.axvline(run_.at_s / 60, color="green", alpha=0.3)
    fig.suptitle(
        f"soak: {result.config.rate:,.0f} rec/s for {result.config.minutes:g} min, "
        f"maintenance every {result.config.maintenance_every_min:g} min (green)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save(result: SoakResult, slices: pd.DataFrame, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.samples).to_csv(out / "series.csv", index=False)
    slices.to_csv(out / "slices.csv", index=False)
    pd.DataFrame(
        [
            {"at_s": r.at_s, "seconds": r.seconds, "exit_code": r.exit_code, **table}
            for r in result.maintenance
            for table in (r.tables or [{}])
        ]
    ).to_csv(out / "maintenance.csv", index=False)
    plot(result, out / "soak.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
    )
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="minutes of records (default 30)"
    )
    parser.add_argument(
        "--rate", type=float, default=1_000.0, help="records per second (default 1,000)"
    )
    parser.add_argument(
        "--bad-rate", type=float, default=0.01, help="share of malformed records (default 0.01)"
    )
    parser.add_argument(
        "--maintenance-every",
        type=float,
        default=10.0,
        help="minutes between `periscope lake maintain` runs (default 10)",
    )
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between samples (default 10)"
    )
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=5.0,
        help="minutes excluded from the memory baseline (default 5)",
    )
    parser.add_argument(
        "--prime-seconds",
        type=float,
        default=30.0,
        help="seconds of records sent and scored before the soak's clock starts (default 30)",
    )
    parser.add_argument(
        "--models",
        default="dev",
        help="score with a snapshot of the dev MLflow store's champions (dev), of another "
        "store's mlflow.db (a path, e.g. .local/demo_auto/mlflow/mlflow.db), or with none "
        "(default dev)",
    )
    parser.add_argument("--seed", type=int, default=20, help="seed of the malformed records")
    parser.add_argument(
        "--instance",
        type=int,
        default=int(os.environ.get("PERISCOPE_TEST_INSTANCE") or 1),
        help="port shift as PERISCOPE_TEST_INSTANCE (default: that variable, else 1)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the pipeline, services and lake in place"
    )
    args = parser.parse_args(argv)  # fmt: skip

    local_dir = PROJECT_DIR / ".local" / f"soak{args.instance}"
    work_dir = Path(tempfile.mkdtemp(prefix="periscope-soak-"))
    out = PROJECT_DIR / ".local" / "bench" / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    settings = fresh_instance(args.instance, local_dir=local_dir, lake_root=work_dir / "lake")
    if args.models == "none":
        shutil.rmtree(local_dir / "mlflow", ignore_errors=True)
    elif not snapshot_models(local_dir, None if args.models == "dev" else Path(args.models)):
        console.print(f"[yellow]no MLflow store ({args.models}): gold scores without champions[/]")
    config = SoakConfig(
        minutes=args.minutes,
        rate=args.rate,
        bad_rate=args.bad_rate,
        seed=args.seed,
        maintenance_every_min=args.maintenance_every,
        sample_every_s=args.sample_every,
        warmup_min=args.warmup_minutes,
        prime_s=args.prime_seconds,
    )
    console.print(
        f"lake {work_dir / 'lake'}, state {local_dir}, Kafka {settings.kafka_bootstrap_servers}, "
        f"out {out}",
        highlight=False,
    )
    ok = False
    result = SoakResult(config)
    try:
        run(settings, result)
        slices = slice_table(result)
        verdict_list = verdicts(
            pd.DataFrame(result.samples),
            slices,
            result.checks,
            produce_end_s=result.produce_end_s,
            warmup_s=config.warmup_min * 60,
            maintenance_every_s=config.maintenance_every_min * 60,
        )
        if not result.caught_up:
            verdict_list.append(
                Verdict("caught up", False, f"not within {config.catch_up_timeout_s:.0f} s")
            )
        save(result, slices, out)
        print_report(result, slices, verdict_list)
        ok = all(v.ok for v in verdict_list)
        console.print(f"series, slices, maintenance CSVs and soak.png in {out}", highlight=False)
    finally:
        if not args.keep:
            console.print(stop_pipeline(keep_services=False).strip(), highlight=False, markup=False)
            shutil.rmtree(work_dir, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "series.csv").exists():  # a failed run: keep what was sampled
            pd.DataFrame(result.samples).to_csv(out / "series.csv", index=False)
        (out / "report.txt").write_text(console.export_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
