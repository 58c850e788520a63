"""Idempotent delta-rs writes (periscope.lake) and JSON messages (periscope.messages)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from periscope.lake import (
    append_once,
    committed_through,
    delta_dataset,
    merge_once,
    read_delta,
)
from periscope.messages import json_messages

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(stations: list[str], minutes: list[int], value: float) -> pa.Table:
    return pa.table(
        {
            "station_id": pa.array(stations, pa.large_string()),  # as Spark hands strings over
            "window_start": pa.array(
                [T0 + timedelta(minutes=m) for m in minutes], pa.timestamp("us", "UTC")
            ),
            "value": pa.array([value] * len(stations)),
        }
    )


def _table(tmp_path, rows: pa.Table) -> str:
    path = str(tmp_path / "t")
    write_deltalake(
        path,
        rows.cast(
            pa.schema(
                [
                    pa.field(f.name, pa.string()) if f.name == "station_id" else f
                    for f in rows.schema
                ]
            )
        ),
    )
    return path


def test_append_once_writes_a_version_once_and_records_it(tmp_path):
    path = _table(tmp_path, _rows(["a"], [0], 1.0))
    assert committed_through(path, "app") is None
    assert append_once(path, _rows(["b", "c"], [1, 1], 2.0), app_id="app", version=3)
    assert not append_once(path, _rows(["b", "c"], [1, 1], 2.0), app_id="app", version=3)
    assert not append_once(path, _rows(["d"], [1], 2.0), app_id="app", version=2)  # older
    assert committed_through(path, "app") == 3
    assert read_delta(path).num_rows == 3
    # Another writer's mark is its own.
    assert append_once(path, _rows(["e"], [1], 2.0), app_id="other", version=3)
    assert read_delta(path).num_rows == 4


def test_an_empty_append_commits_nothing(tmp_path):
    path = _table(tmp_path, _rows(["a"], [0], 1.0))
    assert not append_once(path, _rows([], [], 1.0), app_id="app", version=1)
    assert committed_through(path, "app") is None


def test_merge_once_replaces_rows_by_key_inserts_new_ones_and_skips_a_replay(tmp_path):
    path = _table(tmp_path, _rows(["a", "a", "b"], [0, 1, 0], 1.0))
    changed = merge_once(
        path,
        _rows(["a", "c"], [1, 1], 5.0),
        keys=["station_id", "window_start"],
        app_id="app",
        version=7,
        lower_bound=("window_start", T0 + timedelta(minutes=1)),
    )
    assert changed == 2  # one updated, one inserted
    rows = sorted(read_delta(path).to_pylist(), key=lambda r: (r["station_id"], r["window_start"]))
    assert [(r["station_id"], r["window_start"].minute, r["value"]) for r in rows] == [
        ("a", 0, 1.0),
        ("a", 1, 5.0),
        ("b", 0, 1.0),
        ("c", 1, 5.0),
    ]
    again = merge_once(
        path, _rows(["a"], [1], 9.0), keys=["station_id", "window_start"], app_id="app", version=7
    )
    assert again is None
    assert {r["value"] for r in read_delta(path).to_pylist()} == {1.0, 5.0}


def test_json_messages_key_rows_and_keep_binary_keys_as_they_are():
    rows = pa.table(
        {
            "key": pa.array([b"\xff\x00", None], pa.binary()),
            "reason": ["bad_json", "missing_field"],
            "at": pa.array([T0, T0], pa.timestamp("us", "UTC")),
        }
    )
    messages = list(json_messages(rows, "key", value_columns=["reason", "at"], chunk_rows=1))
    assert [key for key, _ in messages] == [b"\xff\x00", None]
    first = json.loads(messages[0][1])
    assert first["reason"] == "bad_json" and "key" not in first
    assert datetime.fromisoformat(first["at"]) == T0


def _advancing_merges(tmp_path, monkeypatch, file_bytes: int) -> list[int]:
    """30 upserts of 5 open windows x 300 stations, a minute later each time; returns the
    rows each MERGE copied unchanged into its new files."""
    import numpy as np
    from deltalake import DeltaTable

    import periscope.lake

    monkeypatch.setattr(periscope.lake, "MERGE_TARGET_FILE_BYTES", file_bytes)
    rng = np.random.default_rng(0)
    stations = [f"s{i:03d}" for i in range(300)]

    def windows(first: int) -> pa.Table:
        rows = _rows(stations * 5, [first + k for k in range(5) for _ in stations], 0.0)
        for i in range(8):  # incompressible payload, so files fill up
            rows = rows.append_column(f"x{i}", pa.array(rng.random(rows.num_rows)))
        return rows

    path = _table(tmp_path, windows(0))
    copied = []
    for minute in range(1, 31):
        merge_once(
            path,
            windows(minute),
            keys=["station_id", "window_start"],
            app_id="app",
            version=minute,
            lower_bound=("window_start", T0 + timedelta(minutes=minute)),
        )
        metrics = DeltaTable(path).history(1)[0]["operationMetrics"]
        copied.append(int(metrics["num_target_rows_copied"]))
    assert read_delta(path, ["station_id"]).num_rows == 300 * 35
    return copied


def test_merges_of_the_newest_windows_stay_as_small_as_the_files(tmp_path, monkeypatch):
    small = _advancing_merges(tmp_path / "small", monkeypatch, 32 * 1024)
    # Files of ~360 rows: closed windows settle in files the lower bound skips.
    assert max(small) < 2 * 1_500  # at most about twice the rows of a round
    # One big file (what the default would give here): every closed window is copied again,
    # so each MERGE costs more than the one before.
    large = _advancing_merges(tmp_path / "large", monkeypatch, 1 << 30)
    assert large[-1] == 300 * 30


def _stamp(minute: int) -> datetime:
    return datetime(2026, 1, 1, 12, minute, tzinfo=UTC)


def test_a_ranged_read_opens_only_the_files_that_may_hold_the_range_and_keeps_their_rows(
    tmp_path,
):
    path = str(tmp_path / "observations")
    for first in (0, 10, 20):  # one file per append, minutes [first, first + 5]
        write_deltalake(
            path,
            pa.table(
                {
                    "station_id": [f"s{first}", f"s{first + 5}"],
                    "event_time": pa.array(
                        [_stamp(first), _stamp(first + 5)], pa.timestamp("us", "UTC")
                    ),
                }
            ),
            mode="append",
        )
    # Statistics of an all-null column are null: such a file is kept, whatever the range.
    write_deltalake(
        path,
        pa.table(
            {"station_id": ["none"], "event_time": pa.array([None], pa.timestamp("us", "UTC"))}
        ),
        mode="append",
    )
    table = DeltaTable(path)
    lo, hi = _stamp(5), _stamp(12)  # touches the first file's last row and the second's first
    ranged = delta_dataset(table, {"event_time": (lo, hi)})
    assert len(ranged.files) == 3  # minutes 0-5, 10-15 and the null one; not 20-25
    where = (pc.field("event_time") >= lo) & (pc.field("event_time") <= hi)
    got = read_delta(path, where=where, within={"event_time": (lo, hi)})
    assert (
        got.sort_by("station_id").to_pylist()
        == read_delta(path, where=where).sort_by("station_id").to_pylist()
    )
    assert sorted(got["station_id"].to_pylist()) == ["s10", "s5"]
    # An open bound, and a column without statistics, narrow nothing more than they say.
    assert len(delta_dataset(table, {"event_time": (None, _stamp(1))}).files) == 2
    assert len(delta_dataset(table, {"no_such_column": (1, 2)}).files) == 4
    assert len(delta_dataset(table, {"event_time": (_stamp(30), None)}).files) == 1


def test_a_partitioned_table_is_read_whole_through_deltalake(tmp_path):
    path = str(tmp_path / "raw")
    rows = pa.table({"day": ["a", "b"], "offset": [1, 2]})
    write_deltalake(path, rows, mode="append", partition_by=["day"])
    got = read_delta(path, where=pc.field("offset") >= 2, within={"offset": (2, None)})
    assert got.select(["day", "offset"]).to_pylist() == [{"day": "b", "offset": 2}]


def test_a_ranged_read_of_a_table_without_files_is_empty(tmp_path):
    path = str(tmp_path / "empty")
    schema = pa.schema([("event_time", pa.timestamp("us", "UTC"))])
    write_deltalake(path, schema.empty_table(), mode="append")
    got = read_delta(path, within={"event_time": (_stamp(0), _stamp(5))})
    assert got.num_rows == 0 and got.schema.names == ["event_time"]


def test_a_backlog_merged_in_any_order_leaves_the_newest_windows_to_one_file(tmp_path):
    # A MERGE of the newest windows must not rewrite the backlog's files (nor the warehouse
    # load copy them again): the backlog's rows go in sorted by time, whatever their order.
    import numpy as np
    from deltalake import DeltaTable, write_deltalake

    from periscope.lake import merge_rows

    rng = np.random.default_rng(5)
    hours, stations = 24 * 20, 200
    starts = np.repeat(np.arange(hours), stations)
    backlog = pa.table(
        {
            "station_id": pa.array([f"s{i}" for i in np.tile(np.arange(stations), hours)]),
            "window_start": pa.array(
                [T0 + timedelta(hours=int(h)) for h in starts], pa.timestamp("us", "UTC")
            ),
            **{f"v{i}": pa.array(rng.random(len(starts))) for i in range(8)},  # incompressible
        }
    ).take(rng.permutation(len(starts)))  # scored in no particular order
    path = str(tmp_path / "gold")
    write_deltalake(path, backlog.slice(0, 1))
    lowest = pc.min(backlog["window_start"]).as_py()
    merge_rows(path, backlog, keys=["station_id", "window_start"], app_id="a", version=1,
               lower_bound=("window_start", lowest))  # fmt: skip
    files = len(DeltaTable(path).file_uris())
    assert files >= 4  # 1 MiB files: several, so the check below can fail

    newest = backlog.filter(pc.equal(backlog["window_start"], pc.max(backlog["window_start"])))
    rescored = newest.set_column(2, "v0", pa.array(rng.random(newest.num_rows)))
    merge_rows(path, rescored, keys=["station_id", "window_start"], app_id="a", version=2,
               lower_bound=("window_start", pc.min(rescored["window_start"]).as_py()))  # fmt: skip
    metrics = DeltaTable(path).history(1)[0]["operationMetrics"]
    assert metrics["num_target_rows_updated"] == stations
    assert metrics["num_target_files_removed"] == 1  # of the backlog's files, the newest only
    assert metrics["num_target_rows_copied"] < backlog.num_rows / 4
