"""Helpers for the silver tests: bronze-shaped DataFrames and temporary silver tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.producer import encode_record
from periscope.contracts import SourceContract
from periscope.settings import Settings
from spark_streaming.silver import SilverTables, ensure_silver_tables

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


def silver_tables(
    spark, tmp_path: Path, settings: Settings, contract: SourceContract
) -> SilverTables:
    tables = SilverTables.for_contract(
        settings.model_copy(update={"lake_root": str(tmp_path / "lake")}), contract
    )
    ensure_silver_tables(spark, tables, contract)
    return tables
