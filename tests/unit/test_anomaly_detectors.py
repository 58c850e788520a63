"""Each anomaly detector on a tiny synthetic series: it fires on its own kind, not on a clean
day, the combined flag names it, and gold writes that name; thresholds, saving, old models;
the learned detector ranks unseen faults high and reads nothing after its window."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ml.anomaly import (
    DETECTORS,
    LEARNED_SIGNALS,
    LOOKBACK_HOURS,
    NEIGHBOUR_SIGNALS,
    AnomalyModel,
    HourlyGrid,
    _median_of_three,
    _nanmedian,
    choose_thresholds,
    episode_recall,
    fit_anomaly_model,
    inject_anomalies,
    label_windows,
)
from ml.forecast import temporal_split
from ml.gold.scoring import LoadedModels, history_window, score_windows
from ml.training import TrainConfig
from ml.training.anomalies import (
    VALIDATION_REPEATS,
    fit_learned,
    injected_test_sets,
)
from ml.windows import window_features
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError

WEATHER = get_contract("weather")
STATIONS = ["a", "b"]
TRAIN_DAYS = 28
START = pd.Timestamp("2024-01-01")


def _hours(days: int, start: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Hourly readings with a daily cycle and noise: temperature and humidity move every
    hour (two decimals), pressure and wind speed are whole numbers that often repeat."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=days * 24, freq="h")
    hour = times.hour.to_numpy()
    frames = []
    for i, station in enumerate(STATIONS):
        n = len(times)
        cycle = np.sin(2 * np.pi * hour / 24)
        frames.append(
            pd.DataFrame(
                {
                    "station_id": station,
                    "ds": times,
                    "temperature": np.round(10 + 5 * i + 5 * cycle + rng.normal(0, 0.5, n), 2),
                    "humidity": np.round(60 - 10 * cycle + rng.normal(0, 2, n), 2),
                    "pressure": np.round(
                        1010 + 3 * np.sin(np.arange(n) / 40) + rng.normal(0, 0.3, n)
                    ),
                    "wind_speed": np.round(rng.gamma(4, 1, n)),
                    "wind_direction": np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _windows(hours: pd.DataFrame) -> pd.DataFrame:
    return window_features(hours.rename(columns={"ds": "event_time"}), WEATHER)


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    hours = _hours(TRAIN_DAYS, START, seed=1)
    return fit_anomaly_model(_windows(hours), WEATHER, hourly=hours, n_estimators=50)


@pytest.fixture(scope="module")
def clean_day() -> pd.DataFrame:
    """Two clean days after training (the first gives the second its history)."""
    return _hours(2, START + pd.Timedelta(days=TRAIN_DAYS), seed=2)


AT = START + pd.Timedelta(days=TRAIN_DAYS + 1, hours=10)  # an hour of the second clean day


def _altered(clean: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The clean days with one episode of `kind` on station a from AT."""
    hours = clean.copy()
    a = hours["station_id"] == "a"
    offset = ((hours["ds"] - AT) / pd.Timedelta(hours=1)).to_numpy()
    if kind == "spike":
        hours.loc[a & (offset == 0), "temperature"] += 25.0
    elif kind == "stuck":
        before = hours.loc[a & (offset == -1), "temperature"].iloc[0]
        hours.loc[a & (offset >= 0) & (offset < 6), "temperature"] = before
    elif kind == "drift":  # a degree more every hour: no single hour stands out
        ramp = a & (offset >= 0) & (offset < 12)
        hours.loc[ramp, "temperature"] += 1.0 * (offset[ramp] + 1)
    elif kind == "dropout":
        hours.loc[a & (offset >= 0) & (offset < 4), "humidity"] = 0.0
    return hours


def _second_day(windows: pd.DataFrame) -> pd.DataFrame:
    """Windows wholly inside the second day: each has a full day of history."""
    start = START + pd.Timedelta(days=TRAIN_DAYS + 1)
    inside = (windows["window_start"] >= start) & (
        windows["window_end"] <= start + pd.Timedelta(days=1)
    )
    return windows[inside].reset_index(drop=True)


