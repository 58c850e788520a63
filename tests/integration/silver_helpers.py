"""Helpers for the silver tests: bronze-shaped DataFrames and Arrow tables, temporary silver
tables, and one micro-batch run by either engine (Spark's validation, or `validate_arrow`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from ingest.producer import encode_record
from periscope.contracts import SourceContract
from periscope.settings import Settings
from spark_streaming.bronze_direct import PartitionBuffer, bronze_rows
from spark_streaming.silver import BatchProcessor, SilverTables, ensure_silver_tables
from spark_streaming.silver.direct import ensure_silver_tables_direct

# The silver engines every guarantee is tested on (`periscope silver run --engine ...`).
ENGINES = ("spark", "direct")

BRONZE_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "kafka_timestamp timestamp, ingest_time timestamp, ingest_date date"
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def wire(
    station: str, hours: float, contract: SourceContract, **values: float | None
) -> tuple[bytes, bytes]:
    """A good wire record `hours` after T0; measures default to mid-range values."""
    record: dict[str, object] = {
        "station_id": station,
        "timestamp": (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for m in contract.measures:
        record[m.name] = values.get(m.name, (m.valid_min + m.valid_max) / 2)
    return station.encode(), encode_record(record)


def bronze_frame(
    spark, messages: list[tuple[bytes | None, bytes]], *, first_offset: int = 0, topic: str = "t"
):
    now = datetime.now(UTC)
    rows = [
        (key, value, topic, 0, first_offset + i, now, now, now.date())
        for i, (key, value) in enumerate(messages)
    ]
    return spark.createDataFrame(rows, BRONZE_SCHEMA)


def bronze_arrow(
    messages: list[tuple[bytes | None, bytes]], *, first_offset: int = 0, topic: str = "t"
) -> pa.Table:
    """The rows `bronze_frame` makes, as Arrow (what the direct engine reads from bronze)."""
    buffer = PartitionBuffer()
    for i, (key, value) in enumerate(messages):
        buffer.add(key, value, 0, first_offset + i, int(datetime.now(UTC).timestamp() * 1000))
    return bronze_rows(topic, buffer, datetime.now(UTC))


def silver_tables(
    spark, tmp_path: Path, settings: Settings, contract: SourceContract, engine: str = "spark"
) -> SilverTables:
    tables = SilverTables.for_contract(
        settings.model_copy(update={"lake_root": str(tmp_path / "lake")}), contract
    )
    if engine == "spark":
        ensure_silver_tables(spark, tables, contract)
    else:
        ensure_silver_tables_direct(tables, contract)
    return tables


def run_batch(
    engine: str,
    spark,
    messages: list[tuple[bytes | None, bytes]],
    batch_id: int,
    *,
    settings: Settings,
    contract: SourceContract,
    tables: SilverTables,
    app_id: str,
    publish: bool = True,
    first_offset: int = 0,
) -> dict[str, int]:
    """One silver micro-batch of these records with a fresh processor, validated by Spark (the
    Spark query's `foreachBatch`) or by `validate_arrow` (the direct engine's batch)."""
    processor = BatchProcessor(
        settings=settings, contract=contract, tables=tables, app_id=app_id, publish=publish
    )
    try:
        if engine == "spark":
            return processor.process(
                bronze_frame(spark, messages, first_offset=first_offset), batch_id
            )
        from spark_streaming.silver.validate_arrow import validate_arrow

        processor.start_batch()
        bronze = bronze_arrow(messages, first_offset=first_offset)
        return processor.process_validated(validate_arrow(bronze, contract), batch_id)
    finally:
        processor.close()
