"""Bronze: every Kafka record of `<source>-raw` lands in Delta `bronze/<source>_raw`, exactly once.

Bronze parses nothing and drops nothing: the value is kept as bytes (malformed JSON and
invalid UTF-8 included) with its key, topic, partition, offset and Kafka timestamp.
Exactly-once comes from the checkpoint (Kafka offsets per micro-batch) together with the
Delta sink, which records each batch id in its log and skips a batch it has already
committed when a restarted query replays it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from periscope import Settings
from periscope.contracts import SourceContract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = [
    "BRONZE_COLUMNS",
    "STATS_COLUMNS",
    "BronzeTarget",
    "ensure_bronze_table",
    "read_kafka",
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
) -> DataFrame:
    """A streaming read of one topic from the earliest offset, failing loudly on data loss."""
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option(
            "startingOffsets", "earliest"
        )  # only used on the first run; then the checkpoint rules
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


def start_bronze(
    spark: SparkSession,
    settings: Settings,
    target: BronzeTarget,
    *,
    available_now: bool = False,
    max_offsets_per_trigger: int | None = None,
) -> StreamingQuery:
    """Start the bronze query for one source: continuous, or until caught up (`available_now`)."""
    ensure_bronze_table(spark, target.table_path)
    writer = (
        to_bronze(
            read_kafka(
                spark, settings, target.topic, max_offsets_per_trigger=max_offsets_per_trigger
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
    from spark_streaming.progress import follow_until_stopped
    from spark_streaming.session import build_spark_session

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
    landed = follow_until_stopped(queries)
    return {contract.name: landed[f"bronze_{contract.name}"] for contract in contracts}
