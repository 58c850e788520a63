"""Silver without a JVM: bronze's Delta log read with plain Python, Arrow validation, the same
driver-side batch as the Spark query (`BatchProcessor.process_validated`).

Reading bronze incrementally works as Spark's Delta streaming source does. The first start
takes the table's snapshot at its latest version (files ordered by modification time, then
path); after that each new version's commit file (`_delta_log/<version>.json`) is read and its
`add` actions with `dataChange=true` are the new rows, in the commit's order. Compaction
(`periscope lake maintain`) commits its files with `dataChange=false`: they are skipped, and
the files they replace stay readable until vacuumed (a week at least), so a row is read once
however far silver is behind. A `remove` with `dataChange=true` (a delete) stops the engine:
bronze is append-only.

Exactly once across crashes: before a batch is processed, its plan (batch id, the files it
reads with their record counts, and where the next batch starts) is written to
`<checkpoint>/plans/<batch id>.json` (atomic rename, like Spark's offset log); when it is
done, `<checkpoint>/done/<batch id>` (like Spark's commit log). On start the last plan that is
not done is replayed with exactly the same files and batch id, and every write of the batch is
idempotent on the Delta app transaction (app id, batch id): what it already wrote is skipped.
The app id comes from `<checkpoint>/metadata` (a random id written once), so it is stable per
checkpoint and a new checkpoint is never taken for a replay of an old one.

A batch takes what bronze holds beyond the last plan, up to `silver_batch_records` records
(whole files): a backfill runs in big batches that amortise commits, a live stream in the
small ones that arrived since the last poll (every `silver_poll_seconds` when idle).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa

from periscope import Settings
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.metrics import BATCH_SECONDS, FILES_BEHIND, RECORDS_IN
from spark_streaming.silver.columns import SILVER_TABLES, ColumnType, table_columns
from spark_streaming.silver.process import BatchProcessor, SilverTables

if TYPE_CHECKING:
    from deltalake import DeltaTable

__all__ = [
    "BatchPlan",
    "BronzeFile",
    "BronzeLog",
    "DirectSilver",
    "PlanLog",
    "Position",
    "SilverCheckpointError",
    "arrow_schema",
    "commit_files",
    "ensure_silver_tables_direct",
    "plan_batch",
    "read_bronze_files",
    "run_silver_direct",
]

log = logging.getLogger("spark_streaming.silver")

Validate = Callable[[pa.Table, SourceContract], pa.Table]

# Plans and done marks kept in the checkpoint (Spark keeps 100 batches of its logs too).
PLANS_KEPT = 100
# Bronze columns validation reads (the rest of bronze's are not needed by silver).
_STAMP = pa.timestamp("us", tz="UTC")
BRONZE_READ_SCHEMA = pa.schema(
    [
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("kafka_timestamp", _STAMP),
        pa.field("ingest_time", _STAMP),
    ]
)


class SilverCheckpointError(PeriscopeError):
    """The direct engine's checkpoint and the tables or bronze's log do not fit together."""


# --- where a batch starts and what it reads ------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """How far the plans have read bronze: every file of the versions before `version`, and
    the first `index` files of `version`. `snapshot`: `version`'s files are the table's
    snapshot at that version (the first start), not the files its own commit added."""

    version: int
    index: int = 0
    snapshot: bool = False


@dataclass(frozen=True)
class BronzeFile:
    """One bronze data file a batch reads: its path relative to the table, its rows (from the
    log's statistics; -1 when unknown) and its partition values (bronze: `ingest_date`)."""

    path: str
    records: int
    partition_values: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPlan:
    """A batch, as written ahead of processing it: replayed as it is after a crash."""

    batch_id: int
    start: Position
    end: Position  # where the next batch starts
    files: tuple[BronzeFile, ...]

    @property
    def records(self) -> int:
        return sum(max(f.records, 0) for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BatchPlan:
        raw = json.loads(text)
        return cls(
            batch_id=int(raw["batch_id"]),
            start=Position(**raw["start"]),
            end=Position(**raw["end"]),
            files=tuple(BronzeFile(**f) for f in raw["files"]),
        )


def commit_files(lines: Iterable[str], *, version: int = -1) -> list[BronzeFile]:
    """The files one Delta commit added with new rows (`dataChange=true`), in the commit's order.

    Compaction's files (`dataChange=false`) hold rows already read; a data-changing `remove`
    would mean rows left bronze, which is append-only, so it is an error.

    >>> commit_files(['{"commitInfo": {}}',
    ...     '{"add": {"path": "d=1/a%20b.parquet", "dataChange": true, '
    ...     '"partitionValues": {"d": "1"}, "stats": "{\\\\"numRecords\\\\": 3}"}}',
    ...     '{"add": {"path": "c.parquet", "dataChange": false, "partitionValues": {}}}'])
    [BronzeFile(path='d=1/a b.parquet', records=3, partition_values={'d': '1'})]
    """
    files = []
    for line in lines:
        if not line.strip():
            continue
        action = json.loads(line)
        if "remove" in action and action["remove"].get("dataChange", True):
            raise SilverCheckpointError(
                f"bronze version {version} removes rows ({action['remove'].get('path')}): "
                "bronze is append-only and silver cannot take rows back"
            )
        add = action.get("add")
        if add is None or not add.get("dataChange", True):
            continue
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        files.append(
            BronzeFile(
                path=unquote(add["path"]),
                records=int(stats.get("numRecords", -1)),
                partition_values=dict(add.get("partitionValues") or {}),
            )
        )
    return files


def snapshot_files(table: DeltaTable) -> list[BronzeFile]:
    """Every file of a table's version, oldest first (modification time, then path: Spark's order)."""
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    partition_keys = [k for k in (actions[0] if actions else {}) if k.startswith("partition.")]
    actions.sort(key=lambda a: (a["modification_time"], a["path"]))
    return [
        BronzeFile(
            path=unquote(a["path"]),
            records=-1 if a.get("num_records") is None else int(a["num_records"]),
            partition_values={
                k.removeprefix("partition."): None if a[k] is None else str(a[k])
                for k in partition_keys
            },
        )
        for a in actions
    ]


class BronzeLog:
    """Bronze's Delta log, read incrementally: the newest version and each version's new files.

    A new version is found by probing for its commit file (a Delta commit is one atomic file
    creation), which costs one `stat` per poll however large the table grows.
    """

    def __init__(self, table_path: str) -> None:
        self.table_path = table_path
        self.log_dir = Path(table_path) / "_delta_log"
        self._latest: int | None = None
        self._files: dict[tuple[int, bool], list[BronzeFile]] = {}

    def _commit_path(self, version: int) -> Path:
        return self.log_dir / f"{version:020d}.json"

    def latest_version(self) -> int | None:
        """The newest committed version (None: no table yet)."""
        if self._latest is None:
            from deltalake import DeltaTable

            if not DeltaTable.is_deltatable(self.table_path):
                return None
            self._latest = DeltaTable(self.table_path).version()
        while self._commit_path(self._latest + 1).exists():
            self._latest += 1
        return self._latest

    def files(self, version: int, *, snapshot: bool) -> list[BronzeFile]:
        """The files `version` added with new rows, or (snapshot) all its table's files."""
        key = (version, snapshot)
        if key not in self._files:
            if snapshot:
                from deltalake import DeltaTable

                self._files[key] = snapshot_files(DeltaTable(self.table_path, version=version))
            else:
                path = self._commit_path(version)
                try:
                    lines = path.read_text().splitlines()
                except FileNotFoundError:
                    raise SilverCheckpointError(
                        f"bronze's commit {version} is gone from {self.log_dir} (log retention): "
                        "silver was stopped longer than the log is kept; start a new checkpoint"
                    ) from None
                self._files[key] = commit_files(lines, version=version)
        return self._files[key]

    def forget_before(self, version: int) -> None:
        """Drop cached file lists of versions a plan has passed."""
        for key in [k for k in self._files if k[0] < version]:
            del self._files[key]


def plan_batch(
    bronze: BronzeLog,
    start: Position,
    *,
    batch_id: int,
    through_version: int,
    max_records: int,
    max_files: int | None = None,
) -> tuple[BatchPlan | None, int]:
    """The next batch from `start`: whole files up to `max_records` rows (one file at least,
    even a larger one), read no further than `through_version`. Returns (the plan, or None when nothing is new;
    the files left after it, for the metrics).

    A plan's end passes the versions after its last file that added no rows, so an idle
    stretch of the log is not re-read by the next plan.
    """
    taken: list[BronzeFile] = []
    records = 0
    position = start
    full = False
    while position.version <= through_version and not full:
        files = bronze.files(position.version, snapshot=position.snapshot)
        while position.index < len(files):
            size = max(files[position.index].records, 0)
            if taken and (
                records + size > max_records or (max_files is not None and len(taken) >= max_files)
            ):
                full = True
                break
            taken.append(files[position.index])
            records += size
            position = Position(position.version, position.index + 1, position.snapshot)
        if position.index >= len(files):
            position = Position(position.version + 1)
    behind = 0
    if position.version <= through_version:
        behind = len(bronze.files(position.version, snapshot=position.snapshot)) - position.index
        behind += sum(
            len(bronze.files(v, snapshot=False))
            for v in range(position.version + 1, through_version + 1)
        )
    if not taken:
        return None, behind
    return BatchPlan(batch_id, start, position, tuple(taken)), behind


# --- the write-ahead plan log ---------------------------------------------------------------------
def _write_atomically(path: Path, text: str) -> None:
    """Write a file whole or not at all (temporary file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class PlanLog:
    """The direct engine's checkpoint: its app id, the batches planned and those done."""

    def __init__(self, checkpoint: str) -> None:
        self.root = Path(checkpoint)
        self.plans = self.root / "plans"
        self.done = self.root / "done"

    @property
    def app_id_suffix(self) -> str:
        """A random id written once per checkpoint (stable across restarts)."""
        metadata = self.root / "metadata"
        if not metadata.exists():
            _write_atomically(metadata, json.dumps({"id": str(uuid.uuid4())}))
        return str(json.loads(metadata.read_text())["id"])

    def is_fresh(self) -> bool:
        return not any(self.plans.glob("*.json"))

    def _ids(self, folder: Path, suffix: str = "") -> list[int]:
        names = (p.name.removesuffix(suffix) for p in folder.glob(f"*{suffix}") if p.is_file())
        return sorted(int(n) for n in names if n.isdigit())

    def last_plan(self) -> BatchPlan | None:
        ids = self._ids(self.plans, ".json")
        if not ids:
            return None
        return BatchPlan.from_json((self.plans / f"{ids[-1]:020d}.json").read_text())

    def is_done(self, batch_id: int) -> bool:
        return (self.done / f"{batch_id:020d}").exists()

    def write_plan(self, plan: BatchPlan) -> None:
        """Durably record a batch before it is processed (its replay reads exactly this)."""
        _write_atomically(self.plans / f"{plan.batch_id:020d}.json", plan.to_json())

    def mark_done(self, batch_id: int) -> None:
        _write_atomically(self.done / f"{batch_id:020d}", "")
        for folder, suffix in ((self.plans, ".json"), (self.done, "")):
            for old in self._ids(folder, suffix)[:-PLANS_KEPT]:
                (folder / f"{old:020d}{suffix}").unlink(missing_ok=True)

    def resume(self) -> tuple[BatchPlan | None, int, Position | None]:
        """(a planned batch to replay or None, the next batch id, where the next plan starts;
        None: a fresh checkpoint, which starts from bronze's snapshot)."""
        last = self.last_plan()
        if last is None:
            return None, 0, None
        if not self.is_done(last.batch_id):
            return last, last.batch_id, last.start
        return None, last.batch_id + 1, last.end


# --- tables and reads -------------------------------------------------------------------------
_ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "double": pa.float64(),
    "long": pa.int64(),
    "int": pa.int32(),
    "boolean": pa.bool_(),
    "timestamp": _STAMP,
    "binary": pa.binary(),
}


def arrow_schema(contract: SourceContract, table: str) -> pa.Schema:
    """A silver table's schema as Arrow: the same Delta schema `spark_schema` creates."""
    columns = [(c.name, c.type) for c in table_columns(contract, table)]  # type: ignore[arg-type]
    if table != "batches":
        columns += [("silver_batch_id", "long"), ("processed_at", "timestamp")]
    return pa.schema([pa.field(name, _ARROW_TYPES[kind]) for name, kind in columns])


def ensure_silver_tables_direct(tables: SilverTables, contract: SourceContract) -> None:
    """Create the silver tables with delta-rs unless they exist (no Spark session needed)."""
    from deltalake import DeltaTable

    for name in SILVER_TABLES:
        path = getattr(tables, name)
        if not DeltaTable.is_deltatable(path):
            DeltaTable.create(path, arrow_schema(contract, name), mode="ignore")


def read_bronze_files(table_path: str, files: Iterable[BronzeFile]) -> pa.Table:
    """The rows of the given bronze files, in their order, as `BRONZE_READ_SCHEMA` plus
    `ingest_date` (a partition value: it lives in the log, not in the file)."""
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        location = f.path if "://" in f.path else str(Path(table_path) / f.path)
        rows = pq.read_table(location, columns=BRONZE_READ_SCHEMA.names).cast(BRONZE_READ_SCHEMA)
        ingest_date = f.partition_values.get("ingest_date")
        parts.append(
            rows.append_column(
                "ingest_date",
                pa.repeat(pa.scalar(ingest_date, pa.string()), rows.num_rows).cast(pa.date32()),
            )
        )
    if not parts:
        schema = BRONZE_READ_SCHEMA.append(pa.field("ingest_date", pa.date32()))
        return schema.empty_table()
    return pa.concat_tables(parts)


# --- the loop ----------------------------------------------------------------------------------
@dataclass
class _Prefetched:
    plan: BatchPlan
    behind: int
    validated: Future[tuple[pa.Table, int, float]]


def _default_validate(bronze: pa.Table, contract: SourceContract) -> pa.Table:
    from spark_streaming.silver.validate_arrow import validate_arrow

    return validate_arrow(bronze, contract)


class DirectSilver:
    """One source's silver, batch by batch from bronze's log (no Spark)."""

    def __init__(
        self,
        settings: Settings,
        contract: SourceContract,
        tables: SilverTables,
        *,
        checkpoint: str | None = None,
        validate: Validate | None = None,
        publish: bool = True,
        max_records: int | None = None,
        max_files: int | None = None,
    ) -> None:
        self.settings = settings
        self.contract = contract
        self.tables = tables
        # Its own checkpoint beside Spark's: the two engines' batch ids and app ids differ.
        self.plan_log = PlanLog(checkpoint or f"{tables.checkpoint}_direct")
        self.validate = validate or _default_validate
        self.max_records = max_records or settings.silver_batch_records
        self.max_files = max_files
        self.bronze = BronzeLog(tables.bronze)
        ensure_silver_tables_direct(tables, contract)
        self._check_fresh_checkpoint()
        self.app_id = f"silver-{contract.name}-direct-{self.plan_log.app_id_suffix}"
        self.processor = BatchProcessor(
            settings=settings,
            contract=contract,
            tables=tables,
            app_id=self.app_id,
            publish=publish,
        )
        self._replay, self.next_batch_id, self.position = self.plan_log.resume()
        self._next: _Prefetched | None = None  # the next batch, read and validated ahead
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"silver-{contract.name}-read")
        self.processed = 0  # bronze rows in this run
        self.batches = 0

    def _check_fresh_checkpoint(self) -> None:
        """A new checkpoint on tables that already hold batches would count bronze twice."""
        from periscope.lake import row_count_or_zero

        if self.plan_log.is_fresh() and row_count_or_zero(self.tables.batches) > 0:
            raise SilverCheckpointError(
                f"silver {self.contract.name}: the tables already hold batches but the direct "
                f"engine's checkpoint {self.plan_log.root} is new: another engine (the Spark "
                "query) or checkpoint wrote them, and starting over would count bronze twice. Run "
                "the engine that wrote them, or start the direct engine on an empty lake."
            )

    def step(self, *, through_version: int | None = None) -> int | None:
        """Process the next batch (a planned one left unfinished first); returns its bronze rows,
        or None when bronze holds nothing new (up to `through_version`, when given).

        While bronze has more than one batch waiting (a backfill), the next batch is planned
        and its files read and validated in a thread while this one is processed: validation
        is Python (it holds the GIL), the rest is mostly DuckDB, Arrow and delta-rs (they let
        it go), so two cores share the work. The next plan is written only when its turn comes.
        """
        loading = None
        if self._replay is not None:
            plan, behind = self._replay, 0
            log.info(
                "silver %s: replaying planned batch %d (%d files)",
                self.contract.name,
                plan.batch_id,
                len(plan.files),
            )
        else:
            if self._next is not None:
                plan, behind, loading = self._next.plan, self._next.behind, self._next.validated
                self._next = None
            else:
                planned = self._plan(through_version)
                if planned is None:
                    return None
                plan, behind = planned
            self.plan_log.write_plan(plan)  # durable before anything of the batch is written
            if behind:
                self._prefetch(plan.end, plan.batch_id + 1, through_version)
        rows = self._process(plan, loading)
        self.plan_log.mark_done(plan.batch_id)
        self._replay = None
        self.position, self.next_batch_id = plan.end, plan.batch_id + 1
        self.bronze.forget_before(plan.end.version)
        return rows

    def _bound(self, through_version: int | None) -> int | None:
        latest = self.bronze.latest_version()
        if latest is None:
            return None
        return latest if through_version is None else min(latest, through_version)

    def _plan(self, through_version: int | None) -> tuple[BatchPlan, int] | None:
        """The next batch from `self.position` and the files left after it, or None."""
        bound = self._bound(through_version)
        if bound is None:
            return None
        if self.position is None:  # a fresh checkpoint: the table as it is now, then its commits
            self.position = Position(bound, 0, snapshot=True)
        plan, behind = plan_batch(
            self.bronze,
            self.position,
            batch_id=self.next_batch_id,
            through_version=bound,
            max_records=self.max_records,
            max_files=self.max_files,
        )
        FILES_BEHIND.labels("silver", self.contract.name).set(behind)
        if plan is None:
            if self.position.version <= bound:
                # Versions without new rows (compaction, metadata): move past them (in memory;
                # a restart reads them again from the last plan's end, and finds nothing again).
                self.position = Position(bound + 1)
            return None
        return plan, behind

    def _prefetch(self, start: Position, batch_id: int, through_version: int | None) -> None:
        bound = self._bound(through_version)
        assert bound is not None
        plan, behind = plan_batch(
            self.bronze,
            start,
            batch_id=batch_id,
            through_version=bound,
            max_records=self.max_records,
            max_files=self.max_files,
        )
        if plan is not None:
            self._next = _Prefetched(plan, behind, self._pool.submit(self._load, plan))

    def _load(self, plan: BatchPlan) -> tuple[pa.Table, int, float]:
        """(validated rows, bronze rows, seconds): read and validate a plan's files."""
        started = time.perf_counter()
        bronze = read_bronze_files(self.tables.bronze, plan.files)
        validated = self.validate(bronze, self.contract)
        return validated, bronze.num_rows, time.perf_counter() - started

    def _process(self, plan: BatchPlan, loading: Future[tuple[pa.Table, int, float]] | None) -> int:
        started = time.perf_counter()
        self.processor.start_batch()
        validated, rows, load_s = loading.result() if loading is not None else self._load(plan)
        try:
            counts = self.processor.process_validated(validated, plan.batch_id)
        except BaseException:
            self.processor.forget_windows()
            raise
        elapsed = time.perf_counter() - started
        self.processed += rows
        self.batches += 1
        RECORDS_IN.labels("silver", self.contract.name).inc(rows)
        if rows:
            BATCH_SECONDS.labels("silver", self.contract.name).observe(elapsed)
        log.info(
            "silver_%s (direct): batch %d, +%d rows (%d this run), %.0f rows/s: %s "
            "(read+validate %.2f%s, %s)",
            self.contract.name,
            plan.batch_id,
            rows,
            self.processed,
            rows / max(elapsed, 1e-9),
            counts,
            load_s,
            " ahead" if loading is not None else "",
            ", ".join(f"{k} {v:.2f}" for k, v in self.processor.phase_seconds.items()),
        )
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.processor.close()


