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
from dataclasses import dataclass
from datetime import timedelta
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

__all__ = ["SilverTables", "ensure_silver_tables", "process_batch", "run_silver", "start_silver"]

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


def _publish(df: DataFrame, settings: Settings, topic: str, key_col: str) -> None:
    from pyspark.sql import functions as F

    (
        df.select(
            F.col(key_col).cast("binary").alias("key"),
            F.to_json(F.struct(*df.columns)).alias("value"),
        )
        .write.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("topic", topic)
        .save()
    )


def _previous_watermark(
    spark: SparkSession, tables: SilverTables, contract: SourceContract, batch_id: int
):  # type: ignore[no-untyped-def]
    """Max event time of earlier batches minus the watermark delay (None before any data)."""
    from pyspark.sql import functions as F

    row = (
        spark.read.format("delta")
        .load(tables.batches)
        .where(F.col("batch_id") < batch_id)
        .agg(F.max("max_event_time").alias("m"))
        .first()
    )
    if row is None or row.m is None:
        return None
    return row.m - timedelta(seconds=interval_seconds(contract.window.watermark))


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
    """Run silver on one micro-batch of bronze rows; returns the batch's counts."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = batch.sparkSession
    key = contract.key_field
    now = F.current_timestamp()
    stamp = [F.lit(batch_id).cast("long").alias("silver_batch_id"), now.alias("processed_at")]

    validated = validate(batch, contract).persist()
    try:
        bronze_rows = validated.count()
        if bronze_rows == 0:
            return {"bronze_rows": 0}
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
        bounds = firsts.agg(
            F.min("event_time").alias("lo"), F.max("event_time").alias("hi")
        ).first()
        earlier = (
            spark.read.format("delta")
            .load(tables.observations)
            .where(
                (F.col("silver_batch_id") != batch_id)
                & F.col("event_time").between(bounds.lo, bounds.hi)
            )
            .select(key, "event_time")
        )
        new = firsts.join(earlier, [key, "event_time"], "left_anti").persist()
        duplicates = (
            ranked.where(F.col("_rank") > 1)
            .drop("_rank")
            .unionByName(firsts.join(earlier, [key, "event_time"], "left_semi"))
        )

        watermark = _previous_watermark(spark, tables, contract, batch_id)
        is_late = F.col("event_time") < F.lit(watermark) if watermark is not None else F.lit(False)
        late = new.where(is_late)
        on_time = new.where(~is_late)

        coords = ["topic", "partition", "offset", "kafka_timestamp"]
        _append(
            bad.select(
                *coords, "key", "value", "reason", "reason_detail", key, "event_time", *stamp
            ),
            tables.quarantine,
            app_id,
            batch_id,
        )
        _append(
            duplicates.select(*coords, key, "event_time", *stamp),
            tables.duplicates,
            app_id,
            batch_id,
        )
        _append(
            new.select(*observation_columns(contract), *stamp),
            tables.observations,
            app_id,
            batch_id,
        )
        _append(
            late.select(
                *coords,
                key,
                "event_time",
                F.lit(watermark).cast("timestamp").alias("watermark"),
                *stamp,
            ),
            tables.late,
            app_id,
            batch_id,
        )

        windows_updated = _update_features(
            spark, on_time, settings, contract, tables, app_id, batch_id, publish
        )
        if publish:
            _publish_dead_letters(bad, settings, contract, tables)

        counts = {
            "bronze_rows": bronze_rows,
            "observations": new.count(),
            "quarantined": bad.count(),
            "duplicates": duplicates.count(),
            "late": late.count(),
            "windows_updated": windows_updated,
        }
        max_event = new.agg(F.max("event_time")).first()[0]
        ledger = spark.createDataFrame(
            [(batch_id, *counts.values(), max_event, watermark)],
            "batch_id long, bronze_rows long, observations long, quarantined long, duplicates long, "
            "late long, windows_updated long, max_event_time timestamp, watermark timestamp",
        ).withColumn("processed_at", now)
        _append(ledger, tables.batches, app_id, batch_id)
        new.unpersist()
        return counts
    finally:
        validated.unpersist()


def _update_features(
    spark: SparkSession,
    on_time: DataFrame,
    settings: Settings,
    contract: SourceContract,
    tables: SilverTables,
    app_id: str,
    batch_id: int,
    publish: bool,
) -> int:
    """Recompute the windows on-time rows touch, from every on-time observation in them."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    key = contract.key_field
    touched = (
        assign_windows(on_time.select(key, "event_time"), contract.window)
        .select(key, "window_start", "window_end")
        .distinct()
        .persist()
    )
    try:
        span = touched.agg(
            F.min("window_start").alias("lo"), F.max("window_end").alias("hi")
        ).first()
        if span.lo is None:
            return 0
        late = spark.read.format("delta").load(tables.late).select("topic", "partition", "offset")
        readings = (
            spark.read.format("delta")
            .load(tables.observations)
            .where((F.col("event_time") >= span.lo) & (F.col("event_time") < span.hi))
            .join(touched.select(key).distinct(), key, "left_semi")
            .join(late, ["topic", "partition", "offset"], "left_anti")
        )
        windowed = assign_windows(readings, contract.window).join(
            touched.select(key, "window_start"), [key, "window_start"], "left_semi"
        )
        features = (
            window_features(windowed, contract)
            .select(
                *feature_columns(contract),
                F.lit(batch_id).cast("long").alias("silver_batch_id"),
                F.current_timestamp().alias("processed_at"),
            )
            .persist()
        )
        updated = features.count()
        # MERGE takes its idempotency token from the session, not from writer options.
        spark.conf.set("spark.databricks.delta.write.txnAppId", app_id)
        spark.conf.set("spark.databricks.delta.write.txnVersion", str(batch_id))
        try:
            (
                DeltaTable.forPath(spark, tables.features)
                .alias("t")
                .merge(
                    features.alias("s"), f"t.{key} = s.{key} AND t.window_start = s.window_start"
                )
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
        finally:
            spark.conf.unset("spark.databricks.delta.write.txnAppId")
            spark.conf.unset("spark.databricks.delta.write.txnVersion")
        if publish:
            _publish(features.drop("silver_batch_id"), settings, tables.features_topic, key)
        features.unpersist()
        return updated
    finally:
        touched.unpersist()


def _publish_dead_letters(
    bad: DataFrame, settings: Settings, contract: SourceContract, tables: SilverTables
) -> None:
    from pyspark.sql import functions as F

    letters = bad.select(
        F.col("key"),
        F.lit(contract.name).alias("source"),
        "reason",
        "reason_detail",
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
        F.base64("value").alias("value_base64"),
    )
    (
        letters.select(
            F.col("key"),
            F.to_json(F.struct(*[c for c in letters.columns if c != "key"])).alias("value"),
        )
        .write.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("topic", tables.dlq_topic)
        .save()
    )


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
            query_id = session.read.json(f"{tables.checkpoint}/metadata").first()["id"]
            app_id_holder["id"] = f"silver-{contract.name}-{query_id}"
        return app_id_holder["id"]

    def run_batch(batch: DataFrame, batch_id: int) -> None:
        counts = process_batch(
            batch,
            batch_id,
            settings=settings,
            contract=contract,
            tables=tables,
            app_id=app_id(),
            publish=publish,
        )
        if counts.get("bronze_rows"):
            log.info("silver %s batch %d: %s", contract.name, batch_id, counts)

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
    from spark_streaming.progress import follow
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
    try:
        processed = follow(queries)
    except KeyboardInterrupt:
        log.info("stopping silver queries (Ctrl-C)")
        for query in queries:
            query.stop()
        processed = follow(queries)
    return {c.name: processed[f"silver_{c.name}"] for c in contracts}
