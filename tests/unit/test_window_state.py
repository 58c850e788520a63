"""Incremental window statistics equal a from-scratch computation, whatever the batching."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml.windows import window_features
from periscope.contracts import WindowSpec, get_contract
from spark_streaming.features import feature_columns
from spark_streaming.window_state import WindowState

CONTRACT = dataclasses.replace(
    get_contract("weather"), window=WindowSpec("5 minutes", "1 minute", "10 minutes")
)
KEY, MEASURES = CONTRACT.key_field, list(CONTRACT.measure_names)
SIZE, SLIDE = 300_000_000, 60_000_000


def _readings(n: int, seed: int) -> pd.DataFrame:
    """Distinct (station, second) readings over 20 minutes, with missing values and outliers."""
    rng = np.random.default_rng(seed)
    slots = rng.choice(4 * 1200, size=n, replace=False)
    frame = pd.DataFrame(
        {
            KEY: [f"s{i % 4}" for i in slots],
            "event_time": pd.Timestamp("2024-03-01 12:00", tz="UTC")
            + pd.to_timedelta(slots // 4, unit="s"),
        }
    )
    for i, m in enumerate(MEASURES):
        values = rng.normal(1000.0 if m == "pressure" else 10.0 * i, 3.0, n)
        values[rng.random(n) < 0.2] = np.nan  # missing: a reading without this measure
        frame[m] = values
    frame[MEASURES[0]] = frame[MEASURES[0]].where(frame.index % 50 != 0, 1e6)
    return frame


def _arrow(frame: pd.DataFrame, batch_id: int | None = None) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if batch_id is not None:
        table = table.append_column("silver_batch_id", pa.array([batch_id] * len(frame)))
    return table


def _split(frame: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    return [frame.iloc[i] for i in np.array_split(np.arange(len(frame)), parts)]


def _incremental(frame: pd.DataFrame, batches: int, seed: int) -> tuple[WindowState, dict]:
    """Feed the readings in random batches (out of time order); the last value of every window."""
    state = WindowState.empty(KEY, MEASURES, SIZE, SLIDE, through=0)
    latest: dict = {}
    shuffled = frame.sample(frac=1.0, random_state=seed)
    for part in _split(shuffled, batches):
        for row in state.add(_arrow(part)).to_pylist():
            latest[(row[KEY], row["window_start"])] = row
    return state, latest


@pytest.mark.parametrize("batches", [1, 3, 17])
def test_incremental_features_equal_a_from_scratch_computation(batches):
    frame = _readings(1500, seed=batches)
    _, ours = _incremental(frame, batches, seed=batches)
    theirs = window_features(frame, CONTRACT)
    assert len(ours) == len(theirs) == 4 * 24  # 20 minutes: 24 windows a station
    mismatches = []
    for expected in theirs.to_dict("records"):
        actual = ours[(expected[KEY], expected["window_start"].tz_localize("UTC"))]
        assert actual["window_end"] == expected["window_end"].tz_localize("UTC")
        for column in feature_columns(CONTRACT)[3:]:
            a, b = actual[column], expected[column]
            if b is None or (isinstance(b, float) and math.isnan(b)):
                if a is not None:
                    mismatches.append((column, a, b))
            elif a is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append((column, a, b))
    assert mismatches == []


def test_a_rebuilt_state_is_bit_identical_to_the_live_one():
    frame = _readings(1200, seed=5)
    parts = _split(frame.sample(frac=1.0, random_state=5), 6)
    live = WindowState.empty(KEY, MEASURES, SIZE, SLIDE, through=0)
    for part in parts:
        live.add(_arrow(part))
    # As after a restart: the readings come back from the table in another order.
    stored = pa.concat_tables(_arrow(p, batch_id=i) for i, p in enumerate(parts))
    rebuilt = WindowState.rebuild(
        stored.take(pa.array(np.random.default_rng(1).permutation(len(stored)))),
        KEY,
        MEASURES,
        SIZE,
        SLIDE,
        through=len(parts),
    )
    assert rebuilt.through == live.through == len(parts)
    order = [(KEY, "ascending"), ("window_start", "ascending")]
    assert rebuilt.windows.sort_by(order).equals(live.windows.sort_by(order))


def test_closed_windows_are_forgotten_and_a_later_reading_reopens_nothing_old():
    frame = _readings(300, seed=9)
    state, _ = _incremental(frame, 2, seed=9)
    watermark = pd.Timestamp("2024-03-01 12:10", tz="UTC")
    state.forget_closed(watermark.value // 1000)
    ends = [s + SIZE for s in state.windows["window_start"].to_pylist()]
    assert ends and min(ends) > watermark.value // 1000
    assert len(state.windows) < len(window_features(frame, CONTRACT))


def test_an_empty_batch_changes_nothing():
    state, _ = _incremental(_readings(100, seed=2), 1, seed=2)
    before = state.windows
    assert state.add(_arrow(_readings(0, seed=3))).num_rows == 0
    assert state.windows.sort_by([(KEY, "ascending"), ("window_start", "ascending")]).equals(
        before.sort_by([(KEY, "ascending"), ("window_start", "ascending")])
    )
