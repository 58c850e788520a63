"""`periscope lake maintain` on real Delta tables: small files compacted, rows and time travel kept."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import periscope.lake
from periscope.contracts import CONTRACTS
from periscope.errors import PeriscopeError
from periscope.lake import merge_rows
from periscope.maintenance import (
    CLOSED_AFTER,
    ChosenFilesRewritten,
    DataFile,
    _plan,
    _rewrite_closed,
    _sweep_leftovers,
    closed_partitions,
    maintain_lake,
    maintain_table,
    plan_compaction,
)
from periscope.settings import Settings
from periscope.windows.columns import interval_seconds

START = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(hours=6)  # ten files of three windows span a week: the older ones are closed


def _windows(first: int, count: int, value: float = 0.0) -> pa.Table:
    """Feature windows of one station, `count` windows STEP apart from window `first`."""
    return pa.table(
        {
            "station_id": ["denver"] * count,
            "window_start": [START + STEP * i for i in range(first, first + count)],
            "temperature_mean": [value + i for i in range(first, first + count)],
        }
    )


def _rows(table: DeltaTable) -> list[tuple]:
    rows = table.to_pyarrow_table().to_pylist()
    return sorted((r["station_id"], r["window_start"], r["temperature_mean"]) for r in rows)


def _merged(path: str, rows: pa.Table, version: int = 0) -> None:
    """A stream's MERGE round of `rows`: the table is then an upserted one, whose open files
    only closed-file compaction leaves alone. New windows go into a file of their own."""
    merge_rows(path, rows, keys=["station_id", "window_start"], app_id="a-stream", version=version)


@pytest.fixture
def small_files_table(tmp_path) -> str:
    """Ten rounds of three windows each: ten small files, as MERGE rounds leave them."""
    path = str(tmp_path / "silver" / "weather_features")
    write_deltalake(path, _windows(0, 3))
    for i in range(1, 10):
        _merged(path, _windows(3 * i, 3), version=i)
    return path


def _last_commit(path: str) -> list[dict]:
    version = DeltaTable(path).version()
    log = Path(path) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_maintain_compacts_closed_small_files_and_keeps_rows_and_time_travel(small_files_table):
    before = DeltaTable(small_files_table)
    rows_before, version_before = _rows(before), before.version()

    result = maintain_table(small_files_table, retention_hours=7 * 24)

    after = DeltaTable(small_files_table)
    # Files 0-7 end more than a day before the newest window; 8 and 9 stay open.
    assert result.compaction == "8 closed file(s) rewritten sorted by window_start"
    assert (result.files_before, result.files_after) == (10, 3)
    assert len(after.get_add_actions(flatten=True)) == 3
    assert _rows(after) == rows_before  # compaction never changes the data
    # The week's retention removes nothing yet: the previous version still reads in full.
    assert result.files_vacuumed == 0
    assert _rows(DeltaTable(small_files_table, version=version_before)) == rows_before
    assert _rows(DeltaTable(small_files_table, version=0)) == _rows_of(_windows(0, 3))
    # One commit that changes no data (streams reading the table skip it): 8 removes, 1 add.
    actions = [a for a in _last_commit(small_files_table) if "add" in a or "remove" in a]
    assert sorted(next(iter(a)) for a in actions) == ["add"] + ["remove"] * 8
    assert all(not next(iter(a.values()))["dataChange"] for a in actions)


def test_closed_after_outlasts_every_contracts_watermark_and_window():
    """A window can change until its end passes the watermark; compaction waits longer."""
    for contract in CONTRACTS.values():
        spec = contract.window
        open_for = interval_seconds(spec.size) + interval_seconds(spec.watermark)
        assert CLOSED_AFTER.total_seconds() > open_for, contract.name


def _rows_of(table: pa.Table) -> list[tuple]:
    return sorted(
        (r["station_id"], r["window_start"], r["temperature_mean"]) for r in table.to_pylist()
    )


def test_closed_compaction_leaves_files_of_disjoint_time_ranges(tmp_path, monkeypatch):
    """Out-of-order appends end up in files whose window_start ranges do not overlap, so a MERGE
    of the newest windows skips the closed ones."""
    monkeypatch.setattr("periscope.maintenance.CLOSED_FILE_BYTES", 1 << 20)  # several files
    path = str(tmp_path / "gold")
    rng = np.random.default_rng(0)
    block = 20_000  # ~0.3 MB a file, incompressible values: the rewrite needs several 1 MiB files
    for first in (5, 0, 3, 1, 6, 2, 8, 7, 4):
        minutes = range(first * block, (first + 1) * block)
        write_deltalake(
            path,
            pa.table(
                {
                    "station_id": ["denver"] * block,
                    "window_start": [START + timedelta(minutes=m) for m in minutes],
                    "value": rng.random(block),
                }
            ),
            mode="append",
        )
    newest = START + timedelta(minutes=9 * block - 1)
    _merged(path, pa.table({"station_id": ["denver"], "window_start": [newest], "value": [0.5]}))
    result = maintain_table(path, retention_hours=7 * 24)
    assert result.compaction == "8 closed file(s) rewritten sorted by window_start"
    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist()
    ranges = sorted((a["min.window_start"], a["max.window_start"]) for a in actions)
    assert len(ranges) > 2  # the newest block's file and at least two rewritten ones
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert DeltaTable(path).to_pyarrow_table().num_rows == 9 * block


def test_compaction_loses_to_a_late_merge_of_a_file_it_chose_and_changes_nothing(
    small_files_table,
):
    table = DeltaTable(small_files_table)
    plan = _plan(table, START.date(), CLOSED_AFTER)
    assert plan.kind == "closed"
    late = _windows(1, 1, value=100.0)  # window 1 lives in file 0, which the plan rewrites
    merge_rows(small_files_table, late, keys=["station_id", "window_start"], app_id="silver",
               version=1, lower_bound=("window_start", START + STEP))  # fmt: skip
    rows_after_merge = _rows(DeltaTable(small_files_table))

    with pytest.raises(ChosenFilesRewritten):
        _rewrite_closed(table, plan.files, plan.sort_column)

    assert _rows(DeltaTable(small_files_table)) == rows_after_merge
    assert len(DeltaTable(small_files_table).get_add_actions(flatten=True)) == 10
    leftovers = sorted(p.name for p in Path(small_files_table).iterdir())
    assert len([n for n in leftovers if n.endswith(".parquet")]) == 11  # 10 + the MERGE's
    assert not [n for n in leftovers if n.startswith("_compaction")]


def test_compaction_commits_past_a_merge_of_open_windows_meanwhile(small_files_table):
    """The streams MERGE their open windows every second or two: compaction commits anyway."""
    table = DeltaTable(small_files_table)
    plan = _plan(table, START.date(), CLOSED_AFTER)
    merge_rows(small_files_table, _windows(29, 2, value=100.0), keys=["station_id", "window_start"],
               app_id="silver", version=1, lower_bound=("window_start", START + STEP * 29))  # fmt: skip

    _rewrite_closed(table, plan.files, plan.sort_column)

    rows = _rows(DeltaTable(small_files_table))
    assert len(rows) == 31 and ("denver", START + STEP * 30, 130.0) in rows
    # file 8, the MERGE's rewrite of file 9, and compaction's one file for files 0-7
    assert len(DeltaTable(small_files_table).get_add_actions(flatten=True)) == 3


def test_a_failure_after_the_commit_keeps_the_committed_files(small_files_table):
    """A post-commit hook (a checkpoint) can fail after the commit landed: the files it added
    must stay, or the table can no longer be read."""
    rows_before = _rows(DeltaTable(small_files_table))
    table = DeltaTable(small_files_table)
    plan = _plan(table, START.date(), CLOSED_AFTER)
    commit = table.create_write_transaction

    def commit_then_fail(*args, **kwargs):
        commit(*args, **kwargs)
        raise RuntimeError("post-commit hook failed")

    table.create_write_transaction = commit_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="post-commit"):
        _rewrite_closed(table, plan.files, plan.sort_column)

    after = DeltaTable(small_files_table)
    assert len(after.get_add_actions(flatten=True)) == 3  # the compaction landed
    assert _rows(after) == rows_before  # and every file it names is there


def test_a_sweep_deletes_what_a_killed_rewrite_left_and_nothing_else(
    small_files_table, monkeypatch
):
    table = DeltaTable(small_files_table)
    plan = _plan(table, START.date(), CLOSED_AFTER)

    def killed(*args, **kwargs):  # SIGKILL between the rename and the commit
        raise SystemExit(137)

    table.create_write_transaction = killed  # type: ignore[method-assign]
    monkeypatch.setattr("periscope.maintenance.shutil.rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        _rewrite_closed(table, plan.files, plan.sort_column)
    monkeypatch.undo()
    root = Path(small_files_table)
    (scratch,) = root.glob("_compaction-*")
    orphans = sorted(set(p.name for p in root.glob("*.parquet")) - _file_names(table))
    assert len(orphans) == 1  # the rewrite's file, moved but never committed

    assert _sweep_leftovers(DeltaTable(small_files_table), root) == 0  # too young: maybe running
    os.utime(scratch, (0, 0))
    assert _sweep_leftovers(DeltaTable(small_files_table), root) == 1

    assert not scratch.exists() and not (root / orphans[0]).exists()
    assert len(list(root.glob("*.parquet"))) == 10
    assert len(_rows(DeltaTable(small_files_table))) == 30


def _file_names(table: DeltaTable) -> set[str]:
    return set(pa.table(table.get_add_actions(flatten=True))["path"].to_pylist())


def test_a_merge_does_not_run_again_over_another_writer_of_its_app_id(
    small_files_table, monkeypatch
):
    """Two engines on one checkpoint: the one that lost must not put its batch over the other's."""
    keep_small = periscope.lake._keep_files_small
    calls = []

    def other_engine_meanwhile(table: DeltaTable) -> None:
        keep_small(table)
        calls.append(table.version())
        if len(calls) == 1:
            merge_rows(small_files_table, _windows(29, 1, value=200.0), app_id="silver",
                       keys=["station_id", "window_start"], version=6)  # fmt: skip

    monkeypatch.setattr(periscope.lake, "_keep_files_small", other_engine_meanwhile)
    with pytest.raises(PeriscopeError, match="second engine"):
        merge_rows(small_files_table, _windows(29, 1, value=100.0), app_id="silver",
                   keys=["station_id", "window_start"], version=5)  # fmt: skip

    after = DeltaTable(small_files_table)
    assert after.transaction_version("silver") == 6
    assert ("denver", START + STEP * 29, 229.0) in _rows(after)


