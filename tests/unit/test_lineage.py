"""Lineage's pure parts: which readings a window holds, which commit wrote a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from serving.lineage import first_commit_after, gold_commit_of, window_readings

T0 = datetime(2017, 1, 1, tzinfo=UTC)


def _observations() -> pa.Table:
    hours = [-1, 0, 0, 1, 2, 3]  # relative to T0; the window is [T0, T0 + 3 h)
    return pa.table(
        {
            "event_time": pa.array(
                [T0 + timedelta(hours=h) for h in hours], pa.timestamp("us", "UTC")
            ),
            "topic": ["weather-raw"] * 6,
            "partition": pa.array([0, 1, 0, 2, 1, 0], pa.int32()),
            "offset": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
            "silver_batch_id": pa.array([0, 0, 1, 1, 4, 1], pa.int64()),
        }
    )


def test_window_readings_keeps_the_window_span_batches_up_to_the_writer_and_not_late():
    late = pa.table(
        {
            "topic": ["weather-raw"],
            "partition": pa.array([0], pa.int32()),
            "offset": pa.array([12], pa.int64()),
        }
    )
    held = window_readings(
        _observations(), late, start=T0, end=T0 + timedelta(hours=3), through_batch=3
    )
    # -1 h before the window, +3 h at its end (exclusive), offset 12 late, offset 14 from a
    # batch after the one that wrote the window: none of them count.
    assert held["offset"].to_pylist() == [11, 13]


def test_window_readings_take_naive_bounds_as_utc():
    held = window_readings(
        _observations(),
        None,
        start=datetime(2017, 1, 1),
        end=datetime(2017, 1, 1, 1),
        through_batch=9,
    )
    assert sorted(held["offset"].to_pylist()) == [11, 12]


def _commit(version: int, at: datetime, **extra: str) -> dict:
    return {"version": version, "timestamp": int(at.timestamp() * 1000), **extra}


def test_first_commit_after_compares_at_millisecond_resolution():
    history = [
        _commit(3, T0 + timedelta(seconds=5)),
        _commit(2, T0),
        _commit(1, T0 - timedelta(seconds=1)),
    ]
    # Delta keeps milliseconds: a row stamped 400 us after the commit's millisecond is its own.
    assert first_commit_after(history, T0 + timedelta(microseconds=400))["version"] == 2
    assert first_commit_after(history, T0 + timedelta(seconds=6)) is None


def test_gold_commit_of_needs_a_mark_covering_the_windows_batch():
    history = [
        _commit(5, T0 + timedelta(seconds=1), **{"periscope.silver_through": "2"}),
        _commit(6, T0 + timedelta(seconds=2), **{"periscope.silver_through": "7"}),
        _commit(7, T0 + timedelta(seconds=3)),  # maintenance: no mark
    ]
    assert gold_commit_of(history, scored_at=T0, silver_batch=4)["version"] == 6
    assert gold_commit_of(history, scored_at=T0, silver_batch=2)["version"] == 5
    assert gold_commit_of(history, scored_at=T0, silver_batch=8) is None
