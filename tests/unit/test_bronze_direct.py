"""The direct bronze writer's pure parts: Kafka records -> bronze rows, and offset bookkeeping."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from prometheus_client import REGISTRY

from periscope.contracts import SourceContract, get_contract
from periscope.metrics import consumer_groups
from periscope.settings import Settings
from spark_streaming.bronze import BRONZE_COLUMNS, STATS_COLUMNS, BronzeTarget
from spark_streaming.bronze_direct import (
    BRONZE_ARROW_SCHEMA,
    BronzeOffsetError,
    DirectBronzeWriter,
    PartitionBuffer,
    app_id,
    bronze_rows,
    ensure_bronze_table_direct,
    last_offsets,
    start_offset,
)

LANDED_AT = datetime(2024, 3, 1, 23, 59, 59, 123456, tzinfo=UTC)


def _buffer() -> PartitionBuffer:
    buffer = PartitionBuffer()
    buffer.add(b"s1", b'{"ok": 1}', 0, 10, 1_700_000_000_123)
    buffer.add(None, b"\xff\xfe not utf-8", 1, 4, -1)  # no key, no timestamp
    buffer.add(b"s2", b"{not json", 0, 11, 1_700_000_000_124)
    buffer.add(b"s3", None, 1, 5, 0)  # a tombstone
    return buffer


def test_bronze_rows_keep_bytes_and_coordinates():
    rows = bronze_rows("weather-raw", _buffer(), LANDED_AT)
    assert rows.schema == BRONZE_ARROW_SCHEMA
    assert tuple(rows.column_names) == BRONZE_COLUMNS
    got = rows.to_pylist()
    assert [r["value"] for r in got] == [b'{"ok": 1}', b"\xff\xfe not utf-8", b"{not json", None]
    assert [r["key"] for r in got] == [b"s1", None, b"s2", b"s3"]
    assert [(r["partition"], r["offset"]) for r in got] == [(0, 10), (1, 4), (0, 11), (1, 5)]
    assert {r["topic"] for r in got} == {"weather-raw"}
    assert got[0]["kafka_timestamp"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert got[1]["kafka_timestamp"] is None  # Kafka's -1: no timestamp
    assert got[3]["kafka_timestamp"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert {r["ingest_time"] for r in got} == {LANDED_AT}
    assert {r["ingest_date"] for r in got} == {date(2024, 3, 1)}


def test_bronze_rows_date_is_utc_whatever_the_clock_zone():
    from zoneinfo import ZoneInfo

    landed = datetime(2024, 3, 2, 1, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 00:00 UTC
    rows = bronze_rows("t", _buffer(), landed).to_pylist()
    assert rows[0]["ingest_date"] == date(2024, 3, 2)
    landed = datetime(
        2024, 3, 2, 0, 30, tzinfo=ZoneInfo("Europe/Berlin")
    )  # 23:30 UTC the day before
    assert bronze_rows("t", _buffer(), landed).to_pylist()[0]["ingest_date"] == date(2024, 3, 1)


def test_empty_buffer_gives_empty_rows():
    rows = bronze_rows("t", PartitionBuffer(), LANDED_AT)
    assert rows.num_rows == 0 and rows.schema == BRONZE_ARROW_SCHEMA


def test_last_offsets_are_the_marks_per_partition():
    buffer = _buffer()
    assert last_offsets(buffer.partitions, buffer.offsets) == {0: 11, 1: 5}
    assert last_offsets([], []) == {}


def test_app_id_names_table_topic_and_partition():
    assert (
        app_id("s3a://lake/bronze/taxi_raw/", "taxi-raw", 0) == "bronze-direct:taxi_raw:taxi-raw:0"
    )
    assert app_id("/lake/bronze/taxi_raw", "taxi-raw", 0) != app_id(
        "/lake/bronze/taxi_raw", "taxi-raw", 1
    )


@pytest.mark.parametrize(
    ("recorded", "low", "high", "expected"),
    [
        (None, 0, 0, 0),  # new table, empty topic
        (None, 0, 50, 0),  # new table: from the earliest
        (None, 30, 50, 30),  # older records expired before this table existed
        (49, 0, 50, 50),  # caught up: the next record to come
        (9, 0, 50, 10),
        (29, 30, 50, 30),  # landed up to the first record still kept
    ],
)
def test_start_offset_resumes_after_the_table_mark(recorded, low, high, expected):
    assert start_offset(recorded, low=low, high=high, topic="t", partition=2) == expected


def test_a_mark_beyond_the_topic_end_is_an_error():
    with pytest.raises(BronzeOffsetError, match=r"t\[2\].*up to 50.*end offset is 50"):
        start_offset(50, low=0, high=50, topic="t", partition=2)


def test_records_deleted_before_landing_are_an_error_not_a_skip():
    with pytest.raises(BronzeOffsetError, match=r"offsets 10\.\.29 were deleted"):
        start_offset(9, low=30, high=50, topic="t", partition=2)


def test_direct_table_has_the_spark_tables_shape_and_keeps_marks(tmp_path):
    path = str(tmp_path / "bronze" / "weather_raw")
    table = ensure_bronze_table_direct(path)
    assert table.metadata().partition_columns == ["ingest_date"]
    assert table.metadata().configuration == {
        "delta.appendOnly": "true",
        "delta.dataSkippingStatsColumns": STATS_COLUMNS,
    }
    marks = [Transaction(app_id(path, "weather-raw", p), o) for p, o in {0: 11, 1: 5}.items()]
    write_deltalake(
        table,
        bronze_rows("weather-raw", _buffer(), LANDED_AT),
        mode="append",
        commit_properties=CommitProperties(app_transactions=marks),
    )
    reopened = ensure_bronze_table_direct(path)  # opens, does not recreate
    assert reopened.version() == 1
    assert DeltaTable(path).transaction_version(app_id(path, "weather-raw", 1)) == 5
    assert DeltaTable(path).to_pyarrow_table().num_rows == 4


def _sample(name: str, source: str) -> float:
    return REGISTRY.get_sample_value(name, {"stage": "bronze", "source": source}) or 0.0


def test_the_writers_group_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path))
    assert Settings().bronze_group == "periscope-bronze"
    monkeypatch.setenv("PERISCOPE_BRONZE_GROUP", "lake-b-bronze")
    settings = Settings()
    target = BronzeTarget.for_contract(settings, get_contract("weather"))
    assert DirectBronzeWriter(settings, [target])._consumer_config()["group.id"] == "lake-b-bronze"
    explicit = DirectBronzeWriter(settings, [target], group_id="bench")
    assert explicit._consumer_config()["group.id"] == "bench"
    # Its lag is exported under the group it joins.
    assert consumer_groups(settings)["bronze"] == "lake-b-bronze"


def test_a_commit_exports_records_in_and_out_and_the_batch_duration(tmp_path):
    """The metrics the Spark bronze exports, from the direct writer's own commits."""
    weather = get_contract("weather")
    # A source of its own, so other tests' bronze series do not move these.
    contract = SourceContract(**{**weather.__dict__, "name": "unit_direct_metrics"})
    settings = Settings(lake_root=str(tmp_path))  # type: ignore[call-arg]
    target = BronzeTarget.for_contract(settings, contract)
    writer = DirectBronzeWriter(settings, [target])
    names = (
        "periscope_stage_records_in_total",
        "periscope_stage_records_out_total",
        "periscope_stage_batch_duration_seconds_count",
        "periscope_stage_batch_duration_seconds_sum",
    )
    before = {n: _sample(n, contract.name) for n in names}
    writer.buffers[target.topic] = _buffer()
    writer._buffer_started = time.monotonic() - 0.5  # the batch's first record came 0.5 s ago
    writer.flush()
    writer.flush()  # nothing buffered: no batch
    moved = {n: _sample(n, contract.name) - before[n] for n in names}
    assert moved["periscope_stage_records_in_total"] == 4
    assert moved["periscope_stage_records_out_total"] == 4
    assert moved["periscope_stage_batch_duration_seconds_count"] == 1
    assert 0.5 <= moved["periscope_stage_batch_duration_seconds_sum"] < 30
    assert DeltaTable(target.table_path).to_pyarrow_table().num_rows == 4