def test_a_merge_that_loses_to_compaction_runs_again(small_files_table, monkeypatch):
    """A late record's MERGE read a file that compaction then replaced: it retries on the new
    version rather than failing the stream's batch."""
    keep_small = periscope.lake._keep_files_small
    calls = []

    def compact_meanwhile(table: DeltaTable) -> None:
        keep_small(table)
        calls.append(table.version())
        if len(calls) == 1:  # after the MERGE loaded its version, before it commits
            maintain_table(small_files_table, retention_hours=7 * 24)

    monkeypatch.setattr(periscope.lake, "_keep_files_small", compact_meanwhile)
    late = _windows(1, 1, value=100.0)
    merge_rows(small_files_table, late, keys=["station_id", "window_start"], app_id="silver",
               version=1, lower_bound=("window_start", START + STEP))  # fmt: skip

    assert len(calls) == 2 and calls[1] > calls[0]  # the second try read compaction's version
    rows = _rows(DeltaTable(small_files_table))
    assert len(rows) == 30
    assert ("denver", START + STEP, 101.0) in rows


def test_vacuum_without_retention_would_break_time_travel(small_files_table):
    """What the retention protects: with none, the compacted files of old versions go."""
    maintain_table(small_files_table, retention_hours=7 * 24)
    dry = maintain_table(
        small_files_table, retention_hours=0, enforce_retention=False, dry_run=True
    )
    assert dry.files_vacuumed == 8  # the eight closed files the compaction replaced
    assert (
        DeltaTable(small_files_table).version() == dry.version_before
    )  # a dry run commits nothing
    maintain_table(small_files_table, retention_hours=0, enforce_retention=False)
    with pytest.raises(Exception):  # noqa: B017 - delta-rs/arrow raise their own errors
        DeltaTable(small_files_table, version=0).to_pyarrow_table()


