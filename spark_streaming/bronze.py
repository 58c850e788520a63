"""Bronze: every Kafka record of `<source>-raw` lands in Delta `bronze/<source>_raw`, exactly once.

Bronze parses nothing and drops nothing: the value is kept as bytes (malformed JSON and
invalid UTF-8 included) with its key, topic, partition, offset and Kafka timestamp.
Exactly-once comes from the checkpoint (Kafka offsets per micro-batch) together with the
Delta sink, which records each batch id in its log and skips a batch it has already
committed when a restarted query replays it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from periscope import Settings
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = [
    "BRONZE_COLUMNS",
    "STATS_COLUMNS",
    "BronzeTarget",
    "ensure_bronze_table",
    "read_kafka",
    "resume_offsets",
    "run_bronze",
    "start_bronze",
    "to_bronze",
]

log = logging.getLogger(__name__)

BRONZE_COLUMNS = (
    "key",
    "value",
    "topic",
    "partition",
    "offset",
    "kafka_timestamp",
    "ingest_time",
    "ingest_date",
)


@dataclass(frozen=True)
class BronzeTarget:
    """Where one source's bronze query reads and writes."""

    source: str
    topic: str
    table_path: str
    checkpoint: str

    @classmethod
    def for_contract(cls, settings: Settings, contract: SourceContract) -> BronzeTarget:
        return cls(
            source=contract.name,
            topic=contract.topic("raw"),
            table_path=settings.lake_path(contract.table("bronze", "raw")),
            checkpoint=settings.checkpoint_path(f"bronze_{contract.name}"),
        )


def to_bronze(kafka_records: DataFrame) -> DataFrame:
    """Kafka source rows -> bronze rows: raw bytes and coordinates, plus when they landed."""
    from pyspark.sql import functions as F

    return kafka_records.select(
        F.col("key"),
        F.col("value"),
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.current_timestamp().alias("ingest_time"),
        F.to_date(F.current_timestamp()).alias("ingest_date"),
    )


def read_kafka(
    spark: SparkSession,
    settings: Settings,
    topic: str,
    *,
    max_offsets_per_trigger: int | None = None,
    starting_offsets: str = "earliest",
) -> DataFrame:
    """A streaming read of one topic (from the earliest offset by default), failing loudly on data loss."""
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", topic)
        # Only used on the first run; then the checkpoint rules.
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", "true")
        # Bigger fetches: the default 1 MiB per partition makes a backlog a long chain of round trips.
        .option("kafka.max.partition.fetch.bytes", str(8 * 1024 * 1024))
        .option("kafka.fetch.max.bytes", str(64 * 1024 * 1024))
        .option(
            "maxOffsetsPerTrigger",
            str(max_offsets_per_trigger or settings.bronze_max_offsets_per_trigger),
        )
        .load()
    )


# Statistics only where they help (offset and time lookups): collecting them for the
# raw key/value bytes costs about a third of bronze's throughput and skips nothing.
STATS_COLUMNS = "topic,partition,offset,kafka_timestamp,ingest_time"


