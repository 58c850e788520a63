"""The trip regressor's promotion rule (`retrain` and `periscope models promote taxi trip N`):
the challenger's duration MAE on its own test window against the champion's on the same trips.
The run against a real MLflow registry is tests/integration/test_trip_promotion.py."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ml.registry import ModelInfo
from ml.training.trips import compare_trip_models, trip_test_window
from ml.trips import TripModel, TripSplit, distance_linear
from periscope.errors import PeriscopeError

LOCAL = "America/New_York"
SPLIT = TripSplit(
    validation_start=pd.Timestamp("2023-01-22", tz=LOCAL),
    test_start=pd.Timestamp("2023-01-25", tz=LOCAL),
)
DATA_UNTIL = pd.Timestamp("2023-01-29 12:00")  # naive UTC, as the tag records it


def _silver_trips() -> pd.DataFrame:
    """Silver's taxi observations: one trip an hour over January (naive UTC event_time);
    duration 3 min per mile, fare 2.5 USD per mile."""
    times = pd.date_range("2023-01-01 05:30", "2023-01-31 23:30", freq="h")
    distance = np.resize(np.arange(1.0, 9.0), len(times))
    return pd.DataFrame(
        {
            "pu_location_id": "74",
            "event_time": times,
            "trip_id": [f"t{i}" for i in range(len(times))],
            "do_location_id": "75",
            "vendor": "verifone",
            "passenger_count": 1,
            "trip_distance": distance,
            "fare_amount": 2.5 * distance,
            "tip_amount": 0.0,
            "total_amount": 2.5 * distance + 1,
            "payment_type": "cash",
            "rate_code": "standard",
            "duration_min": 3.0 * distance,
        }
    )


def _model(duration_per_mile: float) -> TripModel:
    """A trip model whose duration is `duration_per_mile` x distance (fare: exact)."""
    trips = _silver_trips()
    features = trips[["trip_distance"]]
    duration = distance_linear().fit(features, duration_per_mile * trips["trip_distance"])
    fare = distance_linear().fit(features, trips["fare_amount"])
    return TripModel(
        boroughs={"74": "Manhattan", "75": "Manhattan"},
        estimators={"duration_min": duration, "fare_amount": fare},
        chosen={"duration_min": "linear", "fare_amount": "linear"},
        split=SPLIT,
    )


def test_the_test_window_runs_from_test_start_in_new_york_to_the_last_trip_trained_with():
    trips = _silver_trips()
    info = ModelInfo(
        "taxi_trip",
        1,
        "run",
        datetime(2026, 1, 1),
        params=SPLIT.to_dict(),
        tags={"data_until": str(DATA_UNTIL)},
    )
    window = trip_test_window(trips, info)
    # Midnight of the 25th in New York is 05:00 UTC; the first trip after it is 05:30.
    assert window["event_time"].min() == pd.Timestamp("2023-01-25 05:30")
    assert window["event_time"].max() == DATA_UNTIL - pd.Timedelta(minutes=30)
    assert len(window) == 4 * 24 + 7  # 25th 05:30 UTC .. 29th 11:30 UTC


def test_the_duration_mae_of_both_models_is_taken_on_the_same_trips():
    trips = _silver_trips()
    exact, off = _model(3.0), _model(4.0)  # off: 1 min per mile too long
    ours, theirs = compare_trip_models(exact, off, trips)
    assert ours == pytest.approx(0.0, abs=1e-9)
    assert theirs == pytest.approx(trips["trip_distance"].mean())
    # Trips silver would quarantine are left out, as in training (a fare for no distance).
    bad = trips.assign(trip_distance=0.0)
    assert compare_trip_models(exact, off, pd.concat([trips, bad])) == (ours, theirs)
    with pytest.raises(PeriscopeError, match="no trips in the test window"):
        compare_trip_models(exact, off, trips.iloc[:0])


def test_models_promote_names_the_kinds_a_source_has():
    from periscope.cli import app

    result = CliRunner().invoke(app, ["models", "promote", "weather", "trip", "1"])
    assert result.exit_code == 2
    assert "weather has no 'trip' model; its kinds: forecast, anomaly" in result.output