def test_a_retention_under_a_week_is_refused_by_the_table(small_files_table):
    with pytest.raises(Exception, match="(?i)retention"):
        maintain_table(small_files_table, retention_hours=1, dry_run=True)


def test_bronze_compacts_closed_partitions_and_a_busy_today(tmp_path):
    path = str(tmp_path / "bronze")
    files = {"2024-01-01": 3, "2024-01-02": 3, "2024-01-03": 3}
    for day, count in files.items():
        for i in range(count):
            write_deltalake(
                path,
                pa.table({"ingest_date": [day], "value": [i]}),
                mode="append",
                partition_by=["ingest_date"],
            )

    def per_day() -> dict[str, int]:
        days = pa.table(DeltaTable(path).get_add_actions(flatten=True))["partition.ingest_date"]
        return {d: days.to_pylist().count(d) for d in files}

    result = maintain_table(path, retention_hours=7 * 24, today=date(2024, 1, 3))
    assert per_day() == {"2024-01-01": 1, "2024-01-02": 1, "2024-01-03": 3}  # few today
    assert result.compaction == "2 ingest_date partition(s)"
    for i in range(5):  # today reaches MIN_SMALL_FILES: the stream only appends, so compact it
        write_deltalake(path, pa.table({"ingest_date": ["2024-01-03"], "value": [10 + i]}),
                        mode="append", partition_by=["ingest_date"])  # fmt: skip
    result = maintain_table(path, retention_hours=7 * 24, today=date(2024, 1, 3))
    assert per_day() == {"2024-01-01": 1, "2024-01-02": 1, "2024-01-03": 1}
    assert result.compaction == "1 ingest_date partition(s)"
    assert DeltaTable(path).to_pyarrow_table().num_rows == 14