def test_no_detector_fires_on_a_clean_day(model, clean_day):
    windows = _second_day(_windows(clean_day))
    scores = model.detector_scores(windows, clean_day)
    ratios = scores / pd.Series(model.thresholds)
    assert (scores[["residual", "drift", "stuck"]] > 0).any().all()  # they did look
    assert (ratios < 1).all().all(), ratios.max()
    score, kind = model.detect(windows, clean_day)
    assert (score < model.threshold).all() and all(k is None for k in kind)


@pytest.mark.parametrize(
    ("kind", "detector"),
    [("spike", "spike"), ("stuck", "stuck"), ("drift", "drift"), ("dropout", "dropout")],
)
def test_each_detector_fires_on_its_own_kind_and_the_flag_names_it(
    model, clean_day, kind, detector
):
    hours = _altered(clean_day, kind)
    windows = _second_day(_windows(hours))
    scores = model.detector_scores(windows, hours)
    fired = scores[detector].to_numpy() >= model.thresholds[detector]
    on_a = (windows["station_id"] == "a").to_numpy()
    covers = (windows["window_end"] > AT).to_numpy() & (
        windows["window_start"] <= AT + pd.Timedelta(hours=12)
    ).to_numpy()
    assert fired.any() and not (fired & ~(on_a & covers)).any()
    score, named = model.detect(windows, hours)
    flagged = score >= model.threshold
    assert flagged.any() and not (flagged & ~on_a).any()
    # The detector of the kind names (most of) the flagged windows; never another hourly one.
    names = pd.Series(named[flagged]).value_counts()
    assert names.index[0] == detector, names
    assert set(names.index) <= {detector, "residual", "drift", "forest"}


def test_a_spike_is_judged_against_the_reading_after_it_only_where_that_is_in_the_window(
    model, clean_day
):
    hours = _altered(clean_day, "spike")
    windows = _second_day(_windows(hours))
    scores = model.detector_scores(windows, hours)["spike"].to_numpy()
    on_a = (windows["station_id"] == "a").to_numpy()
    start = windows["window_start"].dt.tz_localize(None).to_numpy()
    end = windows["window_end"].dt.tz_localize(None).to_numpy()
    at = np.datetime64(AT)
    holds = on_a & (start <= at) & (end > at)
    last_hour = holds & (end == at + np.timedelta64(1, "h"))
    fired = scores >= model.thresholds["spike"]
    # The windows with the hour after the spike fire; the one ending at the spike cannot see
    # whether the reading comes back, and says nothing (the residual detector judges it).
    assert (fired == (holds & ~last_hour)).all()
    assert last_hour.sum() == 1 and scores[last_hour][0] < 1.0
    # So each window scores the same without the readings after it.
    for i in np.flatnonzero(holds):
        seen = hours[hours["ds"] < end[i]]
        alone = model.detector_scores(windows.iloc[[i]], seen)["spike"].iloc[0]
        assert alone == pytest.approx(scores[i])


def test_gold_rows_name_the_detector_that_flagged_them(model, clean_day):
    hours = _altered(clean_day, "dropout")
    windows = _second_day(_windows(hours))
    rows = score_windows(
        windows,
        hours,
        LoadedModels("weather", None, None, model, 1),
        scored_at=datetime(2024, 3, 1, tzinfo=UTC),
        key="station_id",
    )
    flagged = rows["is_anomaly"].to_numpy(bool)
    assert set(rows.loc[flagged, "anomaly_kind"]) == {"dropout"}
    assert rows.loc[~flagged, "anomaly_kind"].isna().all()
    # The dropout's first hour lies in three windows of station a, each named.
    first = rows[(rows["station_id"] == "a") & (rows["anomaly_kind"] == "dropout")]
    assert len(first) >= 3
    # Without history the hourly detectors are silent: the forest alone decides.
    alone = score_windows(
        windows,
        hours.iloc[:0],
        LoadedModels("weather", None, None, model, 1),
        scored_at=datetime(2024, 3, 1, tzinfo=UTC),
        key="station_id",
    )
    assert set(alone["anomaly_kind"].dropna()) <= {"forest"}


