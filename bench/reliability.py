"""Reliability suite: records produced while the supervised pipeline is crashed on purpose,
then every record accounted for (issue 20, part 3).

The pipeline runs under `periscope up` (supervisord: bronze, silver, score) on a throwaway
lake and its own Kafka and PostgreSQL (a test-instance's ports, `--instance`). The bench
produces `--records` weather records across every station of the real dataset (the replay's
own `build_messages`, `--bad-rate` malformed, through the ingest producer) at `--rate`
records/s; meanwhile a chaos thread SIGKILLs bronze, silver and score (`--kills` in all, each
at a random moment, each to its whole process group: the Spark JVM and Ray workers die too)
and restarts the Kafka broker (`--broker-restarts`, the project's `KafkaBroker`); supervisord
restarts the stages. Once the lake has caught up it loads the warehouse and restarts
PostgreSQL during that load, loads again and runs `dbt build`. Then it checks:

- bronze: every produced record exactly once (each (partition, offset) once, count = produced,
  and the multiset of (key, value) digests equal to what was produced);
- silver: observations + quarantined + duplicates = bronze (`periscope lake audit`'s code);
- features: every window equal to a from-scratch recomputation (`ml.windows`, the reference
  the tests use) from the on-time observations, to 1e-9;
- gold: one row per feature window;
- warehouse = lake: the lake schema's row counts and dbt's reconciliation test (`dbt build`).

`up`'s follow-clock ingest is parked (its state says the history is sent) so that this
bench's producer is the only writer of `weather-raw`; the readers (api, dashboard, dagster)
are stopped after `up` to leave the two cores to the stages under test.

    nice -n 10 .venv/bin/python bench/reliability.py                      # 1,000,000 records, 20 kills, 3 broker restarts
    nice -n 10 .venv/bin/python bench/reliability.py --records 100000 --kills 5 --broker-restarts 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as a script: the project's packages beside bench/
    sys.path.insert(0, str(PROJECT_DIR))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from periscope.contracts import SourceContract, get_contract  # noqa: E402
from periscope.settings import Settings, instance_ports  # noqa: E402
from periscope.topics import recreate_topics  # noqa: E402

SOURCE = "weather"
STAGES = ("bronze", "silver", "score")
# supervisord states a restarted stage passes through before RUNNING (autorestart is on)
SETTLING = frozenset({"EXITED", "BACKOFF", "STARTING"})
READERS = ("api", "dashboard", "dagster")
PARK_STATION = "portland"  # the parked follow-clock ingest's station (it sends nothing)

console = Console()


# --- settings ------------------------------------------------------------------------------------


def instance_env(instance: int, *, local_dir: Path, lake_root: Path) -> dict[str, str]:
    """Environment for a run on a test instance's ports (`instance_ports`, as the integration
    tests use them), with its own state folder and lake."""
    return {
        "PERISCOPE_LOCAL_DIR": str(local_dir),
        "PERISCOPE_LAKE_ROOT": str(lake_root),
        "PERISCOPE_JARS_DIR": str(PROJECT_DIR / ".local" / "jars"),
        "PERISCOPE_KAFKA_BOOTSTRAP_SERVERS": "",
        **instance_ports(instance),
        "PERISCOPE_SPARK_UI_ENABLED": "false",
        "PERISCOPE_SPARK_SHUFFLE_PARTITIONS": "2",
        "PERISCOPE_SPARK_MASTER": "local[2]",
    }


# --- producing -----------------------------------------------------------------------------------


def record_digest(key: bytes | None, value: bytes | None) -> int:
    """A 64-bit digest of one record, to compare what was produced with what bronze holds."""
    digest = hashlib.blake2b(key or b"", digest_size=8, person=b"key")
    digest.update(b"\x00")
    digest.update(value or b"")
    return int.from_bytes(digest.digest(), "big")


def paced(
    items: Iterable[tuple[bytes, bytes]],
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[bytes, bytes]]:
    """Items released at `rate` per second (0 = at once), measured from one start so the
    sleeps never drift; checked every 256 items, as one sleep per record would cost more."""
    start = clock()
    for index, item in enumerate(items):
        if rate > 0 and not index & 255:
            wait = start + index / rate - clock()
            if wait > 0:
                sleep(wait)
        yield item


def replay_rows(
    ordered: pl.DataFrame, time_field: str, *, rows: int, skip: int = 0
) -> pl.DataFrame:
    """Rows `skip` .. `skip + rows` of a frame in event-time order; past its end the rows go
    on as copies shifted by whole days past its last event time, so a long soak can send more
    records than the dataset holds (each copy's records are new: later event times).

    >>> frame = pl.DataFrame({"t": [datetime(2020, 1, 1), datetime(2020, 1, 2)]})
    >>> replay_rows(frame, "t", rows=2, skip=1)["t"].dt.strftime("%F").to_list()
    ['2020-01-02', '2020-01-03']
    """
    height = ordered.height
    if skip + rows <= height or height == 0 or rows <= 0:
        return ordered.slice(skip, rows)
    times = ordered.get_column(time_field)
    first, last = times.min(), times.max()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    shift = timedelta(days=(last - first).days + 1)
    parts, start, end = [], skip, skip + rows
    while start < end:  # only the copies the range touches, not every copy up to its end
        copy, offset = divmod(start, height)
        take = min(height - offset, end - start)
        part = ordered.slice(offset, take)
        parts.append(part.with_columns(pl.col(time_field) + shift * copy) if copy else part)
        start += take
    return pl.concat(parts)


def good_records_for(total: int, bad_rate: float) -> int:
    """Dataset records to take so that, with the replay's malformed share added, about `total`
    go out (the replay adds round(good * r / (1 - r)) malformed ones)."""
    return round(total * (1.0 - bad_rate))


@dataclass
class Produced:
    sent: int
    good: int
    bad: int
    stations: int
    seconds: float
    digests: list[int] = field(repr=False, default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def _announced(
    items: Iterable[tuple[bytes, bytes]], on_start: Callable[[], None]
) -> Iterator[tuple[bytes, bytes]]:
    """The items, calling `on_start` as the first is taken (the producer has found the topic)."""
    for index, item in enumerate(items):
        if index == 0:
            on_start()
        yield item


def produce(
    settings: Settings,
    *,
    records: int,
    rate: float,
    bad_rate: float,
    seed: int,
    on_start: Callable[[], None] = lambda: None,
    skip: int = 0,
) -> Produced:
    """Replay the first records of every weather station (event-time order) into weather-raw,
    paced, with malformed ones mixed in; raises unless Kafka acknowledged every record.
    `on_start` is called when sending starts (after the dataset is read and encoded);
    `skip` good records are passed over first (a second call goes on where one left off)."""
    from ingest.datasets import read_source
    from ingest.producer import send_with_progress
    from ingest.replay import bad_count, build_messages, prepare_frame

    contract = get_contract(SOURCE)
    frame = replay_rows(
        prepare_frame(read_source(SOURCE, settings.data_dir), contract),
        contract.event_time_field,
        rows=good_records_for(records, bad_rate),
        skip=skip,
    )
    # Sent as built: a 30-minute soak's 1.8M records held as bytes took 8 GB. Only a digest of
    # each stays, for the exactly-once check.
    digests: list[int] = []
    bad = 0

    def sent_records() -> Iterator[tuple[bytes, bytes]]:
        nonlocal bad
        for message in build_messages(frame, contract, bad_rate=bad_rate, seed=seed):
            digests.append(record_digest(message.key, message.value))
            bad += message.kind is not None
            yield message.key, message.value

    total = frame.height + bad_count(frame.height, bad_rate)
    started = time.monotonic()
    report = send_with_progress(
        settings,
        contract.topic("raw"),
        paced(_announced(sent_records(), on_start), rate),
        total=total,
        description=f"produce → {contract.topic('raw')} at {rate:,.0f}/s",
    )
    return Produced(
        sent=report.sent,
        good=len(digests) - bad,
        bad=bad,
        stations=frame.get_column(contract.key_field).n_unique(),
        seconds=time.monotonic() - started,
        digests=digests,
    )


# --- the pipeline under `periscope up` -------------------------------------------------------------


def periscope(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a `periscope` command of this environment; its output is captured."""
    executable = str(Path(sys.executable).parent / "periscope")
    return subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def park_follow_clock(settings: Settings) -> None:
    """Save a follow-clock state whose history is already sent: `up`'s ingest program then
    runs and sends nothing, and this bench stays the only producer of the raw topic."""
    from ingest.replay import FollowState, follow_state_path, save_follow_state

    state = FollowState(
        SOURCE, timedelta(0), datetime(2100, 1, 1, tzinfo=UTC), (PARK_STATION,), 1.0
    )
    save_follow_state(follow_state_path(settings, SOURCE), state)


def start_pipeline(settings: Settings, *, wait_s: float = 600) -> None:
    """`periscope up` for weather (services, topics, supervised stages), then the readers stop."""
    from periscope.supervise import SupervisePaths

    park_follow_clock(settings)
    with console.status("periscope up ..."):
        up = periscope(
            "up", "--source", SOURCE, "--stations", PARK_STATION, "--days", "1",
            "--every", "3600", "--wait", f"{wait_s:g}",
            timeout=wait_s + 300,
        )  # fmt: skip
    if up.returncode != 0:
        raise RuntimeError(f"periscope up failed:\n{up.stdout}\n{up.stderr}")
    config = SupervisePaths.from_settings(settings).config
    ctl = str(Path(sys.executable).parent / "supervisorctl")
    # The readers are not under test; they would take CPU from the stages (Dagster's sensor
    # would also start warehouse loads of its own).
    subprocess.run([ctl, "-c", str(config), "stop", *READERS], capture_output=True, check=False)


def stop_pipeline(*, keep_services: bool) -> str:
    down = periscope(*(["down", "--keep-services"] if keep_services else ["down"]), timeout=900)
    return down.stdout + down.stderr


# --- chaos ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at_s: float  # seconds after the start of production
    kind: str  # "kill" or "broker"
    target: str = ""


def chaos_schedule(
    rng: random.Random, *, window_s: float, kills: int, broker_restarts: int
) -> list[Event]:
    """Every fault at a random moment in [0, window_s), in time order. Kills go to bronze,
    silver and score in turn (shuffled), so each stage is killed when there are >= 3 kills."""
    targets = [STAGES[i % len(STAGES)] for i in range(kills)]
    rng.shuffle(targets)
    events = [Event(rng.uniform(0, window_s), "kill", t) for t in targets]
    events += [Event(rng.uniform(0, window_s), "broker") for _ in range(broker_restarts)]
    return sorted(events, key=lambda e: e.at_s)


@dataclass
class ChaosLog:
    kills: Counter[str] = field(default_factory=Counter)
    broker_downtime_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _running_pid(settings: Settings, name: str, timeout_s: float, killed: set[int]) -> int | None:
    """The pid of `name` once supervisord reports it RUNNING (past its start-up seconds) under
    a pid not killed already (supervisord reports a killed process until it has reaped it)."""
    from periscope.supervise import SupervisePaths, Supervisor

    supervisor = Supervisor(SupervisePaths.from_settings(settings))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for program in supervisor.programs():
            running = program.name == name and program.state == "RUNNING"
            if running and program.pid and program.pid not in killed:
                return program.pid
        time.sleep(1.0)
    return None


def kill_stage(
    settings: Settings, name: str, killed: set[int], *, timeout_s: float = 600
) -> int | None:
    """SIGKILL a RUNNING stage's whole process group (supervisord starts each program in a group
    of its own: the Spark JVM and Ray's workers go too). Waits for RUNNING: a stage killed
    before its start-up seconds counts as a failed start, and five of those make it FATAL."""
    pid = _running_pid(settings, name, timeout_s, killed)
    if pid is None:
        return None
    killed.add(pid)
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # supervisord gives each program a group
    except ProcessLookupError:
        return None
    return pid


def restart_broker(settings: Settings) -> float:
    """Stop and start the Kafka broker (the project's service code); returns the downtime."""
    from periscope.services import KafkaBroker

    broker = KafkaBroker(settings)
    started = time.monotonic()
    broker.stop()
    broker.start()
    return time.monotonic() - started


def run_chaos(
    settings: Settings, events: list[Event], log: ChaosLog, started: float, stop: threading.Event
) -> None:
    """Carry out `events` at their moments (late ones at once); errors are logged, not raised."""
    killed: set[int] = set()
    for event in events:
        if stop.wait(max(0.0, started + event.at_s - time.monotonic())):
            log.errors.append(f"stopped before {event.kind} {event.target}")
            return
        try:
            if event.kind == "kill":
                pid = kill_stage(settings, event.target, killed)
                if pid is None:
                    log.errors.append(f"{event.target} never RUNNING to be killed")
                    continue
                log.kills[event.target] += 1
                moment = time.monotonic() - started  # when it fell, after waiting for RUNNING
                log.lines.append(f"{moment:7.1f} s  SIGKILL {event.target} (pid {pid})")
            else:
                moment = time.monotonic() - started
                downtime = restart_broker(settings)
                log.broker_downtime_s.append(downtime)
                log.lines.append(f"{moment:7.1f} s  Kafka broker restarted ({downtime:.1f} s)")
        except Exception as exc:  # keep going: the checks say what it cost
            log.errors.append(f"{event.kind} {event.target}: {exc}")


# --- waiting for the lake ------------------------------------------------------------------------


def wait_caught_up(settings: Settings, produced: int, *, timeout_s: float) -> tuple[bool, float]:
    """Poll the audit until bronze holds `produced` rows, silver processed them all and gold
    scored every silver batch; returns (caught up, seconds waited)."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from periscope.audit import audit_source

    contract = get_contract(SOURCE)
    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("catching up", total=None)
        while time.monotonic() - started < timeout_s:
            try:
                audit = audit_source(settings, contract, require_caught_up=True)
            except Exception as exc:  # a broker restart or a commit in progress: look again
                bar.update(task, description=f"catching up (audit: {exc.__class__.__name__})")
                time.sleep(3)
                continue
            bar.update(
                task,
                description=(
                    f"catching up: kafka {audit.kafka:,}, bronze {audit.bronze:,}, silver "
                    f"processed {audit.processed:,}, windows {audit.windows:,}, gold {audit.gold or 0:,}"
                ),
            )
            # gold is None until score's first commit: the audit checks gold only once it exists
            landed = audit.kafka == audit.bronze == audit.processed == produced
            if landed and audit.gold == audit.windows and not audit.problems:
                return True, time.monotonic() - started
            time.sleep(3)
    return False, time.monotonic() - started


# --- the warehouse -------------------------------------------------------------------------------


@dataclass
class WarehouseRun:
    interrupted_load_exit: int | None = None
    load_active_at_restart: bool = False
    postgres_downtime_s: float = 0.0
    final_load_exit: int = -1
    dbt_exit: int = -1
    output: str = ""


def _active_load(settings: Settings) -> bool:
    """True when another client than us is connected: the loader (nothing else of the pipeline
    under test uses PostgreSQL, and the readers are stopped), in or between its statements."""
    import psycopg2

    try:
        with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
            cur.execute(
                "select count(*) from pg_stat_activity where backend_type = 'client backend' "
                "and pid <> pg_backend_pid() and datname = current_database()"
            )
            row = cur.fetchone()
        return bool(row and row[0])
    except psycopg2.Error:
        return False


def reset_warehouse(settings: Settings) -> None:
    """Drop what an earlier load and dbt build left: the load starts from the lake's version 0."""
    import psycopg2

    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for schema in ("lake", "staging", "intermediate", "marts"):
            cur.execute(f"drop schema if exists {schema} cascade")


def warehouse_with_postgres_restart(
    settings: Settings, dbt_dir: Path, *, dbt_args: tuple[str, ...] = ()
) -> WarehouseRun:
    """A warehouse load with PostgreSQL restarted while it runs, then a load that must pass and
    `dbt build` (its tests include the lake/marts reconciliation); `dbt_args` narrow the build."""
    from periscope.services import PostgresServer

    run = WarehouseRun()
    reset_warehouse(settings)
    executable = str(Path(sys.executable).parent / "periscope")
    with console.status("warehouse load, PostgreSQL restarted during it ..."):
        load = subprocess.Popen(
            [executable, "warehouse", "load", "--source", SOURCE],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while load.poll() is None and time.monotonic() < deadline:
            if _active_load(settings):
                run.load_active_at_restart = True
                break
            time.sleep(0.2)
        run.load_active_at_restart &= load.poll() is None
        postgres = PostgresServer(settings)
        started = time.monotonic()
        postgres.stop()
        postgres.start()
        run.postgres_downtime_s = time.monotonic() - started
        output, _ = load.communicate(timeout=600)
        run.interrupted_load_exit = load.returncode
    dbt_env = {"DBT_TARGET_PATH": str(dbt_dir / "target"), "DBT_LOG_PATH": str(dbt_dir / "logs")}
    with console.status("warehouse load again, then dbt build ..."):
        final = periscope("warehouse", "load", "--source", SOURCE, timeout=1800)
        run.final_load_exit = final.returncode
        dbt = periscope("dbt", "build", *dbt_args, timeout=1800, env=dbt_env)
        run.dbt_exit = dbt.returncode
    run.output = "\n".join([output, final.stdout, final.stderr, dbt.stdout[-4000:], dbt.stderr])
    return run


# --- checks --------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _path(settings: Settings, contract: SourceContract, layer: str, entity: str) -> str:
    return settings.lake_path(contract.table(layer, entity))  # type: ignore[arg-type]


def check_bronze(settings: Settings, produced: Produced) -> Check:
    """Every produced record in bronze exactly once: (partition, offset) unique and contiguous
    per partition, count = produced = Kafka's end offsets, and the same (key, value) multiset."""
    from periscope.lake import read_delta
    from periscope.topics import records_written

    contract = get_contract(SOURCE)
    rows = read_delta(
        _path(settings, contract, "bronze", "raw"), ["partition", "offset", "key", "value"]
    )
    coordinates = rows.select(["partition", "offset"]).to_pandas()
    unique = len(coordinates.drop_duplicates())
    gaps = 0
    for _, offsets in coordinates.groupby("partition")["offset"]:
        gaps += int(offsets.max()) + 1 - offsets.nunique()  # a fresh topic starts at offset 0
    kafka = records_written(settings, contract.topic("raw"))
    digests: Counter[int] = Counter()
    for batch in rows.select(["key", "value"]).to_batches(max_chunksize=100_000):
        keys, values = batch.column("key").to_pylist(), batch.column("value").to_pylist()
        digests.update(record_digest(k, v) for k, v in zip(keys, values, strict=True))
    same_records = digests == Counter(produced.digests)
    ok = rows.num_rows == unique == kafka == produced.sent and gaps == 0 and same_records
    detail = (
        f"{rows.num_rows:,} rows, {unique:,} distinct (partition, offset), {gaps} gaps; "
        f"produced {produced.sent:,}, Kafka {kafka:,}; records identical: {'yes' if same_records else 'NO'}"
    )
    return Check("bronze = produced, exactly once", ok, detail)


def check_audit(settings: Settings) -> Check:
    """`periscope lake audit`'s equations, caught up: observations + quarantined + duplicates =
    bronze, each table as silver's ledger says, gold one prediction per window."""
    from periscope.audit import audit_source

    audit = audit_source(settings, get_contract(SOURCE), require_caught_up=True)
    t = audit.tables
    split = t["observations"] + t["quarantined"] + t["duplicates"]
    ok = not audit.problems and split == audit.bronze
    detail = (
        f"{t['observations']:,} observations + {t['quarantined']:,} quarantined + "
        f"{t['duplicates']:,} duplicates = {split:,} (bronze {audit.bronze:,}); "
        f"{t['late']:,} late"
        + (f"; problems: {'; '.join(audit.problems)}" if audit.problems else "")
    )
    return Check("silver = bronze (audit)", ok, detail)


def check_features(settings: Settings) -> Check:
    """Every feature window equal to `ml.windows.window_features` over the on-time observations
    (late ones never change a window), same windows, every value to 1e-9."""
    from deltalake import DeltaTable

    from ml.data import feature_windows
    from ml.windows import window_features
    from periscope.lake import read_delta
    from periscope.windows import feature_columns

    contract = get_contract(SOURCE)
    key = contract.key_field
    observations = read_delta(_path(settings, contract, "silver", "observations")).to_pandas()
    late_path = _path(settings, contract, "silver", "late")
    if DeltaTable.is_deltatable(late_path):
        late = read_delta(late_path, ["partition", "offset"]).to_pandas()
        marked = observations.merge(late, on=["partition", "offset"], how="left", indicator=True)
        observations = observations[(marked["_merge"] == "left_only").to_numpy()]
    reference = window_features(observations, contract)
    silver = feature_windows(settings, contract)
    columns = [c for c in feature_columns(contract) if c not in (key, "window_start")]
    merged = silver.merge(reference, on=[key, "window_start"], suffixes=("", "_ref"))
    differing = []
    for column in columns:
        ours, theirs = merged[column], merged[f"{column}_ref"]
        if column == "window_end":
            if not (ours == theirs).all():
                differing.append(column)
            continue
        both = ours.notna() & theirs.notna()
        nulls_agree = (ours.isna() == theirs.isna()).all()
        close = np.allclose(
            ours[both].astype("float64"), theirs[both].astype("float64"), rtol=1e-9, atol=1e-9
        )
        if not (nulls_agree and close):
            differing.append(column)
    ok = len(merged) == len(silver) == len(reference) > 0 and not differing
    detail = (
        f"{len(silver):,} silver windows, {len(reference):,} recomputed, {len(merged):,} matched; "
        f"{len(columns)} columns compared"
        + (f"; differing: {', '.join(differing)}" if differing else "")
    )
    return Check("features = from-scratch recomputation", ok, detail)


def check_gold(settings: Settings) -> Check:
    """Gold holds one prediction row per silver feature window, and no other."""
    from periscope.lake import read_delta
    from periscope.time import naive_utc

    contract = get_contract(SOURCE)
    key = contract.key_field

    def keys(layer: str, entity: str) -> pd.DataFrame:
        frame = read_delta(
            _path(settings, contract, layer, entity), [key, "window_start"]
        ).to_pandas()
        frame["window_start"] = naive_utc(frame["window_start"])
        return frame

    gold, windows = keys("gold", "predictions"), keys("silver", "features")
    distinct = len(gold.drop_duplicates())
    same = set(map(tuple, gold.to_numpy())) == set(map(tuple, windows.to_numpy()))
    ok = len(gold) == distinct == len(windows) and same
    detail = (
        f"{len(gold):,} gold rows, {distinct:,} distinct windows, {len(windows):,} silver windows; "
        f"same windows: {'yes' if same else 'NO'}"
    )
    return Check("gold = one row per window", ok, detail)


def check_warehouse(settings: Settings, run: WarehouseRun) -> Check:
    """The lake schema holds what the lake holds, and dbt build (reconciliation included) passed."""
    import psycopg2

    from periscope.lake import row_count_or_zero

    contract = get_contract(SOURCE)
    pairs = {
        "observations": ("silver", "observations"),
        "features": ("silver", "features"),
        "predictions": ("gold", "predictions"),
    }
    counts = {}
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for entity, (layer, table) in pairs.items():
            cur.execute(f"select count(*) from lake.{SOURCE}_{entity}")
            row = cur.fetchone()
            counts[entity] = (
                int(row[0]) if row else -1,
                row_count_or_zero(_path(settings, contract, layer, table)),
            )
    equal = all(pg == delta for pg, delta in counts.values())
    ok = equal and run.final_load_exit == 0 and run.dbt_exit == 0
    detail = (
        ", ".join(f"{e} {pg:,}/{delta:,}" for e, (pg, delta) in counts.items())
        + f" (Postgres/Delta); load after restart exit {run.final_load_exit}, dbt build exit {run.dbt_exit}"
    )
    return Check("warehouse = lake (dbt reconciliation)", ok, detail)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    records: int = 1_000_000
    rate: float = 2_000.0
    kills: int = 20
    broker_restarts: int = 3
    bad_rate: float = 0.01
    seed: int = 20
    chaos_window_s: float = 0.0  # 0: the production time
    catch_up_timeout_s: float = 3600.0
    # extra `dbt build` arguments; the default builds and tests everything
    dbt_args: tuple[str, ...] = ()


@dataclass
class Report:
    config: Config
    produced: Produced | None = None
    chaos: ChaosLog = field(default_factory=ChaosLog)
    restarts: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    caught_up: bool = False
    catch_up_s: float = 0.0
    warehouse: WarehouseRun | None = None
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def faults_done(self) -> bool:
        """Every fault carried out, and supervisord restarted each killed stage each time."""
        return (
            sum(self.chaos.kills.values()) == self.config.kills
            and len(self.chaos.broker_downtime_s) == self.config.broker_restarts
            and all(self.restarts.get(s, 0) >= n for s, n in self.chaos.kills.items())
        )

    @property
    def ok(self) -> bool:
        return (
            self.caught_up
            and self.faults_done
            and not self.chaos.errors
            and bool(self.checks)
            and all(c.ok for c in self.checks)
        )


def run(settings: Settings, config: Config, *, work_dir: Path) -> Report:
    """Start the pipeline, produce under chaos, wait until the lake caught up, restart
    PostgreSQL during a load, and check every record. The pipeline is left running (stop it
    with `stop_pipeline`); the services must be this run's own."""
    from periscope.services import KafkaBroker, PostgresServer
    from periscope.supervise import SupervisePaths, Supervisor

    report = Report(config)
    contract = get_contract(SOURCE)
    t0 = time.monotonic()
    for service in (KafkaBroker(settings), PostgresServer(settings)):
        service.start()
    recreate_topics(settings, [contract])  # weather-raw holds only what this run sends
    start_pipeline(settings)
    report.timings["up"] = time.monotonic() - t0

    rng = random.Random(config.seed)
    window = config.chaos_window_s or config.records / config.rate
    events = chaos_schedule(
        rng, window_s=window, kills=config.kills, broker_restarts=config.broker_restarts
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    started = time.monotonic()

    def start_chaos() -> None:
        # The faults' clock starts with the first record sent: a broker restart before the
        # producer has found its topic would fail the producer, not test the pipeline.
        nonlocal started
        started = time.monotonic()
        thread = threading.Thread(
            target=run_chaos, args=(settings, events, report.chaos, started, stop), daemon=True
        )
        thread.start()
        threads.append(thread)

    try:
        report.produced = produce(
            settings,
            records=config.records,
            rate=config.rate,
            bad_rate=config.bad_rate,
            seed=config.seed,
            on_start=start_chaos,
        )
        for thread in threads:
            thread.join(timeout=config.catch_up_timeout_s)
    finally:
        stop.set()
    report.timings["produce + chaos"] = time.monotonic() - started

    report.caught_up, report.catch_up_s = wait_caught_up(
        settings, report.produced.sent, timeout_s=config.catch_up_timeout_s
    )
    # A stage killed last may still be on its way back when a quiet machine has already caught
    # up: EXITED until supervisord's next tick, BACKOFF between tries, then STARTING for its
    # first 15 s. Give it until it counts as RUNNING (or has given up, FATAL).
    supervisor = Supervisor(SupervisePaths.from_settings(settings))
    deadline = time.monotonic() + 120
    while True:
        programs = supervisor.programs()
        settling = [p.name for p in programs if p.name in STAGES and p.state in SETTLING]
        if not settling or time.monotonic() > deadline:
            break
        time.sleep(1)
    for program in programs:
        report.restarts[program.name] = program.restarts
        report.states[program.name] = program.state

    t1 = time.monotonic()
    report.warehouse = warehouse_with_postgres_restart(
        settings, work_dir / "dbt", dbt_args=config.dbt_args
    )
    report.timings["warehouse"] = time.monotonic() - t1

    t2 = time.monotonic()
    produced = report.produced
    warehouse = report.warehouse
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("bronze", lambda: check_bronze(settings, produced)),
        ("audit", lambda: check_audit(settings)),
        ("features", lambda: check_features(settings)),
        ("gold", lambda: check_gold(settings)),
        ("warehouse", lambda: check_warehouse(settings, warehouse)),
    ]
    for name, check in checks:
        try:
            report.checks.append(check())
        except Exception as exc:  # a check that cannot run fails, with why
            report.checks.append(Check(name, False, f"{exc.__class__.__name__}: {exc}"))
    report.timings["checks"] = time.monotonic() - t2
    return report


def print_report(report: Report) -> None:
    produced = report.produced
    c = report.config
    table = Table(title="reliability: records produced under faults, then accounted for")
    table.add_column("what")
    table.add_column("figure")
    table.add_column("result")
    if produced:
        table.add_row(
            "produced",
            f"{produced.sent:,} ({produced.good:,} good + {produced.bad:,} malformed) "
            f"from {produced.stations} stations in {produced.seconds:.1f} s = {produced.rate:,.0f} rec/s "
            f"(target {c.rate:,.0f})",
            "ok" if produced.rate >= 0.95 * c.rate or c.rate == 0 else "slow",
        )
    kills = ", ".join(f"{s} {report.chaos.kills[s]}" for s in STAGES)
    restarts = ", ".join(f"{s} {report.restarts.get(s, 0)}" for s in STAGES)
    table.add_row(
        "SIGKILLs (process groups)",
        f"{sum(report.chaos.kills.values())} of {c.kills}: {kills}; supervisord restarts: {restarts}",
        "ok"
        if sum(report.chaos.kills.values()) == c.kills
        and all(report.restarts.get(s, 0) >= n for s, n in report.chaos.kills.items())
        else "MISSED",
    )
    downtime = ", ".join(f"{d:.1f} s" for d in report.chaos.broker_downtime_s)
    table.add_row(
        "Kafka broker restarts",
        f"{len(report.chaos.broker_downtime_s)} of {c.broker_restarts} (down {downtime or '-'})",
        "ok" if len(report.chaos.broker_downtime_s) == c.broker_restarts else "MISSED",
    )
    if report.warehouse:
        w = report.warehouse
        table.add_row(
            "PostgreSQL restart during a load",
            f"load active at restart: {'yes' if w.load_active_at_restart else 'no'}; "
            f"that load exited {w.interrupted_load_exit}; restart {w.postgres_downtime_s:.1f} s",
            "ok" if w.load_active_at_restart else "load not caught",
        )
    states = ", ".join(f"{s} {report.states.get(s, '?')}" for s in STAGES)
    table.add_row(
        "caught up",
        f"{report.catch_up_s:.0f} s after production; stages {states}",
        "ok" if report.caught_up else "TIMED OUT",
    )
    for check in report.checks:
        table.add_row(check.name, check.detail, "[green]pass[/]" if check.ok else "[red]FAIL[/]")
    table.add_row("time", ", ".join(f"{k} {v:.0f} s" for k, v in report.timings.items()), "")
    console.print(table)
    for line in report.chaos.lines:
        console.print(f"  {line}", highlight=False)
    for error in report.chaos.errors:
        console.print(f"  [red]chaos:[/] {error}", highlight=False)
    if report.warehouse and not all(c.ok for c in report.checks if c.name.startswith("warehouse")):
        console.print(report.warehouse.output[-6000:], highlight=False, markup=False)
    console.print(
        "[green]every record accounted for[/]" if report.ok else "[red]reliability checks FAILED[/]"
    )


def fresh_instance(instance: int, *, local_dir: Path, lake_root: Path) -> Settings:
    """This process's settings for a run on `instance` (exported to the environment, which the
    `periscope` subprocesses read), with a fresh broker and database: bronze must start from
    an empty topic. New random PostgreSQL passwords each run."""
    env = instance_env(instance, local_dir=local_dir, lake_root=lake_root)
    env["PERISCOPE_POSTGRES_OWNER_PASSWORD"] = secrets.token_urlsafe(16)
    env["PERISCOPE_POSTGRES_BI_PASSWORD"] = secrets.token_urlsafe(16)
    os.environ.update(env)
    from periscope.services import KafkaBroker, PostgresServer
    from periscope.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    for service in (KafkaBroker(settings), PostgresServer(settings)):
        if service.status().running:
            service.stop()
        shutil.rmtree(service.root, ignore_errors=True)
    (local_dir / "replay").mkdir(parents=True, exist_ok=True)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Runs its own Kafka and PostgreSQL on the test instance's ports (--instance N shifts "
            "them by 1000 x N, as PERISCOPE_TEST_INSTANCE does) with state in .local/reliability<N>, "
            "and a throwaway lake; the dev services are never touched. Run it under `nice -n 10`."
        ),
    )
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="records to produce (default 1,000,000)"
    )
    parser.add_argument(
        "--rate", type=float, default=2_000.0, help="records per second (default 2,000)"
    )
    parser.add_argument(
        "--kills", type=int, default=20, help="SIGKILLs of bronze/silver/score in all (default 20)"
    )
    parser.add_argument(
        "--broker-restarts", type=int, default=3, help="Kafka broker restarts (default 3)"
    )
    parser.add_argument(
        "--bad-rate", type=float, default=0.01, help="share of malformed records (default 0.01)"
    )
    parser.add_argument(
        "--seed", type=int, default=20, help="seed of the faults' moments and the malformed records"
    )
    parser.add_argument(
        "--chaos-window", type=float, default=0.0,
        help="seconds over which the faults fall (default: the production time)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=3 * 3600, help="seconds to wait for the lake to catch up"
    )
    parser.add_argument(
        "--instance", type=int, default=int(os.environ.get("PERISCOPE_TEST_INSTANCE") or 1),
        help="port shift as PERISCOPE_TEST_INSTANCE (default: that variable, else 1)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="leave the pipeline, services and lake in place"
    )
    args = parser.parse_args(argv)

    local_dir = PROJECT_DIR / ".local" / f"reliability{args.instance}"
    work_dir = Path(tempfile.mkdtemp(prefix="periscope-reliability-"))
    settings = fresh_instance(args.instance, local_dir=local_dir, lake_root=work_dir / "lake")
    config = Config(
        records=args.records,
        rate=args.rate,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        bad_rate=args.bad_rate,
        seed=args.seed,
        chaos_window_s=args.chaos_window,
        catch_up_timeout_s=args.timeout,
    )
    console.print(
        f"lake {work_dir / 'lake'}, state {local_dir}, Kafka {settings.kafka_bootstrap_servers}"
    )
    try:
        report = run(settings, config, work_dir=work_dir)
        print_report(report)
    finally:
        if not args.keep:
            console.print(stop_pipeline(keep_services=False).strip(), highlight=False)
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
