"""Fuzzing silver's pure decision step (spark_streaming/silver/classify.py) with hypothesis:
whatever validated rows a batch holds, each gets exactly one outcome; bad rows are quarantined
(and only they), and each record is kept once, its first offset winning. The Spark parsing in
front of it is fuzzed on arbitrary bytes in tests/integration/test_fuzz_silver.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from periscope.contracts import get_contract
from spark_streaming.silver.classify import (
    DUPLICATE,
    LATE,
    OBSERVATION,
    OUTCOMES,
    QUARANTINED,
    classify,
    dedupe_keys,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = dedupe_keys(get_contract("weather"))  # station_id, event_time

ROW = st.fixed_dictionaries(
    {
        "station_id": st.sampled_from(["a", "b", "c"]),
        "hour": st.integers(0, 3),
        "reason": st.one_of(st.none(), st.sampled_from(["malformed_json", "out_of_range"])),
        "partition": st.integers(0, 2),
    }
)


def _table(rows: list[dict]) -> pa.Table:  # type: ignore[type-arg]
    return pa.table(
        {
            "station_id": pa.array([r["station_id"] for r in rows], pa.string()),
            "event_time": pa.array(
                [T0 + timedelta(hours=r["hour"]) for r in rows], pa.timestamp("us", "UTC")
            ),
            "reason": pa.array([r["reason"] for r in rows], pa.string()),
            "partition": pa.array([r["partition"] for r in rows], pa.int32()),
            "offset": pa.array(range(len(rows)), pa.int64()),  # one offset per bronze row
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(ROW, max_size=30),
    earlier=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), max_size=4),
    watermark_hour=st.one_of(st.none(), st.integers(0, 4)),
)
def test_every_row_gets_one_outcome_and_every_record_is_kept_once(
    rows: list[dict],  # type: ignore[type-arg]
    earlier: list[tuple[str, int]],
    watermark_hour: int | None,
) -> None:
    validated = _table(rows)
    seen = pa.table(
        {
            "station_id": pa.array([s for s, _ in earlier], pa.string()),
            "event_time": pa.array(
                [T0 + timedelta(hours=h) for _, h in earlier], pa.timestamp("us", "UTC")
            ),
        }
    )
    watermark = None if watermark_hour is None else T0 + timedelta(hours=watermark_hour)
    outcome = classify(validated, seen, KEYS, watermark).to_pylist()

    assert len(outcome) == len(rows) and set(outcome) <= set(OUTCOMES)
    for row, result in zip(rows, outcome, strict=True):
        assert (result == QUARANTINED) == (row["reason"] is not None)
        if result == LATE:
            assert watermark_hour is not None and row["hour"] < watermark_hour
        if result == OBSERVATION and watermark_hour is not None:
            assert row["hour"] >= watermark_hour
    earlier_keys = set(earlier)
    groups: dict[tuple[str, int], list[int]] = {}
    for index, row in enumerate(rows):
        if row["reason"] is None:
            groups.setdefault((row["station_id"], row["hour"]), []).append(index)
    for key, indexes in groups.items():
        kept = [i for i in indexes if outcome[i] in (OBSERVATION, LATE)]
        if key in earlier_keys:
            assert not kept  # an earlier batch has it: all duplicates
        else:
            first = min(indexes, key=lambda i: (rows[i]["partition"], i))
            assert kept == [first]
        assert all(outcome[i] == DUPLICATE for i in indexes if i not in kept)