def test_plan_leaves_few_small_files_alone():
    files = [DataFile(f"{i}", 1000, newest=START + STEP * i) for i in range(3)]
    files += [DataFile(f"big{i}", 1 << 20, newest=START) for i in range(20)]
    plan = plan_compaction(
        columns=["station_id", "window_start"],
        partition_columns=[],
        files=files,
        today=date(2024, 1, 1),
    )
    assert plan.kind == "none"
    assert closed_partitions(["2024-01-01"], date(2024, 1, 2)) == []  # one file: nothing to do


def test_a_long_backlog_of_closed_files_is_rewritten_in_commits_of_bounded_size(
    small_files_table, monkeypatch
):
    monkeypatch.setattr("periscope.maintenance.MAX_REWRITE_BYTES", 3 * 1200)  # ~3 files a commit
    before = DeltaTable(small_files_table).version()
    result = maintain_table(small_files_table, retention_hours=7 * 24)
    commits = DeltaTable(small_files_table).version() - before
    assert result.compaction == "8 closed file(s) rewritten sorted by window_start"
    assert commits >= 3  # 8 files in groups of at most ~3 (a group of one is left alone)
    assert len(_rows(DeltaTable(small_files_table))) == 30


def test_a_ledger_without_a_time_column_is_packed(tmp_path):
    path = str(tmp_path / "silver" / "weather_batches")
    for batch in range(10):
        write_deltalake(path, pa.table({"batch_id": [batch], "records": [100]}), mode="append")
    result = maintain_table(path, retention_hours=7 * 24)
    assert result.compaction == "10 small files packed together"
    assert (result.files_before, result.files_after) == (10, 1)
    assert sorted(DeltaTable(path).to_pyarrow_table()["batch_id"].to_pylist()) == list(range(10))


