"""Window features without Spark, injected anomalies, and the IsolationForest on real weather."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ingest.datasets import read_weather
from ml.anomaly import (
    ANOMALY_KINDS,
    AnomalyModel,
    choose_thresholds,
    detection_metrics,
    evaluate_by_kind,
    fit_anomaly_model,
    inject_anomalies,
    label_windows,
    label_windows_by_kind,
)
from ml.windows import window_features
from periscope.contracts import get_contract
from periscope.settings import get_settings
from periscope.windows import feature_columns

WEATHER = get_contract("weather")  # 3 h windows sliding by 1 h
STATIONS = ["denver", "boston", "seattle"]


def _observations(rows: list[tuple[str, str, float | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["station_id", "event_time", "temperature"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    for m in WEATHER.measure_names[1:]:
        frame[m] = None
    frame["humidity"] = 50.0
    return frame


def test_window_features_match_hand_computed_sliding_windows():
    features = window_features(
        _observations(
            [
                ("a", "2024-01-01 10:00", 1.0),
                ("a", "2024-01-01 11:00", 3.0),
                ("a", "2024-01-01 12:30", 2.0),
                ("a", "2024-01-01 13:00", None),  # counts as a reading, holds no temperature
                ("b", "2024-01-01 10:15", 7.0),
            ]
        ),
        WEATHER,
    )
    assert list(features.columns) == feature_columns(WEATHER)
    by_window = {(r.station_id, r.window_start.hour): r for r in features.itertuples()}
    # Each reading lies in size / slide = 3 epoch-aligned windows: a's 10:00..13:00 span 08..13.
    assert sorted(h for s, h in by_window if s == "a") == [8, 9, 10, 11, 12, 13]
    assert sorted(h for s, h in by_window if s == "b") == [8, 9, 10]
    assert features["window_start"].dt.tz is None
    assert (features["window_end"] - features["window_start"] == pd.Timedelta(hours=3)).all()

    full = by_window[("a", 10)]  # [10:00, 13:00): 1.0 at 0 min, 3.0 at 60, 2.0 at 150
    assert full.reading_count == 3
    assert full.temperature_mean == pytest.approx(2.0)
    assert full.temperature_stddev == pytest.approx(1.0)
    assert (full.temperature_min, full.temperature_max) == (1.0, 3.0)
    assert full.temperature_rate_per_min == pytest.approx((2.0 - 1.0) / 150)
    # Least squares over (0, 1), (60, 3), (150, 2): mean t = 70, mean y = 2.
    slope = ((-70) * (-1) + (-10) * 1 + 80 * 0) / (70**2 + 10**2 + 80**2)
    assert full.temperature_trend == pytest.approx(slope)

    late = by_window[("a", 12)]  # [12:00, 15:00): 12:30 and 13:00, one temperature
    assert late.reading_count == 2 and late.temperature_mean == 2.0
    for stat in ("stddev", "rate_per_min", "trend"):
        assert math.isnan(getattr(late, f"temperature_{stat}"))
    assert math.isnan(by_window[("a", 13)].temperature_mean)  # only the reading without one

    single = by_window[("b", 10)]
    assert single.reading_count == 1 and single.temperature_max == 7.0
    assert math.isnan(single.temperature_stddev) and math.isnan(single.temperature_trend)
    assert features["pressure_mean"].isna().all()  # a measure never reported stays NaN
    assert list(features["station_id"]) == sorted(features["station_id"])


def test_window_features_accept_naive_utc_times():
    aware = _observations([("a", "2024-01-01 10:00", 1.0), ("a", "2024-01-01 11:00", 2.0)])
    naive = aware.assign(event_time=aware["event_time"].dt.tz_localize(None))
    pd.testing.assert_frame_equal(window_features(aware, WEATHER), window_features(naive, WEATHER))


@pytest.fixture(scope="module")
def weather() -> pd.DataFrame:
    frame = read_weather(get_settings().data_dir, stations=STATIONS)
    observations = frame.rename({"timestamp": "event_time"}).to_pandas()
    observations["event_time"] = observations["event_time"].dt.tz_localize(None)
    return observations


def _weeks(observations: pd.DataFrame, start: str, weeks: int, after: int = 0) -> pd.DataFrame:
    begin = pd.Timestamp(start) + pd.Timedelta(weeks=after)
    end = begin + pd.Timedelta(weeks=weeks)
    return observations[observations["event_time"].between(begin, end, inclusive="left")]


def test_inject_anomalies_is_deterministic_and_alters_only_labelled_readings(weather):
    clean = _weeks(weather, "2013-03-01", 4)
    altered, labels = inject_anomalies(clean, WEATHER, rate=0.05, seed=3)
    again, labels_again = inject_anomalies(clean, WEATHER, rate=0.05, seed=3)
    pd.testing.assert_frame_equal(altered, again)
    pd.testing.assert_frame_equal(labels, labels_again)
    other, _ = inject_anomalies(clean, WEATHER, rate=0.05, seed=4)
    assert not other.equals(altered)

    assert set(labels["kind"]) == set(ANOMALY_KINDS)
    assert labels.duplicated(["station_id", "event_time"]).sum() == 0
    assert len(labels) == pytest.approx(0.05 * len(clean), rel=0.1)

    keys = ["station_id", "event_time"]
    before = clean.set_index(keys).sort_index()
    after = altered.set_index(keys).sort_index()
    assert before.index.equals(after.index)
    changed = {
        (station, time, m)
        for m in WEATHER.measure_names
        for station, time in before.index[(before[m] != after[m]) & before[m].notna()]
    }
    assert changed == set(labels[[*keys, "measure"]].itertuples(index=False, name=None))
    for m in WEATHER.measures:
        values = after[m.name].dropna()
        assert values.between(m.valid_min, m.valid_max).all()
    dropouts = labels[labels["kind"] == "dropout"]
    for row in dropouts.itertuples():
        floor = WEATHER.measure(row.measure).valid_min
        assert after.loc[(row.station_id, row.event_time), row.measure] == floor


def test_anomalies_are_injected_only_into_the_measures_the_contract_watches():
    """Weather's wind direction is an angle (0 is a north wind): the detectors do not watch
    it, so evaluation must not count anomalies put there."""
    assert "wind_direction" in WEATHER.measure_names
    assert "wind_direction" not in WEATHER.anomaly_measures
    rng = np.random.default_rng(0)
    hours = pd.date_range("2017-01-01", periods=24 * 14, freq="h", tz="UTC")
    clean = pd.concat(
        [
            pd.DataFrame(
                {
                    "station_id": station,
                    "event_time": hours,
                    **{m: rng.uniform(10, 50, len(hours)) for m in WEATHER.measure_names},
                }
            )
            for station in STATIONS
        ],
        ignore_index=True,
    )
    altered, labels = inject_anomalies(clean, WEATHER, rate=0.1, seed=1)
    assert set(labels["measure"]) == set(WEATHER.anomaly_measures)
    before = clean.sort_values(["station_id", "event_time"], ignore_index=True)
    np.testing.assert_array_equal(altered["wind_direction"], before["wind_direction"])


def test_label_windows_marks_each_window_holding_an_altered_reading():
    features = window_features(
        _observations([("a", f"2024-01-01 {h:02d}:00", float(h)) for h in range(10, 16)]), WEATHER
    )
    labels = pd.DataFrame(
        {
            "station_id": ["a"],
            "event_time": [pd.Timestamp("2024-01-01 12:00")],
            "measure": ["temperature"],
            "kind": ["spike"],
        }
    )
    flagged = features.loc[label_windows(features, labels, WEATHER), "window_start"]
    assert [t.hour for t in flagged] == [10, 11, 12]


@pytest.fixture(scope="module")
def evaluation(weather):
    """Six clean weeks to train on, then two injected weeks to tune on and two to test on."""
    start = "2013-03-01"
    train_hours = _weeks(weather, start, 6)
    train = window_features(train_hours, WEATHER)
    model = fit_anomaly_model(train, WEATHER, hourly=train_hours, seed=0)

    def injected(after: int, seed: int):
        observations, labels = inject_anomalies(
            _weeks(weather, start, 2, after=after), WEATHER, rate=0.05, seed=seed
        )
        features = window_features(observations, WEATHER)
        return features, observations, labels, label_windows(features, labels, WEATHER)

    validation, validation_hours, _, validation_truth = injected(6, seed=1)
    model.thresholds = choose_thresholds(
        model.detector_scores(validation, validation_hours), validation_truth
    )
    test, test_hours, test_labels, test_truth = injected(8, seed=2)
    return model, test, test_hours, test_labels, test_truth


def test_injected_spikes_are_flagged_on_unseen_weeks(evaluation):
    model, test, hours, labels, truth = evaluation
    flagged = model.flag(test, hours)
    metrics = detection_metrics(truth, flagged)
    by_kind = evaluate_by_kind(flagged, label_windows_by_kind(test, labels, WEATHER))

    assert by_kind.loc["spike", "windows"] >= 10
    false_positive_rate = by_kind.loc["clean", "flag_rate"]
    assert by_kind.loc["spike", "flag_rate"] >= max(0.6, 5 * false_positive_rate)
    base_rate = truth.mean()
    assert metrics["precision"] > 2 * base_rate
    # A random flagger at the same flag rate has precision = base rate, recall = flag rate.
    flag_rate = flagged.mean()
    random_f1 = 2 * base_rate * flag_rate / (base_rate + flag_rate)
    assert metrics["f1"] > 2 * random_f1


def test_detection_metrics_counts():
    metrics = detection_metrics([True, True, False, False, True], [True, False, True, False, True])
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["support"]) == (2, 1, 1, 3)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(
        2 / 3
    )
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert detection_metrics([False], [False])["f1"] == 0.0


def test_unknown_stations_fall_back_to_global_statistics(evaluation):
    model, test, hours, _, _ = evaluation
    renamed = test.assign(station_id="nowhere")
    scores = model.detector_scores(renamed, hours.assign(station_id="nowhere"))
    assert np.isfinite(scores.to_numpy()).all()
    assert (scores[["residual", "drift", "stuck"]] > 0).any().all()
    assert not np.allclose(scores["forest"], model.detector_scores(test, hours)["forest"])


def test_saved_model_loads_with_identical_scores(evaluation, tmp_path):
    model, test, hours, _, _ = evaluation
    model.save(tmp_path / "anomaly")
    loaded = AnomalyModel.load(tmp_path / "anomaly")
    pd.testing.assert_frame_equal(
        loaded.detector_scores(test, hours), model.detector_scores(test, hours)
    )
    np.testing.assert_array_equal(loaded.detect(test, hours)[1], model.detect(test, hours)[1])
    assert loaded.thresholds == model.thresholds
    assert loaded.feature_columns == model.feature_columns