def test_choose_thresholds_spends_the_false_alarm_budget_on_recall():
    truth = np.array([True] * 10 + [False] * 1000)
    scores = pd.DataFrame(0.0, index=range(len(truth)), columns=["x", "y"])
    scores.loc[0:4, "x"] = 5.0  # x alone finds half the anomalies
    scores.loc[5:9, "y"] = 5.0  # y the other half...
    scores.loc[10:15, "y"] = 6.0  # ...but only above 6 clean windows (0.6 %) as well
    scores.loc[16:18, "x"] = 4.0  # x's three clean windows (0.3 %) rank below its finds
    thresholds = choose_thresholds(scores, truth, max_false_alarm=0.005)
    assert 4.0 < thresholds["x"] <= 5.0  # all of x's finds, none of its false alarms
    assert not (scores["y"] >= thresholds["y"]).any()  # y's finds cost too many false alarms
    loose = choose_thresholds(scores, truth, max_false_alarm=0.01)
    assert 4.0 < loose["x"] <= 5.0 and 0 < loose["y"] <= 5.0  # y's half is worth its cost


def test_saved_model_round_trips_and_an_old_one_loads_as_its_forest(model, clean_day, tmp_path):
    hours = _altered(clean_day, "stuck")
    windows = _windows(hours)
    model.save(tmp_path / "new")
    loaded = AnomalyModel.load(tmp_path / "new")
    pd.testing.assert_frame_equal(
        loaded.detector_scores(windows, hours), model.detector_scores(windows, hours)
    )
    assert loaded.thresholds == model.thresholds and set(loaded.thresholds) == set(DETECTORS)
    np.testing.assert_array_equal(loaded.detect(windows, hours)[1], model.detect(windows, hours)[1])

    # A model of format 1 (before the detectors) was the forest and one threshold, and its
    # manifest had no format_version: as joblib would unpickle one saved then.
    old = copy.deepcopy(model)
    for name in ("hourly_stats", "thresholds", "format_version"):
        delattr(old, name)
    old.threshold = forest_threshold = 0.55
    (tmp_path / "old").mkdir()
    joblib.dump(old, tmp_path / "old" / "model.joblib")
    manifest = {"source": "weather", "threshold": forest_threshold, "training_rows": 1}
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    was = AnomalyModel.load(tmp_path / "old")
    score, kind = was.detect(windows, hours)
    forest = model.detector_scores(windows, hours)["forest"].to_numpy()
    np.testing.assert_array_equal(score >= was.threshold, forest >= forest_threshold)
    assert (forest >= forest_threshold).any() and set(kind[score >= 1]) == {"forest"}

    manifest["format_version"] = 99  # from a later Periscope
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PeriscopeError, match="format 99.*retrain"):
        AnomalyModel.load(tmp_path / "old")


def test_magnitudes_scale_episodes_and_episode_recall_counts_caught_ones():
    observations = _hours(14, START, seed=3).rename(columns={"ds": "event_time"})
    altered, labels = inject_anomalies(
        observations, WEATHER, rate=0.1, seed=5, magnitudes=(0.5, 2.0)
    )
    assert set(labels["magnitude"]) == {0.5, 2.0}
    assert labels.groupby("episode")[["kind", "magnitude", "station_id"]].nunique().max().max() == 1
    stuck = (
        labels[labels["kind"] == "stuck"]
        .groupby("episode")
        .agg(n=("kind", "size"), magnitude=("magnitude", "first"))
    )
    assert stuck.loc[stuck["magnitude"] == 2.0, "n"].max() > 4  # 8-16 readings, at most 4 when 0.5
    assert stuck.loc[stuck["magnitude"] == 0.5, "n"].max() <= 4

    windows = _windows(altered.rename(columns={"event_time": "ds"}))
    none = episode_recall(windows, np.zeros(len(windows), bool), labels, WEATHER)
    every = episode_recall(windows, np.ones(len(windows), bool), labels, WEATHER)
    assert len(none) == labels["episode"].nunique()
    assert not none["caught"].any() and every["caught"].all()