def test_plan_rewrites_the_oldest_closed_files_up_to_its_budget():
    files = [DataFile(f"{i}", 100, newest=START + timedelta(hours=i)) for i in range(48)]
    plan = plan_compaction(columns=["window_start"], partition_columns=[], files=files,
                           today=date(2024, 1, 3), max_run_bytes=1000)  # fmt: skip
    assert [f.path for f in plan.files] == [str(i) for i in range(10)]
    everything = plan_compaction(columns=["window_start"], partition_columns=[], files=files,
                                 today=date(2024, 1, 3))  # fmt: skip
    assert [f.path for f in everything.files] == [str(i) for i in range(23)]  # 23 < 47 - 24


def test_maintain_lake_walks_every_table_and_dry_run_changes_nothing(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    for i in range(20):
        write_deltalake(str(lake / "silver" / "weather_features"), _windows(i, 1), mode="append")
    _merged(str(lake / "silver" / "weather_features"), _windows(19, 1))
    write_deltalake(str(lake / "gold" / "weather_predictions"), _windows(0, 2), mode="append")
    monkeypatch.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "x")
    monkeypatch.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "x")
    settings = Settings(lake_root=str(lake))  # type: ignore[call-arg]

    dry = maintain_lake(settings, dry_run=True)
    assert sorted((r.table, r.files_before, r.files_after) for r in dry) == [
        ("gold.weather_predictions", 1, 1),
        ("silver.weather_features", 20, 20),
    ]
    done = {r.table: r for r in maintain_lake(settings)}
    assert done["silver.weather_features"].files_after == 6  # 15 closed -> 1, 5 open
    assert done["gold.weather_predictions"].compaction.startswith("none")
    assert all(r.error is None for r in done.values())


def test_a_table_appended_to_only_has_its_newest_small_files_compacted_too(tmp_path):
    """Silver's observations are appended once a batch and never merged: live at real time,
    waiting a day for files to close kept a day of them (one a second) uncompacted."""
    path = str(tmp_path / "silver" / "weather_observations")
    for i in range(10):  # ten hours: every file is open by the closed-file rule
        write_deltalake(path, _windows(i, 1).rename_columns(["station_id", "event_time", "v"]),
                        mode="append")  # fmt: skip
    rows_before = sorted(DeltaTable(path).to_pyarrow_table().to_pylist(), key=str)

    result = maintain_table(path, retention_hours=7 * 24)

    assert result.compaction == "10 small file(s) rewritten sorted by event_time (appended to only)"
    assert (result.files_before, result.files_after) == (10, 1)
    assert sorted(DeltaTable(path).to_pyarrow_table().to_pylist(), key=str) == rows_before
    # Once a MERGE has rewritten its files, only closed files are (none here: all recent).
    for i in range(10):
        write_deltalake(path, _windows(10 + i, 1).rename_columns(["station_id", "event_time", "v"]),
                        mode="append")  # fmt: skip
    merge_rows(path, _windows(19, 1).rename_columns(["station_id", "event_time", "v"]),
               keys=["station_id", "event_time"], app_id="late", version=0)  # fmt: skip
    assert maintain_table(path, retention_hours=7 * 24).compaction.startswith("none")


def test_plan_of_an_append_only_table_takes_files_without_statistics_first():
    files = [DataFile(f"{i}", 100, newest=START + timedelta(hours=i)) for i in range(8)]
    files.append(DataFile("nulls", 100, newest=None))  # a time column null in every row
    plan = plan_compaction(columns=["event_time"], partition_columns=[], files=files,
                           today=date(2024, 1, 1), append_only=True)  # fmt: skip
    assert [f.path for f in plan.files] == ["nulls", *(str(i) for i in range(8))]
    closed_only = plan_compaction(columns=["event_time"], partition_columns=[], files=files,
                                  today=date(2024, 1, 1))  # fmt: skip
    assert closed_only.kind == "none"  # eight hours apart at most: nothing is closed
