"""`periscope lake maintain` on real Delta tables: small files compacted, rows and time travel kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from periscope.maintenance import closed_partitions, maintain_lake, maintain_table, plan_compaction
from periscope.settings import Settings

START = datetime(2024, 1, 1, tzinfo=UTC)


def _windows(first: int, count: int) -> pa.Table:
    """Feature windows of one station, `count` 10-minute windows from window `first`."""
    return pa.table(
        {
            "station_id": ["denver"] * count,
            "window_start": [
                START + timedelta(minutes=10 * i) for i in range(first, first + count)
            ],
            "temperature_mean": [float(i) for i in range(first, first + count)],
        }
    )


def _rows(table: DeltaTable) -> list[tuple]:
    rows = table.to_pyarrow_table().to_pylist()
    return sorted((r["station_id"], r["window_start"], r["temperature_mean"]) for r in rows)


@pytest.fixture
def small_files_table(tmp_path) -> str:
    """Ten appends of three windows each: ten small files, as MERGE rounds leave them."""
    path = str(tmp_path / "silver" / "weather_features")
    for i in range(10):
        write_deltalake(path, _windows(3 * i, 3), mode="append")
    return path


def test_maintain_compacts_small_files_and_keeps_rows_and_time_travel(small_files_table):
    before = DeltaTable(small_files_table)
    rows_before, version_before = _rows(before), before.version()

    result = maintain_table(small_files_table, retention_hours=7 * 24)

    after = DeltaTable(small_files_table)
    assert result.files_before == 10
    assert result.files_after == len(after.get_add_actions(flatten=True)) < 10
    assert result.compaction == "rewritten sorted by window_start"
    assert _rows(after) == rows_before  # compaction never changes the data
    # The week's retention removes nothing yet: the previous version still reads in full.
    assert result.files_vacuumed == 0
    assert _rows(DeltaTable(small_files_table, version=version_before)) == rows_before
    assert _rows(DeltaTable(small_files_table, version=0)) == _rows_of(_windows(0, 3))
    # The compaction is one commit that changes no data, so streams reading the table skip it.
    last = after.history(1)[0]
    assert last["operation"] == "OPTIMIZE"


def _rows_of(table: pa.Table) -> list[tuple]:
    return sorted(
        (r["station_id"], r["window_start"], r["temperature_mean"]) for r in table.to_pylist()
    )


def test_sorted_compaction_leaves_files_of_disjoint_time_ranges(tmp_path):
    """Out-of-order appends end up in files whose window_start ranges do not overlap, so a MERGE
    of the newest windows skips the closed ones."""
    path = str(tmp_path / "gold")
    for first in (9, 0, 6, 3, 12, 15, 21, 18):
        write_deltalake(path, _windows(first * 100, 300), mode="append")
    table = DeltaTable(path)
    plan = plan_compaction(
        columns=["station_id", "window_start"],
        partition_columns=[],
        file_sizes=[1] * 8,
        file_partitions=[None] * 8,
        today=date(2024, 1, 2),
    )
    table.optimize.z_order([plan.sort_column], target_size=4096)  # small files: several ranges
    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist()
    ranges = sorted((a["min.window_start"], a["max.window_start"]) for a in actions)
    assert len(ranges) > 1
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_vacuum_without_retention_would_break_time_travel(small_files_table):
    """What the retention protects: with none, the compacted files of old versions go."""
    maintain_table(small_files_table, retention_hours=7 * 24)
    dry = maintain_table(
        small_files_table, retention_hours=0, enforce_retention=False, dry_run=True
    )
    assert dry.files_vacuumed == 10  # the ten small files the compaction replaced
    assert (
        DeltaTable(small_files_table).version() == dry.version_before
    )  # a dry run commits nothing
    maintain_table(small_files_table, retention_hours=0, enforce_retention=False)
    with pytest.raises(Exception):  # noqa: B017 - delta-rs/arrow raise their own errors
        DeltaTable(small_files_table, version=0).to_pyarrow_table()


def test_a_retention_under_a_week_is_refused_by_the_table(small_files_table):
    with pytest.raises(Exception, match="(?i)retention"):
        maintain_table(small_files_table, retention_hours=1, dry_run=True)


def test_bronze_compacts_closed_partitions_only(tmp_path):
    path = str(tmp_path / "bronze")
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        for i in range(3):
            write_deltalake(
                path,
                pa.table({"ingest_date": [day], "value": [i]}),
                mode="append",
                partition_by=["ingest_date"],
            )
    result = maintain_table(path, retention_hours=7 * 24, today=date(2024, 1, 3))
    files = pa.table(DeltaTable(path).get_add_actions(flatten=True)).column("partition.ingest_date")
    per_day = {d: files.to_pylist().count(d) for d in ("2024-01-01", "2024-01-02", "2024-01-03")}
    assert per_day == {"2024-01-01": 1, "2024-01-02": 1, "2024-01-03": 3}  # today's stays open
    assert result.compaction == "2 closed ingest_date partition(s)"
    assert DeltaTable(path).to_pyarrow_table().num_rows == 9


def test_plan_leaves_few_small_files_alone():
    plan = plan_compaction(
        columns=["station_id", "window_start"],
        partition_columns=[],
        file_sizes=[1000] * 3 + [1 << 20] * 20,
        file_partitions=[None] * 23,
        today=date(2024, 1, 1),
    )
    assert plan.kind == "none"
    assert closed_partitions(["2024-01-01"], date(2024, 1, 2)) == []  # one file: nothing to do


def test_maintain_lake_walks_every_table_and_dry_run_changes_nothing(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    for i in range(10):
        write_deltalake(str(lake / "silver" / "weather_features"), _windows(i, 1), mode="append")
    write_deltalake(str(lake / "gold" / "weather_predictions"), _windows(0, 2), mode="append")
    monkeypatch.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "x")
    monkeypatch.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "x")
    settings = Settings(lake_root=str(lake))  # type: ignore[call-arg]

    dry = maintain_lake(settings, dry_run=True)
    assert sorted((r.table, r.files_before, r.files_after) for r in dry) == [
        ("gold.weather_predictions", 1, 1),
        ("silver.weather_features", 10, 10),
    ]
    done = {r.table: r for r in maintain_lake(settings)}
    assert done["silver.weather_features"].files_after == 1
    assert done["gold.weather_predictions"].compaction.startswith("none")
    assert all(r.error is None for r in done.values())