def follow_direct(
    engines: list[DirectSilver],
    *,
    stop: threading.Event,
    available_now: bool = False,
    poll_seconds: float = 0.25,
) -> None:
    """Run the engines a batch each in turn until `stop` is set (checked between batches) or,
    with `available_now`, until each has caught up with the bronze version it found at the
    start; an idle round waits `poll_seconds`."""
    through = {id(e): e.bronze.latest_version() if available_now else None for e in engines}
    active = [e for e in engines if not (available_now and through[id(e)] is None)]
    while active and not stop.is_set():
        idle = True
        for engine in list(active):
            if stop.is_set():
                return
            rows = engine.step(through_version=through[id(engine)])
            if rows is not None:
                idle = False
            elif available_now:
                active.remove(engine)  # caught up
        if idle and not available_now:
            stop.wait(poll_seconds)


def run_silver_direct(
    settings: Settings,
    contracts: list[SourceContract],
    *,
    available_now: bool = False,
    max_files_per_trigger: int | None = None,
    max_records: int | None = None,
    validate: Validate | None = None,
    publish: bool = True,
) -> dict[str, int]:
    """Run silver for every source with the direct engine; bronze rows processed per source.

    Runs until SIGINT/SIGTERM (the batch in flight finishes and is marked done first) or,
    with `available_now`, until caught up with bronze as it was at the start.
    """
    from spark_streaming.progress import stop_on_signals

    engines: list[DirectSilver] = []
    with stop_on_signals() as stop:
        try:
            for contract in contracts:
                engines.append(
                    DirectSilver(
                        settings,
                        contract,
                        SilverTables.for_contract(settings, contract),
                        validate=validate,
                        publish=publish,
                        max_records=max_records,
                        max_files=max_files_per_trigger,
                    )
                )
            follow_direct(
                engines,
                stop=stop,
                available_now=available_now,
                poll_seconds=settings.silver_poll_seconds,
            )
        finally:
            for engine in engines:
                engine.close()
    return {e.contract.name: e.processed for e in engines}
