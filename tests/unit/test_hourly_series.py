"""The forecasters' hourly series (ml.data.series_frames): a complete hourly grid per entity,
where an hour without observations is 0 for a count target and missing for a mean."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.data import series_frames
from periscope.contracts import get_contract

HOURS = pd.to_datetime(["2023-01-10 08:00", "2023-01-10 09:00", "2023-01-10 12:00"])


def test_an_hour_without_trips_counts_zero_trips():
    taxi = get_contract("taxi")
    hourly = pd.DataFrame(
        {
            "pu_location_id": ["74", "74", "74", "41"],
            "ds": [*HOURS, HOURS[0]],
            "event_count": [5.0, 3.0, 7.0, 2.0],
        }
    )
    frames = series_frames(hourly, taxi)
    zone = frames[("74", "event_count")]
    assert list(zone["ds"]) == list(pd.date_range(HOURS[0], HOURS[-1], freq="h"))
    # 10:00 and 11:00 had no pickups in zone 74: 0 trips, not a missing hour.
    assert zone["y"].tolist() == [5.0, 3.0, 0.0, 0.0, 7.0]
    assert frames[("41", "event_count")]["y"].tolist() == [2.0]


def test_an_hour_without_readings_stays_missing_for_a_mean():
    weather = get_contract("weather")
    hourly = pd.DataFrame(
        {
            "station_id": ["portland"] * 3,
            "ds": HOURS,
            "temperature": [4.0, 5.0, 9.0],
            "humidity": [80.0, np.nan, 70.0],  # an hour observed without this measure
            "pressure": [1010.0, 1011.0, 1012.0],
        }
    )
    temperature = series_frames(hourly, weather)[("portland", "temperature")]["y"]
    assert temperature.tolist()[:2] == [4.0, 5.0] and temperature.isna().tolist()[2:4] == [True] * 2
    humidity = series_frames(hourly, weather)[("portland", "humidity")]["y"]
    assert humidity.isna().tolist() == [False, True, True, True, False]
