"""The trip regressor (ml/trips.py): time-based split, baselines, silver's rules, save/load,
deterministic vectorised predict, and the busiest zones' hourly counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from ml import trips
from ml.trips import (
    TripModel,
    ZonePairMedian,
    busiest_zone_series,
    distance_linear,
    fit_trip_models,
    silver_accepts,
    split_by_week,
    trip_features,
)
from periscope.contracts import TAXI

ZONES = pd.DataFrame(
    {
        "location_id": ["41", "74", "75", "166"],
        "borough": ["Manhattan", "Manhattan", "Manhattan", "Manhattan"],
    }
)
BOROUGHS = dict(zip(ZONES["location_id"], ZONES["borough"], strict=True))


def _trip(**values) -> dict:
    clean = {
        "pu_location_id": "74",
        "pickup_time": pd.Timestamp("2023-01-10 15:00", tz="UTC"),
        "do_location_id": "75",
        "passenger_count": 1,
        "trip_distance": 2.0,
        "fare_amount": 12.0,
        "tip_amount": 0.0,
        "total_amount": 14.0,
        "payment_type": "cash",
        "rate_code": "standard",
        "vendor": "verifone",
        "trip_id": "t",
        "duration_min": 11.0,
    }
    return clean | values


def _month(seed: int = 1) -> pd.DataFrame:
    """Hourly trips over January 2023 (New York time) between four zones: duration and fare
    grow with distance; the test week's (25th on) durations are 600 min (under the 12-hour rule), so any of them in
    training would move every model far from the rest."""
    rng = np.random.default_rng(seed)
    local = pd.date_range("2023-01-01 00:30", "2023-01-31 23:30", freq="h", tz=trips.LOCAL_TZ)
    n = len(local)
    distance = rng.uniform(0.5, 8.0, n)
    zones = np.array(["41", "74", "75", "166"])
    frame = pd.DataFrame(
        {
            "pu_location_id": zones[rng.integers(0, 4, n)],
            "pickup_time": local.tz_convert("UTC"),
            "do_location_id": zones[rng.integers(0, 4, n)],
            "passenger_count": 1,
            "trip_distance": distance,
            "fare_amount": 3.0 + 2.5 * distance,
            "tip_amount": 0.0,
            "total_amount": 5.0 + 2.5 * distance,
            "payment_type": "cash",
            "rate_code": "standard",
            "vendor": "verifone",
            "trip_id": [f"t{i}" for i in range(n)],
            "duration_min": 3.0 + 4.0 * distance + rng.normal(0, 0.5, n),
        }
    )
    frame.loc[(local >= pd.Timestamp("2023-01-25", tz=trips.LOCAL_TZ)), "duration_min"] = 600.0
    return frame


def _small_trees() -> dict:
    def make() -> Pipeline:
        model = HistGradientBoostingRegressor(
            max_iter=30, categorical_features=list(range(len(trips.CATEGORICAL))), random_state=0
        )
        return Pipeline([("features", trips._ordinal()), ("model", model)])

    return {"small_hgb": make}


@pytest.fixture(scope="module")
def fitted() -> trips.TripTraining:
    return fit_trip_models(_month(), ZONES, candidates=_small_trees())


# --- the split ------------------------------------------------------------------------------
def test_the_test_week_is_the_last_seven_local_days_and_nothing_of_it_is_learnt(fitted):
    month = _month()
    split = split_by_week(month)
    assert split.test_start == pd.Timestamp("2023-01-25", tz=trips.LOCAL_TZ)
    assert split.validation_start == pd.Timestamp("2023-01-22", tz=trips.LOCAL_TZ)
    assert fitted.counts["test"] == 7 * 24 and fitted.counts["train"] == 24 * 24
    # Trained on the first 24 days only, every model predicts ~3 + 4 d for the test week,
    # whose actual durations are 600: a leak of even one test trip into the medians or the
    # fits would not leave every prediction below 40 minutes.
    test = month[month["duration_min"] == 600.0]
    duration, _ = fitted.model.predict(test)
    assert duration.max() < 40.0
    for model in ("zone_pair_median", "distance_linear", "linear", "tree"):
        assert fitted.metric("duration_min", model) > 560.0


def test_a_month_too_short_for_training_fails_clearly():
    week = _month()
    week = week[week["pickup_time"] >= pd.Timestamp("2023-01-23", tz="UTC")]
    with pytest.raises(Exception, match="no room for training"):
        split_by_week(week)


# --- baselines ------------------------------------------------------------------------------
def test_zone_pair_median_falls_back_to_the_pickup_zone_then_everything():
    train = pd.DataFrame(
        {
            "pu_location_id": ["A", "A", "A", "A", "B"],
            "do_location_id": ["B", "B", "B", "C", "A"],
        }
    )
    y = np.array([10.0, 20.0, 40.0, 5.0, 100.0])
    model = ZonePairMedian().fit(train, y)
    asked = pd.DataFrame(
        {"pu_location_id": ["A", "A", "Z", "B"], "do_location_id": ["B", "D", "B", "A"]}
    )
    # (A,B): median of 10, 20, 40; (A,D) unseen: zone A's median of 10, 20, 40, 5;
    # (Z,B): zone Z unseen: the median of all five; (B,A): its one trip.
    assert model.predict(asked).tolist() == [20.0, 15.0, 20.0, 100.0]


def test_distance_linear_reads_the_distance_only():
    features = pd.DataFrame(
        {"trip_distance": [1.0, 2.0, 4.0, np.nan], "hour": [0.0, 5.0, 9.0, 1.0]}
    )
    y = np.array([5.0, 8.0, 14.0, 8.0])  # 2 + 3 d; the missing distance is the median (2)
    model = distance_linear().fit(features, y)
    asked = pd.DataFrame({"trip_distance": [0.0, 10.0], "hour": [23.0, 0.0]})
    assert model.predict(asked) == pytest.approx([2.0, 32.0])


# --- silver's rules -------------------------------------------------------------------------
def test_every_rule_breaking_trip_is_refused_and_a_clean_one_kept():
    broken = [_trip(**dict(rule.violation)) for rule in TAXI.rules]
    out_of_range = [
        _trip(trip_distance=600.0),
        _trip(passenger_count=-1),
        _trip(do_location_id=None),
    ]
    frame = pd.DataFrame([_trip(), *broken, *out_of_range, _trip(passenger_count=None)])
    # A missing passenger count breaks no rule (a null condition passes, as in silver).
    expected = [True] + [False] * (len(TAXI.rules) + len(out_of_range)) + [True]
    assert silver_accepts(frame).tolist() == expected


def test_rule_breaking_trips_are_left_out_of_training():
    month = _month()
    # Impossible trips on a zone pair of their own: a median that saw them would be huge.
    broken = pd.DataFrame(
        [
            _trip(pu_location_id="166", do_location_id="41", fare_amount=-12.0, duration_min=500.0),
            _trip(pu_location_id="166", do_location_id="41", passenger_count=0, duration_min=500.0),
        ]
    )
    clean = month[(month["pu_location_id"] != "166") | (month["do_location_id"] != "41")]
    result = fit_trip_models(pd.concat([clean, broken]), ZONES, candidates=_small_trees())
    assert result.counts["rejected"] == 2 and result.counts["without_target"] == 0
    assert result.counts["train"] + result.counts["test"] == len(clean)


# --- the served model -----------------------------------------------------------------------
def test_save_and_load_give_back_the_same_predictions(fitted, tmp_path):
    month = _month(seed=7)
    fitted.model.save(tmp_path)
    loaded = TripModel.load(tmp_path)
    for before, after in zip(fitted.model.predict(month), loaded.predict(month), strict=True):
        np.testing.assert_array_equal(before, after)
    assert loaded.chosen == {"duration_min": "small_hgb", "fare_amount": "small_hgb"}


def test_predict_is_deterministic_and_row_wise(fitted):
    month = _month(seed=3).iloc[:300]
    duration, fare = fitted.model.predict(month)
    again = fitted.model.predict(month)
    np.testing.assert_array_equal(duration, again[0])
    np.testing.assert_array_equal(fare, again[1])
    # Vectorised, yet row by row: each trip alone and the frame reversed give the same values.
    alone = [fitted.model.predict(month.iloc[[i]])[0][0] for i in (0, 150, 299)]
    assert alone == [duration[0], duration[150], duration[299]]
    reversed_duration, _ = fitted.model.predict(month.iloc[::-1])
    np.testing.assert_array_equal(reversed_duration[::-1], duration)
    assert len(duration) == len(fare) == 300
    # Fares follow 3 + 2.5 d: the fitted tree is close on trips it never saw.
    assert np.abs(fare - (3.0 + 2.5 * month["trip_distance"].to_numpy())).mean() < 1.5


def test_features_use_new_york_hours_and_silver_naive_utc_times():
    frame = pd.DataFrame([_trip(pickup_time=pd.Timestamp("2023-01-10 15:00", tz="UTC"))])
    silver = frame.rename(columns={"pickup_time": "event_time"})
    silver["event_time"] = silver["event_time"].dt.tz_localize(None)
    for given in (frame, silver):
        features = trip_features(given, BOROUGHS)
        assert features.loc[0, "hour"] == 10.0 and features.loc[0, "weekday"] == 1.0  # a Tuesday
        assert features.loc[0, "pu_borough"] == "Manhattan"
    unknown = trip_features(pd.DataFrame([_trip(do_location_id="264", rate_code=None)]), BOROUGHS)
    assert unknown.loc[0, "do_borough"] == "missing" and unknown.loc[0, "rate_code"] == "missing"


# --- zone demand ----------------------------------------------------------------------------
def test_busiest_zones_count_every_hour_with_zeros():
    times = pd.to_datetime(
        ["2023-01-01 00:10", "2023-01-01 00:50", "2023-01-01 03:05", "2023-01-01 01:00"], utc=True
    )
    frame = pd.DataFrame({"pickup_time": times, "pu_location_id": ["7", "7", "7", "9"]})
    series = busiest_zone_series(frame, top=1)
    assert list(series) == ["7"]
    assert series["7"]["y"].tolist() == [2.0, 0.0, 0.0, 1.0]
    assert series["7"]["ds"].iloc[0] == pd.Timestamp("2023-01-01 00:00")


# --- the model kind -------------------------------------------------------------------------
def test_only_taxi_has_a_trip_model_and_train_picks_kinds_per_source():
    import typer

    from ml.cli import _kinds
    from ml.registry import model_name

    assert model_name("taxi", "trip") == "taxi_trip"
    assert _kinds(None, "taxi") == ("forecast", "anomaly", "trip")
    assert _kinds(None, "weather") == ("forecast", "anomaly")
    assert _kinds(["trip"], "weather") == ()
    assert _kinds(["trip", "forecast"], "taxi") == ("trip", "forecast")
    with pytest.raises(typer.BadParameter, match="unknown kind"):
        _kinds(["trips"], "taxi")


def test_silver_trips_are_read_with_every_field_the_rules_check(tmp_path):
    from deltalake import write_deltalake

    from ml.training.trips import read_silver_trips
    from periscope.settings import get_settings

    frame = pd.DataFrame([_trip(trip_id="a"), _trip(trip_id="b", passenger_count=0)])
    frame = frame.rename(columns={"pickup_time": "event_time"}).assign(offset=[0, 1])
    settings = get_settings().model_copy(update={"lake_root": str(tmp_path)})
    write_deltalake(settings.lake_path(TAXI.table("silver", "observations")), frame)

    read = read_silver_trips(settings)
    assert {"trip_id", "duration_min", "vendor"} <= set(read.columns)
    assert "offset" not in read.columns
    assert silver_accepts(read).tolist() == [True, False]
