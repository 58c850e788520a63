"""Silver's micro-batch and streaming query: validated observations, quarantine + DLQ,
deduplication and sliding-window features.

One streaming query per source reads `bronze/<source>_raw` and, in `foreachBatch`,
1. validates every record (silver.validate); bad ones go to
   `silver/<source>_quarantine` with a reason code and to the `<source>-dlq` topic;
2. deduplicates good ones (silver.classify: on the event id, or on (key, event_time)): the
   first bronze offset wins, and later copies go to `silver/<source>_duplicates`; the rest
   land in `silver/<source>_observations`;
3. marks observations older than the watermark as too late for features, in
   `silver/<source>_late`. The watermark is per Kafka partition, as Flink's: the latest event
   time each partition brought in earlier batches, the earliest of those, minus the
   contract's watermark; a partition with no rows in the last ten batches stops holding it
   back, and it never goes down. (A backfill reads partitions at different paces: with one
   latest event time over all of them, a partition behind the others would be all late.);
4. merges the on-time observations into the statistics of the open windows
   (periscope.windows: count, mean, M2, min, max, first/last, slope co-moments; counts,
   sums, distinct values, category counts) and upserts every window they touch into
   `silver/<source>_features` on (key, window_start), and publishes it to `<source>-features`;
5. appends a ledger row to `silver/<source>_batches` (the audit's and the watermark's source).

Spark streams bronze and parses and validates each micro-batch in one job, collected to the
driver as Arrow (a micro-batch is small; `maxFilesPerTrigger` bounds it). The driver
deduplicates (DuckDB, against earlier observations read with delta-rs), keeps the open
windows' statistics (rebuilt from the observations table after a restart) and commits the
results with delta-rs, each commit carrying the Delta app transaction (query id, batch id),
so every write is idempotent per micro-batch. Every decision depends only on the batch and
on earlier batches, so a batch replayed after a crash writes exactly what it would have
written. Kafka publishing (DLQ, features) is at least once.
The same function runs over a whole bronze table as a batch (`backfill`).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from periscope import Settings
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.lake import append_once, merge_once, read_delta
from periscope.messages import Publisher, json_messages
from periscope.metrics import record_silver_batch
from periscope.windows import (
    WindowAggregations,
    WindowState,
    feature_columns,
    interval_micros,
    interval_seconds,
)
from spark_streaming.silver.classify import (
    DUPLICATE,
    LATE,
    OBSERVATION,
    QUARANTINED,
    classify,
    dedupe_keys,
)
from spark_streaming.silver.columns import (
    SILVER_TABLES,
    observation_columns,
    spark_schema,
    write_columns,
)
from spark_streaming.silver.validate import validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = [
    "BatchProcessor",
    "SilverTables",
    "ensure_silver_tables",
    "process_batch",
    "run_silver",
    "start_silver",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SilverTables:
    """Where one source's silver query reads and writes."""

    source: str
    bronze: str
    observations: str
    quarantine: str
    duplicates: str
    late: str
    features: str
    batches: str
    checkpoint: str
    dlq_topic: str
    features_topic: str

    @classmethod
    def for_contract(cls, settings: Settings, contract: SourceContract) -> SilverTables:
        def path(layer: str, entity: str) -> str:
            return settings.lake_path(contract.table(layer, entity))  # type: ignore[arg-type]

        return cls(
            source=contract.name,
            bronze=path("bronze", "raw"),
            observations=path("silver", "observations"),
            quarantine=path("silver", "quarantine"),
            duplicates=path("silver", "duplicates"),
            late=path("silver", "late"),
            features=path("silver", "features"),
            batches=path("silver", "batches"),
            checkpoint=settings.checkpoint_path(f"silver_{contract.name}"),
            dlq_topic=contract.topic("dlq"),
            features_topic=contract.topic("features"),
        )


def ensure_silver_tables(
    spark: SparkSession, tables: SilverTables, contract: SourceContract
) -> None:
    """Create the silver tables with explicit schemas unless they exist."""
    from delta.tables import DeltaTable

    for name in SILVER_TABLES:
        DeltaTable.createIfNotExists(spark).location(getattr(tables, name)).addColumns(
            spark_schema(contract, name)
        ).execute()