def ensure_bronze_table(spark: SparkSession, table_path: str) -> None:
    """Create the bronze table (schema, partitioning, properties) unless it exists."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import (
        BinaryType,
        DateType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    schema = StructType(
        [
            StructField("key", BinaryType()),
            StructField("value", BinaryType()),
            StructField("topic", StringType(), nullable=False),
            StructField("partition", IntegerType(), nullable=False),
            StructField("offset", LongType(), nullable=False),
            StructField("kafka_timestamp", TimestampType()),
            StructField("ingest_time", TimestampType(), nullable=False),
            StructField("ingest_date", DateType(), nullable=False),
        ]
    )
    (
        DeltaTable.createIfNotExists(spark)
        .location(table_path)
        .addColumns(schema)
        .partitionedBy("ingest_date")
        .property("delta.dataSkippingStatsColumns", STATS_COLUMNS)
        .property("delta.appendOnly", "true")  # bronze is a ledger: rows are never changed
        .execute()
    )


def _checkpoint_offsets(checkpoint: str, topic: str) -> dict[int, int] | None:
    """The end offsets of the last micro-batch a local checkpoint planned (None: no checkpoint)."""
    folder = Path(checkpoint) / "offsets"
    batches = sorted((int(p.name) for p in folder.glob("*") if p.name.isdigit()), reverse=True)
    if not batches:
        return None
    # Lines: the version, the batch metadata, then one offsets JSON per source.
    sources = (folder / str(batches[0])).read_text().splitlines()[2:]
    for line in sources:
        offsets = json.loads(line)
        if topic in offsets:
            return {int(p): int(o) for p, o in offsets[topic].items()}
    return None


def resume_offsets(settings: Settings, target: BronzeTarget) -> str:
    """Spark's `startingOffsets` for a table the direct writer may also have written.

    With a checkpoint, the checkpoint rules, unless the table holds offsets past what the
    checkpoint planned (the direct engine ran since): that is an error, not a duplicate. With
    no checkpoint but rows in the table, resume after the last offset landed per partition.
    """
    from deltalake import DeltaTable

    from spark_streaming.bronze_direct import app_id, landed_offsets

    if "://" in target.table_path or not DeltaTable.is_deltatable(target.table_path):
        return "earliest"  # a new table (or a cluster's: Spark's checkpoint alone decides)
    table = DeltaTable(target.table_path)
    planned = _checkpoint_offsets(target.checkpoint, target.topic)
    if planned is not None:
        for partition, end in planned.items():
            mark = table.transaction_version(app_id(target.table_path, target.topic, partition))
            if mark is not None and mark >= end:
                raise PeriscopeError(
                    f"{target.topic}[{partition}]: bronze holds offsets up to {mark}, past the "
                    f"{end} that the Spark checkpoint {target.checkpoint} planned: the direct "
                    "engine wrote since. Remove that checkpoint to resume from the table."
                )
        return "earliest"
    landed = landed_offsets(table, target.topic)
    if not landed:
        return "earliest"
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    partitions = admin.list_topics(target.topic, timeout=30).topics[target.topic].partitions
    # -2 is Spark's "earliest" for a partition with nothing landed yet.
    starting = {str(p): landed[p] + 1 if p in landed else -2 for p in sorted(partitions)}
    log.info(
        "bronze %s: no checkpoint; resuming after the table's rows: %s", target.source, starting
    )
    return json.dumps({target.topic: starting})


def start_bronze(
    spark: SparkSession,
    settings: Settings,
    target: BronzeTarget,
    *,
    available_now: bool = False,
    max_offsets_per_trigger: int | None = None,
) -> StreamingQuery:
    """Start the bronze query for one source: continuous, or until caught up (`available_now`)."""
    starting_offsets = resume_offsets(settings, target)
    ensure_bronze_table(spark, target.table_path)
    writer = (
        to_bronze(
            read_kafka(
                spark,
                settings,
                target.topic,
                max_offsets_per_trigger=max_offsets_per_trigger,
                starting_offsets=starting_offsets,
            )
        )
        .writeStream.format("delta")
        .queryName(f"bronze_{target.source}")
        .outputMode("append")
        .option("checkpointLocation", target.checkpoint)
        .partitionBy("ingest_date")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=settings.stream_trigger_interval)
    log.info("bronze %s: %s -> %s", target.source, target.topic, target.table_path)
    return writer.start(target.table_path)


def run_bronze(
    settings: Settings,
    contracts: list[SourceContract],
    *,
    available_now: bool = False,
    max_offsets_per_trigger: int | None = None,
    spark: SparkSession | None = None,
) -> dict[str, int]:
    """Run one bronze query per source; returns the Kafka records each landed in this run.

    With `available_now` the queries stop once caught up; otherwise they run until
    interrupted (Ctrl-C stops them between micro-batches) or one of them fails.
    """
    from spark_streaming.progress import follow_until_stopped, stop_on_signals
    from spark_streaming.session import build_spark_session

    with stop_on_signals() as stop:  # a stop asked for during the slow start-up waits for it
        spark = spark or build_spark_session("periscope-bronze", settings=settings)
        queries = [
            start_bronze(
                spark,
                settings,
                BronzeTarget.for_contract(settings, contract),
                available_now=available_now,
                max_offsets_per_trigger=max_offsets_per_trigger,
            )
            for contract in contracts
        ]
        landed = follow_until_stopped(queries, stop=stop)
    return {contract.name: landed[f"bronze_{contract.name}"] for contract in contracts}