def _history(hours: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """What gold reads for these windows (`history_for`): every entity's hours from the
    earliest to the latest of history_window's spans."""
    spans = history_window(windows, "station_id")
    return hours[(hours["ds"] >= spans["since"].min()) & (hours["ds"] < spans["until"].max())]


@pytest.mark.parametrize("fixture", ["model", "learned_model"])
def test_a_window_scores_the_same_in_any_batch_from_gold_history(fixture, clean_day, request):
    model = request.getfixturevalue(fixture)
    hours = _altered(clean_day, "drift")
    windows = _second_day(_windows(hours))
    spans = history_window(windows, "station_id").set_index("station_id")["since"]
    first = windows.groupby("station_id")["window_start"].min()
    assert (spans <= first - pd.Timedelta(hours=LOOKBACK_HOURS)).all()  # history reaches back
    whole = model.detector_scores(windows, _history(hours, windows))
    # One station's windows alone (its neighbour's hours are still read), two stations', later.
    for part in (windows.iloc[10:14], windows.iloc[[3, 30]], windows.iloc[-2:]):
        assert part["station_id"].nunique() == (2 if len(part) == 2 and part.index[0] == 3 else 1)
        alone = model.detector_scores(part, _history(hours, part))
        pd.testing.assert_frame_equal(alone, whole.loc[part.index])
    assert (whole[["residual", "drift"]] > 0).any().all()


def _shared_weather(days: int, start: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Stations a and b under the same weather (a shared random walk of fronts) and c under
    weather of its own, each with a daily cycle and noise of its own."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=days * 24, freq="h")
    cycle = 5 * np.sin(2 * np.pi * times.hour.to_numpy() / 24)
    weather = {"ab": np.cumsum(rng.normal(0, 0.8, len(times)))}
    weather["c"] = np.cumsum(rng.normal(0, 0.8, len(times)))
    frames = []
    for station, shared in (("a", "ab"), ("b", "ab"), ("c", "c")):
        noise = rng.normal(0, 0.2, (4, len(times)))
        frames.append(
            pd.DataFrame(
                {
                    "station_id": station,
                    "ds": times,
                    "temperature": 10 + cycle + weather[shared] + noise[0],
                    "humidity": np.clip(60 - 2 * weather[shared] + 3 * noise[1], 1, 100),
                    "pressure": 1010 + weather[shared] + noise[2],
                    "wind_speed": np.abs(4 + weather[shared] / 4 + noise[3]),
                    "wind_direction": np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_neighbours_are_learnt_and_a_fault_stands_apart_from_them_where_a_front_does_not():
    train = _shared_weather(TRAIN_DAYS, START, seed=7)
    stats = fit_anomaly_model(_windows(train), WEATHER, hourly=train, n_estimators=20).hourly_stats
    temperature = stats.measures.index("temperature")
    neighbours = dict(zip(stats.entities, stats.neighbours[:, temperature, 0], strict=True))
    assert neighbours["a"] == "b" and neighbours["b"] == "a"  # not c, whose weather is its own

    later = _shared_weather(6, START + pd.Timedelta(days=TRAIN_DAYS), seed=8)
    at = later["ds"] >= later["ds"].min() + pd.Timedelta(days=5, hours=10)
    ramp = np.clip((later["ds"] - later.loc[at, "ds"].min()) / pd.Timedelta(hours=1) + 1, 0, 4)
    front = later.copy()  # the weather turns 8 degrees warmer over 4 hours at a and b
    front.loc[at & front["station_id"].isin(["a", "b"]), "temperature"] += 2.0 * ramp[at]
    fault = later.copy()  # a's sensor drifts 8 degrees over 4 hours; b reads the weather
    fault.loc[at & (fault["station_id"] == "a"), "temperature"] += 2.0 * ramp[at]
    apart = len(LEARNED_SIGNALS) + NEIGHBOUR_SIGNALS.index("drift_4h_vs_neighbours")
    own = LEARNED_SIGNALS.index("drift_4h")

    def signal(hours: pd.DataFrame, column: int) -> float:
        """Station a's signal 4 hours into the change."""
        grid = HourlyGrid.of(hours, "station_id", stats.measures)
        hour = int(hours.loc[at, "ds"].min().value // 3_600_000_000_000) + 3 - grid.first_hour
        return float(stats.signed(grid)[list(grid.entities).index("a"), hour, temperature, column])

    assert signal(front, own) == pytest.approx(signal(fault, own))  # a's own readings agree
    # Apart from b by twice as much as a front that parts them only by how each station's
    # scale for the hour was estimated (28 days of training).
    assert abs(signal(fault, apart)) > 4 and abs(signal(fault, apart)) > 2 * abs(
        signal(front, apart)
    )
    # A model saved before the neighbours reads the signals it read then.
    old = copy.deepcopy(stats)
    old.neighbours = None
    grid = HourlyGrid.of(fault, "station_id", stats.measures)
    assert old.signed(grid).shape[-1] == len(LEARNED_SIGNALS)
    assert stats.signed(grid).shape[-1] == len(LEARNED_SIGNALS) + len(NEIGHBOUR_SIGNALS)


def _stormier(hours: pd.DataFrame, factor: float, seed: int) -> pd.DataFrame:
    """The same hours with `factor` times the hour-to-hour noise in temperature and humidity:
    a season livelier than training (air quality's first winter)."""
    rng = np.random.default_rng(seed)
    out = hours.copy()
    for column, sd in (("temperature", 0.5), ("humidity", 2.0)):
        out[column] += rng.normal(0, sd * (factor - 1), len(out))
    return out


def test_a_model_trained_on_less_than_a_year_scales_its_scores_by_recent_activity(model):
    stats = model.hourly_stats
    assert stats.activity is not None  # 28 days of training
    later = _stormier(_hours(6, START + pd.Timedelta(days=TRAIN_DAYS), seed=5), 3.0, seed=6)
    grid = HourlyGrid.of(later, "station_id", stats.measures)
    unscaled = copy.deepcopy(stats)
    unscaled.activity = None  # as a model saved before it, or trained on a year
    temperature = stats.measures.index("temperature")
    factor = stats._activity(grid)[:, 4 * 24 :, temperature, 0]  # days with 3 days behind them
    assert np.all(factor >= 1.0) and 2.0 < np.median(factor) < 4.0  # the noise is 3x training's
    scaled_z, plain_z = stats._z(grid), unscaled._z(grid)
    hours = slice(4 * 24, None)
    assert np.median(plain_z["residual"][:, hours, temperature]) > 2 * np.median(
        scaled_z["residual"][:, hours, temperature]
    )
    # Pressure's noise is training's: its scores stay as they were.
    pressure = stats.measures.index("pressure")
    assert np.median(stats._activity(grid)[:, hours, pressure, 0]) < 1.2
    # A spike still stands out of the livelier hours.
    spiked = later.copy()
    at = (spiked["station_id"] == "a") & (spiked["ds"] == spiked["ds"].min() + pd.Timedelta(days=5))
    spiked.loc[at, "temperature"] += 40.0
    spike_grid = HourlyGrid.of(spiked, "station_id", stats.measures)
    hour = 5 * 24 - (spike_grid.first_hour - int(spiked["ds"].min().value // 3_600_000_000_000))
    spike = stats._z(spike_grid)["spike"][0, hour, temperature]
    assert spike > 3 * np.quantile(stats._z(grid)["spike"][:, hours, temperature], 0.99)


def test_a_model_trained_on_a_year_or_more_does_not_scale_by_recent_activity():
    from ml.anomaly import HourlyStats

    year = _hours(366, START, seed=9)
    measures = ["temperature", "humidity", "pressure", "wind_speed"]
    floors = np.array([WEATHER.measure(m).valid_min for m in measures])
    stats = HourlyStats.fit(HourlyGrid.of(year, "station_id", measures), floors, measures)
    assert stats.activity is None


def test_validation_leaves_the_forest_off_where_training_spans_less_than_a_year(model):
    # Scores where the forest alone finds the anomalies, with no false alarm.
    truth = np.array([True] * 10 + [False] * 1000)
    scores = pd.DataFrame(0.0, index=range(len(truth)), columns=list(DETECTORS))
    scores.loc[0:9, "forest"] = 0.9
    scores.loc[10:, "forest"] = 0.4
    scores.loc[0:4, "spike"] = 5.0  # and the spike rule half of them
    short = copy.deepcopy(model)  # 28 days of training
    short.set_thresholds(scores, truth, max_false_alarm=0.005)
    assert short.candidate_detectors() == [d for d in DETECTORS if d != "forest"]
    assert short.thresholds["forest"] == np.inf
    assert 0 < short.thresholds["spike"] <= 5.0
    year = copy.deepcopy(model)
    year.hourly_stats.activity = None  # as one trained on a year or more
    year.set_thresholds(scores, truth, max_false_alarm=0.005)
    assert 0.4 < year.thresholds["forest"] <= 0.9
    assert set(year.thresholds) == set(short.thresholds) == set(DETECTORS)


def _coupled(days: int, start: pd.Timestamp, seed: int) -> pd.DataFrame:
    """The hours of `_hours` with humidity moving against temperature hour by hour (one
    shared noise), as a station's gases move together."""
    hours = _hours(days, start, seed)
    shared = np.random.default_rng(seed + 100).normal(0, 1.0, len(hours))
    hours["temperature"] = np.round(hours["temperature"] + shared, 2)
    hours["humidity"] = np.round(hours["humidity"] - 4 * shared, 2)
    return hours


def test_a_spike_its_partner_measures_share_is_not_judged_a_fault():
    hours = _coupled(TRAIN_DAYS, START, seed=11)
    coupled = fit_anomaly_model(_windows(hours), WEATHER, hourly=hours, n_estimators=10)
    stats = coupled.hourly_stats
    t, h, p = (stats.measures.index(m) for m in ("temperature", "humidity", "pressure"))
    assert stats.partners[t, h] == stats.partners[h, t] == -1  # they move against each other
    assert not stats.partners[p].any()  # pressure moves on its own
    later = _coupled(2, START + pd.Timedelta(days=TRAIN_DAYS), seed=12)
    at = (later["station_id"] == "a") & (later["ds"] == AT)
    alone, shared = later.copy(), later.copy()
    alone.loc[at, "temperature"] += 15.0
    shared.loc[at, "temperature"] += 15.0
    shared.loc[at, "humidity"] -= 60.0  # the event moves humidity as it always does
    hour = int((AT - START - pd.Timedelta(days=TRAIN_DAYS)) / pd.Timedelta(hours=1))

    def spike(hours: pd.DataFrame) -> float:
        return stats._z(HourlyGrid.of(hours, "station_id", stats.measures))["spike"][0, hour, t]

    assert spike(alone) > 5.0  # a fault of one sensor
    assert spike(shared) < 2.0  # an event both measures show
    # A model saved before the partners judges both alike.
    old = copy.deepcopy(stats)
    old.partners = None
    grid = HourlyGrid.of(shared, "station_id", stats.measures)
    assert old._z(grid)["spike"][0, hour, t] > 5.0


@pytest.fixture(scope="module")
def learned_model(model) -> AnomalyModel:
    """The rules' model with the learned detector, fitted on faults injected into its training
    hours (as `periscope train` does)."""
    learned = copy.deepcopy(model)
    hours = _hours(TRAIN_DAYS, START, seed=1)
    config = TrainConfig(anomaly_rate=0.1, anomaly_learned_max_repeats=2)
    fit_learned(learned, hours, WEATHER, config)
    assert learned.learned is not None and learned.thresholds["learned"] == float("inf")
    return learned


def test_the_learned_detector_ranks_faults_it_never_saw_above_clean_windows(learned_model):
    hours = _hours(7, START + pd.Timedelta(days=TRAIN_DAYS), seed=4)
    altered, labels = inject_anomalies(
        hours.rename(columns={"ds": "event_time"}), WEATHER, rate=0.05, seed=11
    )
    altered = altered.rename(columns={"event_time": "ds"})
    windows = _windows(altered)
    truth = label_windows(windows, labels, WEATHER).to_numpy()
    learned = learned_model.detector_scores(windows, altered)["learned"].to_numpy()
    assert truth.sum() > 20 and roc_auc_score(truth, learned) > 0.8
    # With a threshold (validation's job), it flags and names itself when it alone fires.
    learned_model.thresholds["learned"] = float(np.quantile(learned[~truth], 0.99))
    try:
        score, kind = learned_model.detect(windows, altered)
    finally:
        learned_model.thresholds["learned"] = float("inf")
    assert "learned" in set(kind[score >= 1])


def test_the_learned_detector_reads_no_reading_after_its_window(learned_model, clean_day):
    hours = _altered(clean_day, "drift")
    windows = _second_day(_windows(hours))
    scores = learned_model.detector_scores(windows, hours)["learned"].to_numpy()
    assert np.ptp(scores) > 0  # it did look
    end = windows["window_end"].dt.tz_localize(None).to_numpy()
    for i in range(0, len(windows), 7):
        seen = hours[hours["ds"] < end[i]]
        alone = learned_model.detector_scores(windows.iloc[[i]], seen)["learned"].iloc[0]
        assert alone == pytest.approx(scores[i])


def test_a_saved_learned_detector_scores_as_before(learned_model, clean_day, tmp_path):
    hours = _altered(clean_day, "stuck")
    windows = _windows(hours)
    learned_model.save(tmp_path / "m")
    loaded = AnomalyModel.load(tmp_path / "m")
    pd.testing.assert_frame_equal(
        loaded.detector_scores(windows, hours), learned_model.detector_scores(windows, hours)
    )
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["learned_detector"]


def test_the_test_part_is_injected_as_often_as_validation_each_time_afresh():
    hours = _hours(12, START, seed=5)
    split = temporal_split(
        hours["ds"].min(), hours["ds"].max(), test_days=3, validation_days=3, max_train_days=None
    )
    test = injected_test_sets(hours, WEATHER, split, rate=0.05, seed=7)
    assert len(test) == VALIDATION_REPEATS
    first_episodes = {
        tuple(map(str, s.labels[["station_id", "event_time", "kind"]].iloc[0])) for s in test
    }
    assert len(first_episodes) == VALIDATION_REPEATS  # each injection is its own
    for s in test:  # inside the test part, with both anomalous and clean windows
        assert s.features["window_start"].min() >= split.validation_end
        assert s.features["window_end"].max() <= split.test_end
        assert s.truth.any() and not s.truth.all()


def test_the_median_of_three_is_the_general_median_bit_for_bit():
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(40, 50)) for _ in range(3)]
    for array in arrays:
        array[rng.random(array.shape) < 0.3] = np.nan  # one, two or all three missing
    assert np.array_equal(_median_of_three(*arrays), _nanmedian(arrays), equal_nan=True)
