"""Silver's classification, pure Arrow: dedupe on the event id or on (key, time), late marking."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from periscope.contracts import Text, get_contract
from spark_streaming.silver.classify import classify, dedupe_keys
from spark_streaming.silver.columns import table_columns

T0 = datetime(2024, 1, 1, tzinfo=UTC)
WEATHER = get_contract("weather")
# The same stream, but each record carries an id: many events may share a key and an instant.
EVENTS = dataclasses.replace(
    WEATHER, name="events", fields=(*WEATHER.fields, Text("event_id")), event_id_field="event_id"
)


def _rows(keys, minutes, ids, offsets, reasons=None) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "station_id": keys,
            "event_time": pa.array(
                [T0 + timedelta(minutes=m) for m in minutes], pa.timestamp("us", "UTC")
            ),
            "event_id": ids,
            "reason": reasons or [None] * n,
            "partition": [0] * n,
            "offset": offsets,
        }
    )


def test_without_an_event_id_two_readings_of_a_station_at_one_instant_are_one():
    rows = _rows(["a", "a", "a", "b"], [0, 0, 1, 0], ["x", "y", "z", "w"], [2, 1, 3, 4])
    outcome = classify(
        rows,
        pa.table({"station_id": ["b"], "event_time": rows["event_time"][3:]}),
        dedupe_keys(WEATHER),
        None,
    )
    # The first offset wins; b was written by an earlier batch.
    assert outcome.to_pylist() == ["duplicate", "observation", "observation", "duplicate"]


def test_with_an_event_id_events_sharing_a_key_and_instant_all_count_and_a_resent_id_does_not():
    rows = _rows(["a", "a", "a", "a"], [0, 0, 0, 5], ["x", "y", "x", "old"], [1, 2, 3, 4])
    earlier = pa.table({"event_id": ["old"]})
    outcome = classify(rows, earlier, dedupe_keys(EVENTS), None)
    assert dedupe_keys(EVENTS) == ["event_id"]
    assert outcome.to_pylist() == ["observation", "observation", "duplicate", "duplicate"]


def test_bad_rows_are_quarantined_whatever_their_keys_and_late_rows_are_marked():
    rows = _rows(["a", "a", "b"], [0, 0, 30], ["x", "x", "y"], [1, 2, 3], ["oversize", None, None])
    watermark = T0 + timedelta(minutes=10)
    outcome = classify(
        rows, pa.table({"event_id": pa.array([], pa.string())}), ["event_id"], watermark
    )
    assert outcome.to_pylist() == ["quarantined", "late", "observation"]


def test_the_event_id_is_a_column_of_every_table_that_names_a_record():
    for table in ("observations", "quarantine", "duplicates", "late"):
        names = [c.name for c in table_columns(EVENTS, table)]
        assert "event_id" in names and "event_id" not in [
            c.name for c in table_columns(WEATHER, table)
        ]
    assert [c.name for c in table_columns(EVENTS, "observations")].count("event_id") == 1
