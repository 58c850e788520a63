"""Incremental window statistics equal a from-scratch computation, whatever the batching."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml.windows import window_features
from periscope.contracts import (
    Aggregation,
    Category,
    Count,
    Measure,
    SourceContract,
    Text,
    WindowSpec,
    get_contract,
)
from periscope.windows import WindowAggregations, WindowState, feature_columns

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


# --- any shape: counts, sums, distinct counts and category counts ------------------------------
TRIPS = SourceContract(
    name="toy_trips",
    description="a toy event stream: many events per key per instant",
    fields=(
        Text("zone", required=True),
        Text("trip_id", required=True),
        Measure("fare", "USD", 0.0, 500.0),
        Count("passengers", valid_max=9),
        Category("payment", levels=("card", "cash", "Dispute / other")),
        Text("driver"),
    ),
    key_field="zone",
    event_id_field="trip_id",
    window=WindowSpec(
        "5 minutes",
        "1 minute",
        "10 minutes",
        aggregations=(
            Aggregation("fare", "stats"),
            Aggregation("fare", "sum"),
            Aggregation("passengers", "sum"),
            Aggregation("passengers", "count"),
            Aggregation("payment", "category_counts"),
            Aggregation("driver", "distinct_count"),
        ),
    ),
)


def _trips(n: int, seed: int) -> pd.DataFrame:
    """Trips with repeated instants per zone, missing values and a few unknown levels."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "zone": rng.choice(["z1", "z2", "z3"], n),
            "trip_id": [f"t{seed}-{i}" for i in range(n)],
            "event_time": pd.Timestamp("2024-03-01 12:00", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 900, n) // 30 * 30, unit="s"),
            "fare": rng.gamma(2.0, 8.0, n),
            "passengers": rng.integers(0, 5, n).astype(float),
            "payment": rng.choice(["card", "cash", "Dispute / other"], n),
            "driver": rng.choice([f"d{i}" for i in range(12)], n),
        }
    )
    for column in ("fare", "passengers"):
        frame.loc[rng.random(n) < 0.1, column] = np.nan
    frame["payment"] = frame["payment"].where(rng.random(n) > 0.1, None)
    frame["driver"] = frame["driver"].where(rng.random(n) > 0.1, None)
    return frame


def _trip_arrow(frame: pd.DataFrame, batch_id: int | None = None) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if batch_id is not None:
        table = table.append_column("silver_batch_id", pa.array([batch_id] * len(frame)))
    return table


@pytest.mark.parametrize("batches", [1, 4, 13])
def test_counts_sums_distincts_and_categories_merge_like_a_from_scratch_count(batches):
    frame = _trips(900, seed=batches)
    plan = WindowAggregations.of(TRIPS)
    state = WindowState.empty("zone", plan, SIZE, SLIDE, through=0)
    latest: dict = {}
    for part in _split(frame.sample(frac=1.0, random_state=batches), batches):
        for row in state.add(_trip_arrow(part[["zone", "event_time", *plan.inputs]])).to_pylist():
            latest[(row["zone"], row["window_start"])] = row
    theirs = window_features(frame, TRIPS)
    assert len(latest) == len(theirs) > 0
    columns = feature_columns(TRIPS)[3:]
    assert {"fare_sum", "payment_dispute_other_count", "driver_distinct_count"} <= set(columns)
    mismatches = []
    for expected in theirs.to_dict("records"):
        actual = latest[(expected["zone"], expected["window_start"].tz_localize("UTC"))]
        for column in columns:
            a, b = actual[column], expected[column]
            if b is None or (isinstance(b, float) and math.isnan(b)):
                if a is not None:
                    mismatches.append((column, a, b))
            elif a is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append((column, a, b))
    assert mismatches == []
    # Counted, not averaged: every trip of a window is in its count of levels or missing.
    row = theirs.iloc[0]
    levels = [c for c in columns if c.startswith("payment_")]
    assert sum(row[c] for c in levels) <= row["reading_count"]


def test_a_rebuilt_state_of_any_shape_is_identical_to_the_live_one():
    frame = _trips(600, seed=3)
    plan = WindowAggregations.of(TRIPS)
    parts = _split(frame.sample(frac=1.0, random_state=3)[["zone", "event_time", *plan.inputs]], 5)
    live = WindowState.empty("zone", plan, SIZE, SLIDE, through=0)
    for part in parts:
        live.add(_trip_arrow(part))
    stored = pa.concat_tables(_trip_arrow(p, batch_id=i) for i, p in enumerate(parts))
    rebuilt = WindowState.rebuild(stored, "zone", plan, SIZE, SLIDE, through=len(parts))
    order = [("zone", "ascending"), ("window_start", "ascending")]
    assert rebuilt.windows.sort_by(order).equals(live.windows.sort_by(order))
