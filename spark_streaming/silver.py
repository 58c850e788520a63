"""Silver: validated observations, quarantine + DLQ, deduplication and sliding-window features.

One streaming query per source reads `bronze/<source>_raw` and, in `foreachBatch`,
1. validates every record (spark_streaming.validation); bad ones go to
   `silver/<source>_quarantine` with a reason code and to the `<source>-dlq` topic;
2. deduplicates good ones on (station_id, event_time): the first bronze offset wins, and
   later copies go to `silver/<source>_duplicates`; the rest land in `silver/<source>_observations`;
3. marks observations older than the watermark (max event time of earlier batches minus
   the contract's watermark) as too late for features, in `silver/<source>_late`;
4. recomputes every window the on-time observations touch from the observations table
   and upserts it into `silver/<source>_features` on (station_id, window_start), and
   publishes it to `<source>-features`;
5. appends a ledger row to `silver/<source>_batches` (the audit's and the watermark's source).

Every Delta write is idempotent per micro-batch (txnAppId/txnVersion), and every decision
depends only on the batch and on earlier batches, so a batch replayed after a crash writes
exactly what it would have written. Kafka publishing (DLQ, features) is at least once.
The same function runs over a whole bronze table as a batch (`backfill`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from periscope import Settings
from periscope.contracts import SourceContract
from spark_streaming.features import (
    assign_windows,
    feature_columns,
    interval_seconds,
    window_features,
)
from spark_streaming.validation import observation_columns, validate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery
    from pyspark.sql.types import StructType

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


# --- table schemas ---------------------------------------------------------------------------
def _schemas(contract: SourceContract) -> dict[str, StructType]:
    from pyspark.sql.types import (
        BinaryType,
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    key = contract.key_field
    coords = [
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("kafka_timestamp", TimestampType()),
    ]
    batch = [
        StructField("silver_batch_id", LongType()),
        StructField("processed_at", TimestampType()),
    ]
    return {
        "observations": StructType(
            [
                StructField(key, StringType()),
                StructField("event_time", TimestampType()),
                *[StructField(m, DoubleType()) for m in contract.measure_names],
                StructField("qa_missing_fields", IntegerType()),
                StructField("qa_out_of_range_fields", IntegerType()),
                *coords,
                *batch,
            ]
        ),
        "quarantine": StructType(
            [
                *coords,
                StructField("key", BinaryType()),
                StructField("value", BinaryType()),
                StructField("reason", StringType()),
                StructField("reason_detail", StringType()),
                StructField(key, StringType()),
                StructField("event_time", TimestampType()),
                *batch,
            ]
        ),
        "duplicates": StructType(
            [
                *coords,
                StructField(key, StringType()),
                StructField("event_time", TimestampType()),
                *batch,
            ]
        ),
        "late": StructType(
            [
                *coords,
                StructField(key, StringType()),
                StructField("event_time", TimestampType()),
                StructField("watermark", TimestampType()),
                *batch,
            ]
        ),
        "features": StructType(
            [
                StructField(key, StringType()),
                StructField("window_start", TimestampType()),
                StructField("window_end", TimestampType()),
                StructField("reading_count", LongType()),
                *[StructField(c, DoubleType()) for c in feature_columns(contract)[4:]],
                *batch,
            ]
        ),
        "batches": StructType(
            [
                StructField("batch_id", LongType()),
                StructField("bronze_rows", LongType()),
                StructField("observations", LongType()),
                StructField("quarantined", LongType()),
                StructField("duplicates", LongType()),
                StructField("late", LongType()),
                StructField("windows_updated", LongType()),
                StructField("max_event_time", TimestampType()),
                StructField("watermark", TimestampType()),
                StructField("processed_at", TimestampType()),
            ]
        ),
    }


def ensure_silver_tables(
    spark: SparkSession, tables: SilverTables, contract: SourceContract
) -> None:
    """Create the silver tables with explicit schemas unless they exist."""
    from delta.tables import DeltaTable

    for name, schema in _schemas(contract).items():
        DeltaTable.createIfNotExists(spark).location(getattr(tables, name)).addColumns(
            schema
        ).execute()


# --- one micro-batch -------------------------------------------------------------------------
def _append(df: DataFrame, path: str, app_id: str, batch_id: int) -> None:
    """Append once per (app_id, batch_id): a replayed batch is skipped by Delta itself."""
    df.write.format("delta").mode("append").option("txnAppId", app_id).option(
        "txnVersion", batch_id
    ).save(path)


def _publish(
    df: DataFrame, settings: Settings, topic: str, key_col: str, *, key_in_value: bool = True
) -> None:
    """Each row as JSON to a Kafka topic, keyed by `key_col` (at least once)."""
    from pyspark.sql import functions as F

    value_columns = [c for c in df.columns if key_in_value or c != key_col]
    (
        df.select(
            F.col(key_col).cast("binary").alias("key"),
            F.to_json(F.struct(*value_columns)).alias("value"),
        )
        .write.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("topic", topic)
        .save()
    )


class BatchProcessor:
    """The `foreachBatch` function of one source's silver query.

    It remembers two facts between batches so it need not re-read them every time: the
    latest event time seen (for the watermark) and whether any row was ever too late.
    Both are first read from the batch ledger, counting only batches before the current
    one, so a batch replayed after a restart sees exactly what it saw the first time.
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
        self._max_event_time: datetime | None = None
        self._any_late = False
        self._known_through: int | None = None  # the facts above cover batches < this id

    @property
    def app_id(self) -> str:
        return self._app_id if isinstance(self._app_id, str) else self._app_id()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        counts = self.process(batch, batch_id)
        if counts.get("bronze_rows"):
            log.info("silver %s batch %d: %s", self.contract.name, batch_id, counts)

    def _load_ledger_facts(self, spark: SparkSession, batch_id: int) -> None:
        from pyspark.sql import functions as F

        if self._known_through == batch_id:
            return
        row = (
            spark.read.format("delta")
            .load(self.tables.batches)
            .where(F.col("batch_id") < batch_id)
            .agg(F.max("max_event_time").alias("max_event"), F.sum("late").alias("late"))
            .first()
        )
        assert row is not None  # an aggregate always has one row
        self._max_event_time = row.max_event
        self._any_late = bool(row.late)
        self._known_through = batch_id

    def process(self, batch: DataFrame, batch_id: int) -> dict[str, int]:
        """Run silver on one micro-batch of bronze rows; returns the batch's counts."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        spark = batch.sparkSession
        contract, tables, app_id = self.contract, self.tables, self.app_id
        key = contract.key_field
        now = F.current_timestamp()
        stamp = [F.lit(batch_id).cast("long").alias("silver_batch_id"), now.alias("processed_at")]
        coords = ["topic", "partition", "offset", "kafka_timestamp"]

        validated = validate(batch, contract).persist()
        cached = [validated]
        try:
            # One pass for the batch's totals and the event-time range of its good rows.
            totals = validated.agg(
                F.count(F.lit(1)).alias("rows"),
                F.count("reason").alias("bad"),
                F.min(F.when(F.col("reason").isNull(), F.col("event_time"))).alias("lo"),
                F.max(F.when(F.col("reason").isNull(), F.col("event_time"))).alias("hi"),
            ).first()
            assert totals is not None  # an aggregate always has one row
            if totals.rows == 0:
                return {"bronze_rows": 0}
            self._load_ledger_facts(spark, batch_id)
            watermark = self._max_event_time - self._delay if self._max_event_time else None

            bad = validated.where(F.col("reason").isNotNull())
            good = validated.where(F.col("reason").isNull())
            # Deduplicate: the first bronze offset of a (station, event time) wins, in this batch and
            # against earlier batches (rows this batch wrote before a crash do not count as earlier).
            ranked = good.withColumn(
                "_rank",
                F.row_number().over(
                    Window.partitionBy(key, "event_time").orderBy("partition", "offset")
                ),
            )
            firsts = ranked.where(F.col("_rank") == 1).drop("_rank")
            earlier = (
                spark.read.format("delta")
                .load(tables.observations)
                .where(
                    (F.col("silver_batch_id") != batch_id)
                    & F.col("event_time").between(totals.lo, totals.hi)
                )
                .select(key, "event_time")
            )
            is_late = (
                F.col("event_time") < F.lit(watermark) if watermark is not None else F.lit(False)
            )
            new = (
                firsts.join(earlier, [key, "event_time"], "left_anti")
                .withColumn("_late", is_late)
                .persist()
            )
            cached.append(new)
            summary = new.agg(
                F.count(F.lit(1)).alias("rows"),
                F.count_if("_late").alias("late"),
                F.max("event_time").alias("max_event"),
            ).first()
            assert summary is not None  # an aggregate always has one row
            counts = {
                "bronze_rows": totals.rows,
                "observations": summary.rows,
                "quarantined": totals.bad,
                "duplicates": totals.rows - totals.bad - summary.rows,
                "late": summary.late,
            }
            # Empty writes are skipped: a Delta commit costs about half a second here.
            if counts["quarantined"]:
                _append(
                    bad.select(
                        *coords,
                        "key",
                        "value",
                        "reason",
                        "reason_detail",
                        key,
                        "event_time",
                        *stamp,
                    ),
                    tables.quarantine,
                    app_id,
                    batch_id,
                )
            if counts["duplicates"]:
                duplicates = (
                    ranked.where(F.col("_rank") > 1)
                    .drop("_rank")
                    .unionByName(firsts.join(earlier, [key, "event_time"], "left_semi"))
                )
                _append(
                    duplicates.select(*coords, key, "event_time", *stamp),
                    tables.duplicates,
                    app_id,
                    batch_id,
                )
            if counts["observations"]:
                _append(
                    new.select(*observation_columns(contract), *stamp),
                    tables.observations,
                    app_id,
                    batch_id,
                )
            if counts["late"]:
                _append(
                    new.where("_late").select(
                        *coords, key, "event_time", F.lit(watermark).alias("watermark"), *stamp
                    ),
                    tables.late,
                    app_id,
                    batch_id,
                )
            any_late = self._any_late or bool(counts["late"])
            on_time = new.where(~F.col("_late"))
            counts["windows_updated"] = (
                self._update_features(spark, on_time, batch_id, any_late=any_late)
                if counts["observations"] > counts["late"]
                else 0
            )
            if self.publish and counts["quarantined"]:
                self._publish_dead_letters(bad)

            ledger = spark.createDataFrame(
                [(batch_id, *counts.values(), summary.max_event, watermark)],
                "batch_id long, bronze_rows long, observations long, quarantined long, duplicates long, "
                "late long, windows_updated long, max_event_time timestamp, watermark timestamp",
            ).withColumn("processed_at", now)
            _append(ledger, tables.batches, app_id, batch_id)

            # What the next batch would read from the ledger.
            if summary.max_event is not None and (
                self._max_event_time is None or summary.max_event > self._max_event_time
            ):
                self._max_event_time = summary.max_event
            self._any_late = any_late
            self._known_through = batch_id + 1
            return counts
        finally:
            for frame in cached:
                frame.unpersist(blocking=False)

    def _update_features(
        self, spark: SparkSession, on_time: DataFrame, batch_id: int, *, any_late: bool
    ) -> int:
        """Recompute the windows on-time rows touch, from every on-time observation in them."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        contract, tables, key = self.contract, self.tables, self.contract.key_field
        touched = assign_windows(on_time.select(key, "event_time"), contract.window).select(
            key, "window_start"
        )
        span = touched.agg(
            F.min("window_start").alias("lo"), F.max("window_start").alias("hi")
        ).first()
        assert span is not None  # an aggregate always has one row
        hi = span.hi + timedelta(seconds=interval_seconds(contract.window.size))
        readings = (
            spark.read.format("delta")
            .load(tables.observations)
            .where((F.col("event_time") >= span.lo) & (F.col("event_time") < hi))
            .join(on_time.select(key).distinct(), key, "left_semi")
        )
        if any_late:  # rows marked too late never count in a window
            late = (
                spark.read.format("delta").load(tables.late).select("topic", "partition", "offset")
            )
            readings = readings.join(late, ["topic", "partition", "offset"], "left_anti")
        windowed = assign_windows(readings, contract.window).join(
            touched.distinct(), [key, "window_start"], "left_semi"
        )
        features = window_features(windowed, contract).select(
            *feature_columns(contract),
            F.lit(batch_id).cast("long").alias("silver_batch_id"),
            F.current_timestamp().alias("processed_at"),
        )
        if self.publish:
            features = features.persist()  # written to Delta and to Kafka: compute once
        try:
            # MERGE takes its idempotency token from the session, not from writer options. The
            # literal bound on window_start lets Delta skip files of windows no batch can touch.
            spark.conf.set("spark.databricks.delta.write.txnAppId", self.app_id)
            spark.conf.set("spark.databricks.delta.write.txnVersion", str(batch_id))
            try:
                metrics = (
                    DeltaTable.forPath(spark, tables.features)
                    .alias("t")
                    .merge(
                        features.alias("s"),
                        f"t.window_start >= timestamp'{span.lo.isoformat(sep=' ')}' "
                        f"AND t.{key} = s.{key} AND t.window_start = s.window_start",
                    )
                    .whenMatchedUpdateAll()
                    .whenNotMatchedInsertAll()
                    .execute()
                    .first()
                )
            finally:
                spark.conf.unset("spark.databricks.delta.write.txnAppId")
                spark.conf.unset("spark.databricks.delta.write.txnVersion")
            if self.publish:
                _publish(
                    features.drop("silver_batch_id"), self.settings, tables.features_topic, key
                )
            # A replayed batch's MERGE is skipped by Delta and reports nothing.
            return int(metrics["num_affected_rows"]) if metrics is not None else 0
        finally:
            if self.publish:
                features.unpersist(blocking=False)

    def _publish_dead_letters(self, bad: DataFrame) -> None:
        from pyspark.sql import functions as F

        letters = bad.select(
            F.col("key"),
            F.lit(self.contract.name).alias("source"),
            "reason",
            "reason_detail",
            "topic",
            "partition",
            "offset",
            "kafka_timestamp",
            F.base64("value").alias("value_base64"),
        )
        _publish(letters, self.settings, self.tables.dlq_topic, "key", key_in_value=False)


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
    return processor.process(batch, batch_id)


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
) -> StreamingQuery:
    """Start the silver query for one source (its own Spark session: MERGE tokens are per session)."""
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

    reader = session.readStream.format("delta")
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
    from spark_streaming.progress import follow_until_stopped
    from spark_streaming.session import build_spark_session

    spark = spark or build_spark_session("periscope-silver", settings=settings)
    queries = [
        start_silver(
            spark,
            settings,
            c,
            SilverTables.for_contract(settings, c),
            available_now=available_now,
            max_files_per_trigger=max_files_per_trigger,
        )
        for c in contracts
    ]
    processed = follow_until_stopped(queries)
    return {c.name: processed[f"silver_{c.name}"] for c in contracts}