# --- one micro-batch -------------------------------------------------------------------------
_MICROSECOND = timedelta(microseconds=1)
# A Kafka partition with no observation in this many batches stops holding the watermark back.
_IDLE_AFTER_BATCHES = 10


def _micros(t: datetime) -> int:
    """Microseconds since the epoch (Delta's timestamp resolution); naive times are UTC."""
    return (t.replace(tzinfo=t.tzinfo or UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND


def _stamped(rows: pa.Table, columns: list[str], batch_id: int, now: datetime) -> pa.Table:
    """The named columns plus the batch stamp every silver row carries."""
    n = rows.num_rows
    return (
        rows.select(columns)
        .append_column("silver_batch_id", pa.array([batch_id] * n, pa.int64()))
        .append_column("processed_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))
    )


class BatchProcessor:
    """The `foreachBatch` function of one source's silver query.

    Spark parses and validates (one job per batch); the driver deduplicates, merges the
    batch's on-time readings into the open windows' statistics and commits with delta-rs:
    a delta-rs commit takes tens of milliseconds where a Spark Delta write or MERGE takes one
    to three seconds on a laptop, and every further Spark job costs about a second here.
    Every commit carries the Delta app transaction (app id, batch id), so a batch replayed
    after a crash skips what it already wrote.

    It remembers three things between batches so it need not re-read them every time: what
    the watermark needs (each Kafka partition's latest event time and last batch, and the
    highest watermark used), whether any row was ever too late, and the open windows'
    statistics. They are read from the batch ledger and the observations table after a
    restart, counting only batches before the current one, so a batch replayed after a
    restart sees exactly what it saw the first time.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        contract: SourceContract,
        tables: SilverTables,
        app_id: str | Callable[[], str],
        publish: bool = True,
    ) -> None:
        self.settings = settings
        self.contract = contract
        self.tables = tables
        self._app_id = app_id
        self.publish = publish
        self._delay = timedelta(seconds=interval_seconds(contract.window.watermark))
        self._size = timedelta(seconds=interval_seconds(contract.window.size))
        self._aggregations = WindowAggregations.of(contract)
        # Per Kafka partition: the latest event time and the last batch with an observation.
        self._partition_latest: dict[int, datetime] = {}
        self._partition_batch: dict[int, int] = {}
        self._watermark: datetime | None = None  # the highest one used so far (it never drops)
        self._any_late = False
        self._known_through: int | None = None  # the facts above cover batches < this id
        self._windows: WindowState | None = None
        self._publisher: Publisher | None = None
        self.phase_seconds: dict[str, float] = {}  # where the last batch spent its time
        self._phase_started = 0.0

    @property
    def app_id(self) -> str:
        return self._app_id if isinstance(self._app_id, str) else self._app_id()

    def _phase(self, name: str) -> None:
        """Close the current phase of the batch under `name` (for the batch's log line)."""
        now = time.perf_counter()
        self.phase_seconds[name] = now - self._phase_started
        self._phase_started = now

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        try:
            counts = self.process(batch, batch_id)
        except BaseException:
            self._windows = None  # may hold this batch's readings: rebuild from the tables
            raise
        if counts.get("bronze_rows"):
            log.info(
                "silver %s batch %d: %s in %.1f s (%s)",
                self.contract.name,
                batch_id,
                counts,
                time.perf_counter() - started,
                ", ".join(f"{k} {v:.1f}" for k, v in self.phase_seconds.items()),
            )

    def forget_windows(self) -> None:
        """Drop the open windows' statistics (a failed batch may have added to them): the next
        batch rebuilds them from the tables."""
        self._windows = None

    def _load_ledger_facts(self, batch_id: int) -> None:
        if self._known_through == batch_id:
            return
        ledger = read_delta(self.tables.batches, ["batch_id", "watermark", "late"])
        earlier = ledger.filter(pc.less(ledger["batch_id"], batch_id))
        self._watermark = pc.max(earlier["watermark"]).as_py()
        self._any_late = bool(pc.sum(earlier["late"]).as_py())
        seen = read_delta(
            self.tables.observations,
            ["partition", "event_time", "silver_batch_id"],
            pc.field("silver_batch_id") < batch_id,
        )
        self._partition_latest, self._partition_batch = {}, {}
        self._note_partitions(seen, seen["silver_batch_id"])
        self._known_through = batch_id

    def _note_partitions(self, observations: pa.Table, batch_ids: pa.Array | int) -> None:
        """Fold observations (and the batches they came in) into the per-partition facts."""
        if not observations.num_rows:
            return
        table = pa.table(
            {
                "partition": observations["partition"],
                "event_time": observations["event_time"],
                "batch": batch_ids
                if not isinstance(batch_ids, int)
                else pa.array([batch_ids] * observations.num_rows, pa.int64()),
            }
        )
        grouped = table.group_by("partition").aggregate([("event_time", "max"), ("batch", "max")])
        for partition, latest, batch in zip(
            grouped["partition"].to_pylist(),
            grouped["event_time_max"].to_pylist(),
            grouped["batch_max"].to_pylist(),
            strict=True,
        ):
            known = self._partition_latest.get(partition)
            self._partition_latest[partition] = latest if known is None else max(known, latest)
            self._partition_batch[partition] = max(self._partition_batch.get(partition, -1), batch)

    def _watermark_for(self, batch_id: int) -> datetime | None:
        """The watermark of batch `batch_id`, from earlier batches only (see the module doc)."""
        active = [
            latest
            for partition, latest in self._partition_latest.items()
            if self._partition_batch[partition] >= batch_id - _IDLE_AFTER_BATCHES
        ]
        candidate = min(active) - self._delay if active else None
        if self._watermark is None or (candidate is not None and candidate > self._watermark):
            return candidate
        return self._watermark

    def process(self, batch: DataFrame, batch_id: int) -> dict[str, int]:
        """Run silver on one micro-batch of bronze rows; returns the batch's counts."""
        self.start_batch()
        return self.process_validated(self._validate(batch), batch_id)

    def start_batch(self) -> None:
        """Start timing a batch's phases (validation, done by the caller, is the first)."""
        self.phase_seconds, self._phase_started = {}, time.perf_counter()

    def process_validated(self, validated: pa.Table, batch_id: int) -> dict[str, int]:
        """Silver after validation: `validated` holds what `_validate` returns for the batch's
        bronze rows (Spark's job, or `validate_arrow` on the direct engine); returns the counts.

        Call `start_batch` before validating, so the batch's log line times validation too.
        """
        if validated.num_rows == 0:
            return {"bronze_rows": 0}
        self._load_ledger_facts(batch_id)
        watermark = self._watermark_for(batch_id)
        self._phase("validate")

        parts = self._classify(validated, batch_id, watermark)
        self._phase("classify")

        now = datetime.now(UTC)
        self._append(parts, batch_id, watermark, now)
        self._phase("append")

        counts = {
            "bronze_rows": validated.num_rows,
            "observations": parts["observations"].num_rows,
            "quarantined": parts[QUARANTINED].num_rows,
            "duplicates": parts[DUPLICATE].num_rows,
            "late": parts[LATE].num_rows,
        }
        counts["windows_updated"] = self._update_features(
            parts[OBSERVATION], batch_id, watermark, now=now
        )
        if self.publish and parts[QUARANTINED].num_rows:
            self._publish_dead_letters(parts[QUARANTINED])
            self._phase("dlq")

        max_event = pc.max(parts["observations"]["event_time"]).as_py()
        self._write_ledger(counts, batch_id, max_event, watermark, now)
        self._phase("ledger")
        self._remember(batch_id, watermark, parts["observations"], late=bool(counts["late"]))
        record_silver_batch(
            self.contract.name,
            observations=counts["observations"],
            quarantine_reasons=parts[QUARANTINED]["reason"].to_pylist(),
        )
        return counts

    def _validate(self, batch: DataFrame) -> pa.Table:
        """The one Spark job: parse and validate every bronze row, collected as Arrow. Raw key
        and value bytes are kept only for quarantined rows (the rest do not need them)."""
        from pyspark.sql import functions as F

        extra = ["reason", "reason_detail"]
        parsed = [c for c in observation_columns(self.contract) if c not in extra]
        good = F.col("reason").isNull()
        return (
            validate(batch, self.contract)
            .select(
                *parsed,
                *extra,
                F.when(~good, F.col("key")).alias("key"),
                F.when(~good, F.col("value")).alias("value"),
            )
            .toArrow()
        )

    def _classify(
        self, validated: pa.Table, batch_id: int, watermark: datetime | None
    ) -> dict[str, pa.Table]:
        """The batch's rows by outcome (and `observations`: on time and late together).

        Earlier observations are read for the batch's span of event times only (file
        skipping); rows this batch wrote before a crash do not count as earlier.
        """
        keys = dedupe_keys(self.contract)
        good = pc.is_null(validated["reason"])
        times = pc.filter(validated["event_time"], good)
        earlier = pa.table({k: validated[k].slice(0, 0) for k in keys})
        if len(times):
            stamp = pa.timestamp("us", "UTC")
            lo, hi = (
                pa.scalar(pc.min(times).as_py(), stamp),
                pa.scalar(pc.max(times).as_py(), stamp),
            )
            earlier = read_delta(
                self.tables.observations,
                keys,
                (pc.field("silver_batch_id") != batch_id)
                & (pc.field("event_time") >= lo)
                & (pc.field("event_time") <= hi),
                # The table gains a file per batch: open only those that may hold the span.
                within={"event_time": (lo, hi)},
            )
        outcome = classify(validated, earlier, keys, watermark)

        def having(*outcomes: str) -> pa.Table:
            return validated.filter(pc.is_in(outcome, pa.array(outcomes)))

        return {
            QUARANTINED: having(QUARANTINED),
            DUPLICATE: having(DUPLICATE),
            LATE: having(LATE),
            OBSERVATION: having(OBSERVATION),
            "observations": having(OBSERVATION, LATE),
        }

    def _append(
        self, parts: dict[str, pa.Table], batch_id: int, watermark: datetime | None, now: datetime
    ) -> None:
        """Quarantine, duplicates, observations and late rows, each an idempotent append."""
        contract, tables = self.contract, self.tables
        late = parts[LATE]
        late = late.append_column(
            "watermark", pa.array([watermark] * late.num_rows, pa.timestamp("us", "UTC"))
        )
        writes = [
            (tables.quarantine, parts[QUARANTINED], "quarantine"),
            (tables.duplicates, parts[DUPLICATE], "duplicates"),
            (tables.observations, parts["observations"], "observations"),
            (tables.late, late, "late"),
        ]
        for path, rows, table in writes:
            columns = write_columns(contract, table)  # type: ignore[arg-type]
            append_once(
                path,
                _stamped(rows, columns, batch_id, now),
                app_id=self.app_id,
                version=batch_id,
            )

    def _write_ledger(
        self,
        counts: dict[str, int],
        batch_id: int,
        max_event: datetime | None,
        watermark: datetime | None,
        now: datetime,
    ) -> None:
        stamp = pa.timestamp("us", "UTC")
        ledger = pa.table(
            {
                "batch_id": [batch_id],
                **{name: [value] for name, value in counts.items()},
                "max_event_time": pa.array([max_event], stamp),
                "watermark": pa.array([watermark], stamp),
                "processed_at": pa.array([now], stamp),
            }
        )
        append_once(self.tables.batches, ledger, app_id=self.app_id, version=batch_id)

    def _remember(
        self, batch_id: int, watermark: datetime | None, observations: pa.Table, *, late: bool
    ) -> None:
        """What the next batch would otherwise read from the ledger and the observations."""
        self._watermark = watermark
        self._any_late = self._any_late or late
        self._note_partitions(observations, batch_id)
        self._known_through = batch_id + 1
        following = self._watermark_for(batch_id + 1)
        if self._windows is not None and following is not None:
            self._windows.forget_closed(_micros(following))

    def _update_features(
        self, on_time: pa.Table, batch_id: int, watermark: datetime | None, *, now: datetime
    ) -> int:
        """Merge on-time rows into their windows; upsert and publish every window they touch."""
        contract, tables, key = self.contract, self.tables, self.contract.key_field
        if not on_time.num_rows:
            if self._windows is not None and self._windows.through == batch_id:
                self._windows.through += 1  # nothing to add: still complete through this batch
            return 0
        windows = self._open_windows(batch_id, watermark)
        features = windows.add(on_time.select([key, "event_time", *self._aggregations.inputs]))
        self._phase("windows")
        # Every window holding a reading at t starts after t - size: bounds for file skipping.
        lo = pc.min(on_time["event_time"]).as_py() - self._size
        written = merge_once(
            tables.features,
            _stamped(features, feature_columns(contract), batch_id, now),
            keys=[key, "window_start"],
            app_id=self.app_id,
            version=batch_id,
            lower_bound=("window_start", lo),
        )
        self._phase("merge")
        # Published on every run of the batch, a replay's too: a crash after the MERGE but
        # before Kafka acknowledged the messages leaves a replay whose MERGE is skipped, and
        # its windows would otherwise never be published (at least once).
        if self.publish:
            self._send(tables.features_topic, json_messages(features, key))
            self._phase("publish")
        # A replayed batch's MERGE is skipped and reports nothing.
        return written or 0

    def _open_windows(self, batch_id: int, watermark: datetime | None) -> WindowState:
        """The statistics of the windows still open before `batch_id`, kept or rebuilt.

        Rebuilt (first batch, after a restart or a failed batch) from the on-time
        observations of earlier batches that lie in a window ending after the watermark.
        """
        if self._windows is not None and self._windows.through == batch_id:
            return self._windows
        contract, tables, key = self.contract, self.tables, self.contract.key_field
        where = pc.field("silver_batch_id") < batch_id
        if watermark is not None:
            where &= pc.field("event_time") > pa.scalar(
                watermark - self._size, pa.timestamp("us", "UTC")
            )
        coords = ["topic", "partition", "offset"]
        readings = read_delta(
            tables.observations,
            [key, "event_time", *self._aggregations.inputs, "silver_batch_id", *coords],
            where,
        )
        if self._any_late:  # rows marked too late never count in a window
            late = read_delta(tables.late, coords, pc.field("silver_batch_id") < batch_id)
            readings = readings.join(late, coords, join_type="left anti")
        self._windows = WindowState.rebuild(
            readings.drop_columns(coords),
            key,
            self._aggregations,
            self._size // _MICROSECOND,
            interval_micros(contract.window.slide),
            through=batch_id,
        )
        if watermark is not None:
            self._windows.forget_closed(_micros(watermark))
        log.info(
            "silver %s: %d open windows rebuilt from %d observations",
            contract.name,
            self._windows.windows.num_rows,
            readings.num_rows,
        )
        return self._windows

    def _publish_dead_letters(self, bad: pa.Table) -> None:
        n = bad.num_rows
        letters = (
            bad.select(["key", "reason", "reason_detail", "topic", "partition", "offset"])
            .add_column(1, "source", pa.array([self.contract.name] * n))
            .append_column("kafka_timestamp", bad["kafka_timestamp"])
            .append_column(
                "value_base64",
                pa.array(
                    [
                        None if v is None else base64.b64encode(v).decode()
                        for v in bad["value"].to_pylist()
                    ],
                    pa.string(),
                ),
            )
        )
        value_columns = [c for c in letters.column_names if c != "key"]
        self._send(
            self.tables.dlq_topic, json_messages(letters, "key", value_columns=value_columns)
        )

    def close(self) -> None:
        """Release the Kafka producer (a later batch would open a new one)."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def _send(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
        """At least once: the batch fails (and is replayed) unless Kafka acknowledged all."""
        if self._publisher is None:  # one producer for the query's life: metadata fetched once
            self._publisher = Publisher(self.settings, client_id="periscope-silver")
        self._publisher.publish(topic, messages)


def process_batch(
    batch: DataFrame,
    batch_id: int,
    *,
    settings: Settings,
    contract: SourceContract,
    tables: SilverTables,
    app_id: str,
    publish: bool = True,
) -> dict[str, int]:
    """Run silver on one micro-batch with a fresh processor (its facts read from the ledger)."""
    processor = BatchProcessor(
        settings=settings, contract=contract, tables=tables, app_id=app_id, publish=publish
    )
    try:
        return processor.process(batch, batch_id)
    finally:
        processor.close()


# --- the streaming query ---------------------------------------------------------------------
def start_silver(
    spark: SparkSession,
    settings: Settings,
    contract: SourceContract,
    tables: SilverTables,
    *,
    available_now: bool = False,
    max_files_per_trigger: int | None = None,
    publish: bool = True,
    processors: list[BatchProcessor] | None = None,
) -> StreamingQuery:
    """Start the silver query for one source (its own Spark session: MERGE tokens are per session).
    Its batch processor is appended to `processors`, for the caller to close once the query ends
    (the processor's Kafka producer otherwise outlives the query)."""
    if (Path(f"{tables.checkpoint}_direct") / "plans").is_dir():
        raise PeriscopeError(
            f"silver {contract.name}: the direct engine has run on this lake "
            f"({tables.checkpoint}_direct); the Spark query would replay what it did. Go on with "
            "`periscope silver run --engine direct`."
        )
    session = spark.newSession()
    ensure_silver_tables(session, tables, contract)
    app_id_holder: dict[str, str] = {}

    def app_id() -> str:
        # Stable across restarts of the same checkpoint, different for a new checkpoint, so a
        # fresh start (batch ids from 0 again) is not mistaken for replays of old batches.
        if "id" not in app_id_holder:
            metadata = session.read.json(f"{tables.checkpoint}/metadata").first()
            assert metadata is not None, f"no metadata in {tables.checkpoint}"
            query_id = metadata["id"]
            app_id_holder["id"] = f"silver-{contract.name}-{query_id}"
        return app_id_holder["id"]

    run_batch = BatchProcessor(
        settings=settings, contract=contract, tables=tables, app_id=app_id, publish=publish
    )
    if processors is not None:
        processors.append(run_batch)

    # Bounded by bytes (and by files when asked): the driver holds each micro-batch as Arrow.
    reader = session.readStream.format("delta").option(
        "maxBytesPerTrigger", settings.silver_spark_max_bytes_per_trigger
    )
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    writer = (
        reader.load(tables.bronze)
        .writeStream.queryName(f"silver_{contract.name}")
        .option("checkpointLocation", tables.checkpoint)
        .foreachBatch(run_batch)
    )
    writer = (
        writer.trigger(availableNow=True)
        if available_now
        else writer.trigger(processingTime=settings.stream_trigger_interval)
    )
    return writer.start()


def run_silver(
    settings: Settings,
    contracts: list[SourceContract],
    *,
    available_now: bool = False,
    max_files_per_trigger: int | None = None,
    spark: SparkSession | None = None,
) -> dict[str, int]:
    """Run one silver query per source; returns bronze rows processed per source in this run."""
    from spark_streaming.progress import follow_until_stopped, stop_on_signals
    from spark_streaming.session import build_spark_session

    processors: list[BatchProcessor] = []
    with stop_on_signals() as stop:  # a stop asked for during the slow start-up waits for it
        spark = spark or build_spark_session("periscope-silver", settings=settings)
        try:
            queries = [
                start_silver(
                    spark,
                    settings,
                    c,
                    SilverTables.for_contract(settings, c),
                    available_now=available_now,
                    max_files_per_trigger=max_files_per_trigger,
                    processors=processors,
                )
                for c in contracts
            ]
            processed = follow_until_stopped(queries, stop=stop)
        finally:
            for processor in processors:
                processor.close()
    return {c.name: processed[f"silver_{c.name}"] for c in contracts}
