"""ml.gold.scoring on real Denver and Boston weather: gold rows, batched forecasts equal predict's,
and each forecast names its method."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pandas.testing import assert_frame_equal

from ingest.datasets import read_weather
from ml.anomaly import AnomalyModel, fit_anomaly_model
from ml.forecast import (
    HISTORY_HOURS,
    METHOD_NAMES,
    ForecastBundle,
    ForecastConfig,
    fit_bundle,
    temporal_split,
)
from ml.gold.scoring import (
    ForecastMemo,
    LoadedModels,
    _hourly,
    gold_columns,
    gold_schema,
    history_window,
    score_windows,
    to_arrow,
)
from ml.windows import window_features
from periscope.contracts import get_contract
from periscope.settings import Settings, get_settings
from periscope.time import utc

WEATHER = get_contract("weather")  # 3 h windows sliding by 1 h
HOUR = pd.Timedelta(hours=1)
CONFIG = ForecastConfig(gbm_max_iter=30, prophet_train_days=21)
TRAIN = ("2013-03-01", "2013-04-05")
SCORE = ("2013-04-06", "2013-04-09")
# Denver's temperature and humidity are missing here: some origins lack a recent observation
# or a yesterday, and their forecasts fall back.
GAP = (pd.Timestamp("2013-04-07 00:00"), pd.Timestamp("2013-04-08 06:00"))
SCORED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Every method served somewhere, whatever validation chose: Prophet, the global model and
# both baselines, in different horizon buckets.
SERVED = {
    "temperature": ["prophet"] * 6 + ["gbm"] * 6 + ["seasonal_naive"] * 12,
    "humidity": ["persistence"] * 6 + ["prophet"] * 6 + ["gbm"] * 12,
}
SERIES = [("denver", "temperature"), ("denver", "humidity"), ("boston", "temperature")]

KEY = "station_id"  # the weather contract's key


@pytest.fixture(scope="module")
def observations() -> pd.DataFrame:
    with pytest.MonkeyPatch.context() as env:
        # Module-scoped, so the unit conftest's function-scoped settings do not apply yet.
        env.setitem(Settings.model_config, "env_file", None)
        env.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "unit")
        env.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "unit")
        get_settings.cache_clear()
        weather = read_weather(get_settings().data_dir, stations=["denver", "boston"])
        get_settings.cache_clear()
    frame = weather.rename({"timestamp": "event_time"}).to_pandas()
    frame["event_time"] = frame["event_time"].dt.tz_localize(None).astype("datetime64[ns]")
    return frame[frame["event_time"].between("2013-03-01", "2013-04-10", inclusive="left")]


@pytest.fixture(scope="module")
def hourly(observations: pd.DataFrame) -> pd.DataFrame:
    """What the I/O layer passes: hourly means per (station_id, ds), with Denver's gap."""
    frame = observations.rename(columns={"event_time": "ds"}).reset_index(drop=True)
    in_gap = (frame["station_id"] == "denver") & frame["ds"].between(*GAP)
    frame.loc[in_gap, ["temperature", "humidity"]] = np.nan
    return frame


def _series(hourly: pd.DataFrame, station: str, measure: str) -> pd.DataFrame:
    rows = hourly[hourly["station_id"] == station].set_index("ds")[measure]
    grid = pd.date_range(TRAIN[0], "2013-04-10", freq="h", inclusive="left")
    return pd.DataFrame({"ds": grid, "y": rows.reindex(grid).to_numpy()})


@pytest.fixture(scope="module")
def bundle(hourly: pd.DataFrame) -> ForecastBundle:
    """Every candidate fitted on three series, then the served methods fixed (SERVED)."""
    split = temporal_split(
        pd.Timestamp(TRAIN[0]), pd.Timestamp(TRAIN[1]) - HOUR, test_days=0, validation_days=7
    )
    frames = {}
    for station, measure in SERIES:
        series = _series(hourly, station, measure)
        frames[(station, measure)] = series[series["ds"] < TRAIN[1]]
    fitted = fit_bundle(
        frames,
        split,
        CONFIG,
        source="weather",
        ranges={"temperature": (-90, 60), "humidity": (0, 100)},
    )
    for measure, served in SERVED.items():
        fitted.plans[measure].served = served
    return fitted


@pytest.fixture(scope="module")
def anomaly(observations: pd.DataFrame) -> AnomalyModel:
    train = observations[observations["event_time"] < TRAIN[1]]
    return fit_anomaly_model(window_features(train, WEATHER), WEATHER, n_estimators=50)


@pytest.fixture(scope="module")
def features(observations: pd.DataFrame) -> pd.DataFrame:
    """Three days of silver windows of both stations, plus a station no model has seen."""
    scoring = observations[observations["event_time"].between(*SCORE, inclusive="left")]
    windows = window_features(scoring, WEATHER)
    nowhere = windows[windows["station_id"] == "denver"].head(5).assign(station_id="nowhere")
    return pd.concat([windows, nowhere], ignore_index=True)


@pytest.fixture(scope="module")
def models(bundle: ForecastBundle, anomaly: AnomalyModel) -> LoadedModels:
    return LoadedModels("weather", bundle, 3, anomaly, 7)


@pytest.fixture(scope="module")
def scored(features, hourly, models) -> pd.DataFrame:
    return score_windows(features, hourly, models, scored_at=SCORED_AT, key=KEY)


def _entries(row: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(list(row["forecasts"]), columns=[f.name for f in _forecast_fields()])


def _forecast_fields() -> list[pa.Field]:
    return list(gold_schema(KEY).field("forecasts").type.value_type)


def test_gold_schema() -> None:
    schema = gold_schema(KEY)

    assert schema.names == gold_columns(KEY)
    assert schema.field("window_start").type == pa.timestamp("us", tz="UTC")
    assert [(f.name, f.type) for f in _forecast_fields()] == [
        ("measure", pa.string()),
        ("horizon_h", pa.int32()),
        ("target_time", pa.timestamp("us", tz="UTC")),
        ("yhat", pa.float64()),
        ("yhat_lower", pa.float64()),
        ("yhat_upper", pa.float64()),
        ("method", pa.string()),
    ]


def test_every_window_gets_a_scored_row_with_its_forecasts(features, scored, anomaly) -> None:
    assert list(scored.columns) == gold_columns(KEY)
    assert len(scored) == len(features)
    assert scored["anomaly_score"].notna().all()
    np.testing.assert_array_equal(
        scored["is_anomaly"].to_numpy(bool), scored["anomaly_score"] >= anomaly.threshold
    )
    assert (scored["forecast_origin"] == scored["window_end"] - HOUR).all()
    assert scored["window_start"].dt.tz is not None
    assert (scored["scored_at"] == pd.Timestamp(SCORED_AT)).all()
    assert set(scored["forecast_model"]) == {"weather_forecast"}
    assert set(scored["anomaly_version"]) == {7}

    for _, row in scored[scored["station_id"] == "denver"].iloc[::17].iterrows():
        entries = _entries(row)
        assert entries["measure"].tolist() == ["humidity"] * 24 + ["temperature"] * 24
        assert entries["horizon_h"].tolist() == list(range(1, 25)) * 2
        expected = row["forecast_origin"] + pd.to_timedelta(entries["horizon_h"], unit="h")
        assert (entries["target_time"] == expected).all()
        values = entries[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()
        assert np.isfinite(values).all()
        assert (entries["yhat_lower"] <= entries["yhat"]).all()
        assert (entries["yhat"] <= entries["yhat_upper"]).all()
    # Boston has only a temperature model; Prophet is not a constant.
    boston = _entries(scored[scored["station_id"] == "boston"].iloc[0])
    assert set(boston["measure"]) == {"temperature"} and len(boston) == 24
    assert boston["yhat"].std() > 0.1


def test_gold_rows_name_the_method_of_each_forecast(scored) -> None:
    known = scored[scored["forecasts"].map(len) > 0]
    entries = pd.concat([_entries(row) for _, row in known.iterrows()], ignore_index=True)

    assert set(entries["method"]) <= set(METHOD_NAMES)
    # Where the served method could forecast, it is named; a fallback names itself.
    for measure, served in SERVED.items():
        rows = entries[entries["measure"] == measure]
        named = rows["method"].to_numpy()
        expected = np.array(served)[rows["horizon_h"].to_numpy() - 1]
        assert (named == expected).mean() > 0.75, measure  # Denver's gap falls back
        assert set(named[named != expected]) <= {"seasonal_naive", "persistence", "mean"}
    # Denver's gap leaves some origins without yesterday or a recent reading: they fell back.
    denver = scored[scored["station_id"] == "denver"]
    in_gap = denver["forecast_origin"].between(*(pd.Timestamp(t, tz="UTC") for t in GAP))
    gap_entries = pd.concat([_entries(row) for _, row in denver[in_gap].iterrows()])
    served = [
        SERVED[m][h - 1]
        for m, h in zip(gap_entries["measure"], gap_entries["horizon_h"], strict=True)
    ]
    assert (gap_entries["method"].to_numpy() != np.array(served)).any()


def test_batched_forecasts_equal_predict(scored, hourly, bundle) -> None:
    denver = scored[scored["station_id"] == "denver"]
    boston = scored[scored["station_id"] == "boston"]
    gap_start, gap_end = (pd.Timestamp(t, tz="UTC") for t in GAP)
    origins = [
        gap_start + 22 * HOUR,  # the latest observation 23 h back: still corrects
        gap_start + 23 * HOUR,  # 24 h back: too old
        gap_end + 3 * HOUR,  # fresh residual, some of yesterday missing
    ]
    rows = [
        denver.iloc[0],
        *(denver[denver["forecast_origin"] == origin].iloc[0] for origin in origins),
        denver.iloc[-1],
        boston.iloc[len(boston) // 2],
    ]
    for row in rows:
        origin = row["forecast_origin"].tz_localize(None)
        entries = _entries(row)
        station = row["station_id"]
        for measure, rows_of_measure in entries.groupby("measure", sort=False):
            series = _series(hourly, station, str(measure))
            expected = bundle.predict(station, measure, series[series["ds"] <= origin], origin)
            for column in ("yhat", "yhat_lower", "yhat_upper"):
                np.testing.assert_allclose(
                    rows_of_measure[column], expected[column], rtol=1e-9, err_msg=column
                )
            assert rows_of_measure["method"].tolist() == expected["method"].tolist()


def test_stations_and_models_without_forecasts(features, hourly, bundle, anomaly) -> None:
    scored = score_windows(
        features,
        hourly,
        LoadedModels("weather", bundle, 3, anomaly, 7),
        scored_at=SCORED_AT,
        key=KEY,
    )
    nowhere = scored[scored["station_id"] == "nowhere"]
    assert len(nowhere) == 5
    assert (nowhere["forecasts"].map(len) == 0).all()
    assert nowhere["anomaly_score"].notna().all()  # scored against the global statistics

    bare = score_windows(
        features,
        hourly,
        LoadedModels("weather", None, None, None, None),
        scored_at=SCORED_AT,
        key=KEY,
    )
    assert len(bare) == len(features)
    assert (bare["forecasts"].map(len) == 0).all()
    assert bare["anomaly_score"].isna().all() and bare["is_anomaly"].isna().all()
    assert bare[["forecast_model", "forecast_version", "anomaly_model"]].isna().all().all()


def test_loaded_models_reject_mismatches(bundle, anomaly) -> None:
    with pytest.raises(ValueError, match="together"):
        LoadedModels("weather", bundle, None, anomaly, 1)
    with pytest.raises(ValueError, match="cannot score air_quality"):
        LoadedModels("air_quality", None, None, anomaly, 1)


def test_rescoring_gives_the_same_rows_whatever_the_batch(
    features, hourly, models, scored, bundle, anomaly
) -> None:
    again = score_windows(features, hourly, models, scored_at=SCORED_AT, key=KEY)
    assert_frame_equal(again, scored)

    # A few windows alone, shuffled, tz-aware, one given twice: the same rows as in the batch.
    part = features.sample(n=20, random_state=1)
    part = part.assign(
        window_start=part["window_start"].dt.tz_localize("UTC"),
        window_end=part["window_end"].dt.tz_localize("UTC"),
    )
    altered = part.iloc[[3]].assign(temperature_mean=part.iloc[3]["temperature_mean"] + 40)
    batch = pd.concat([part, altered])
    # Fresh models, nothing cached yet.
    fresh = LoadedModels("weather", bundle, 3, anomaly, 7)
    rescored = score_windows(batch, hourly, fresh, scored_at=SCORED_AT, key=KEY)

    assert len(rescored) == 20
    key = ["station_id", "window_start"]
    expected = scored.merge(rescored[key], on=key).set_index(key)
    actual = rescored.set_index(key)
    twice = (part.iloc[3]["station_id"], part.iloc[3]["window_start"])
    others = actual.index != twice
    assert_frame_equal(actual[others], expected[others])
    # The later copy of the duplicated window won.
    assert actual.loc[twice, "anomaly_score"] != expected.loc[twice, "anomaly_score"]
    assert actual.loc[twice, "forecasts"] == expected.loc[twice, "forecasts"]


def test_a_live_window_forecasts_from_the_last_hour_ended_not_the_one_in_progress(
    features, hourly, models, scored
) -> None:
    boston = features[features["station_id"] == "boston"]
    scored_at = datetime(2013, 4, 8, 10, 20, tzinfo=UTC)  # the hour from 10:00 is in progress
    ended = pd.Timestamp("2013-04-08 09:00", tz="UTC")
    live = score_windows(boston, hourly, models, scored_at=scored_at, key=KEY)

    latest = utc(live["window_end"]) - HOUR
    assert (latest > ended).any() and (latest <= ended).any()
    assert (live["forecast_origin"] == latest.where(latest <= ended, ended)).all()
    # The hour in progress reaches no forecast: what it holds so far changes none.
    moved = hourly.copy()
    in_progress = (moved["station_id"] == "boston") & (moved["ds"] >= "2013-04-08 10:00")
    moved.loc[in_progress, ["temperature", "humidity"]] += 5.0
    again = score_windows(boston, moved, models, scored_at=scored_at, key=KEY)
    assert again["forecasts"].tolist() == live["forecasts"].tolist()
    # A window ending after the present forecasts what the window ending with the hour that
    # ended does, scored once that hour is long past.
    past = scored.set_index(["station_id", "window_end"])
    capped = live[latest > ended].iloc[-1]
    assert capped["forecasts"] == past.loc[("boston", ended + HOUR), "forecasts"]
    assert past.loc[("boston", capped["window_end"]), "forecasts"] != capped["forecasts"]
    # The anomaly detectors still read the hour in progress: the history reaches its end.
    span = history_window(boston, KEY, scored_at).iloc[0]
    assert span["until"] == boston["window_end"].max() > scored_at.replace(tzinfo=None)


def test_history_window_is_all_the_history_needed(features, hourly, models, scored) -> None:
    window = history_window(features, KEY)

    assert window["station_id"].tolist() == ["boston", "denver", "nowhere"]
    denver = window.set_index("station_id").loc["denver"]
    first_origin = features.loc[features["station_id"] == "denver", "window_end"].min() - HOUR
    assert denver["since"] == first_origin - (HISTORY_HOURS - 1) * HOUR
    assert denver["until"] == features["window_end"].max()

    bounds = hourly.merge(window, on="station_id")
    trimmed = bounds[(bounds["ds"] >= bounds["since"]) & (bounds["ds"] < bounds["until"])]
    assert len(trimmed) < len(hourly)
    assert_frame_equal(
        score_windows(features, trimmed, models, scored_at=SCORED_AT, key=KEY), scored
    )


def test_to_arrow_is_exactly_the_gold_schema(features, hourly, scored, bundle) -> None:
    table = to_arrow(scored, KEY)
    assert table.schema.equals(gold_schema(KEY), check_metadata=True)
    assert table.num_rows == len(scored)
    assert table.column("forecasts").to_pylist()[0] == list(scored["forecasts"].iloc[0])

    bare = score_windows(
        features.head(3),
        hourly,
        LoadedModels("weather", bundle, 1, None, None),
        scored_at=SCORED_AT,
        key=KEY,
    )
    nulls = to_arrow(bare, KEY)
    assert nulls.schema.equals(gold_schema(KEY))
    assert nulls.column("anomaly_score").null_count == 3
    assert nulls.column("is_anomaly").null_count == 3
    assert to_arrow(
        score_windows(
            features.head(0),
            hourly,
            LoadedModels("weather", bundle, 1, None, None),
            scored_at=SCORED_AT,
            key=KEY,
        ),
        KEY,
    ).schema.equals(gold_schema(KEY))


def _fresh(bundle: ForecastBundle, directory) -> ForecastBundle:
    """The same models with nothing cached."""
    bundle.save(directory)
    return ForecastBundle.load(directory)


def test_blocks_of_prophet_hours_are_reused_and_evicted(
    features, hourly, bundle, scored, monkeypatch, tmp_path
) -> None:
    # Blocks of 5 hours, at most 2 kept: a batch of three days computes and drops many.
    monkeypatch.setattr("ml.forecast.prophet_method.BLOCK_HOURS", 5)
    monkeypatch.setattr("ml.forecast.prophet_method.MAX_BLOCKS", 2)
    fresh = _fresh(bundle, tmp_path)
    models = LoadedModels("weather", fresh, 3, None, None)
    small = score_windows(features, hourly, models, scored_at=SCORED_AT, key=KEY)

    assert {len(series.blocks) for series in fresh.prophets.values()} == {2}

    for ours, theirs in zip(small["forecasts"], scored["forecasts"], strict=True):
        assert len(ours) == len(theirs)
        np.testing.assert_allclose(
            [e["yhat"] for e in ours], [e["yhat"] for e in theirs], rtol=1e-12
        )


def test_warming_builds_the_owned_series_and_changes_no_forecast(
    features, hourly, scored, bundle, anomaly, tmp_path
) -> None:
    fresh = _fresh(bundle, tmp_path)
    stations = sorted({station for station, _ in fresh.series()})
    owned = set(stations[:1])
    warm = LoadedModels("weather", fresh, 3, anomaly, 7)
    warmed = warm.warm(lambda s: s in owned, SCORED_AT)
    assert warmed == sum(1 for station, _ in fresh.prophets if station in owned) > 0
    assert {s for (s, _), p in fresh.prophets.items() if p.blocks} == owned
    assert LoadedModels("weather", None, None, anomaly, 7).warm(lambda s: True, SCORED_AT) == 0
    # Warm or cold, the same rows.
    assert_frame_equal(score_windows(features, hourly, warm, scored_at=SCORED_AT, key=KEY), scored)


def test_history_rows_finer_than_hours_and_infinities_change_nothing(
    features, hourly, models, scored
) -> None:
    # Each hourly row as two half-hour rows around its mean, plus a row of +inf (no reading).
    finer = hourly.assign(ds=hourly["ds"] + pd.Timedelta(minutes=10))
    spread = {m: finer[m] + 1.5 for m in ("temperature", "humidity", "pressure")}
    later = finer.assign(ds=finer["ds"] + pd.Timedelta(minutes=30), **spread)
    earlier = finer.assign(**{m: finer[m] - 1.5 for m in spread})
    broken = finer.head(200).assign(temperature=np.inf, humidity=-np.inf, pressure=np.inf)
    split = pd.concat([later, broken, earlier], ignore_index=True).sample(frac=1, random_state=3)

    again = score_windows(features, split, models, scored_at=SCORED_AT, key=KEY)

    assert again["forecasts"].map(len).tolist() == scored["forecasts"].map(len).tolist()
    for ours, theirs in zip(again["forecasts"], scored["forecasts"], strict=True):
        for name in ("yhat", "yhat_lower", "yhat_upper"):
            np.testing.assert_allclose(
                [f[name] for f in ours], [f[name] for f in theirs], rtol=0, atol=1e-9
            )
    # Without a measure's column its forecasts start from no observations: they differ.
    without = score_windows(
        features, hourly.drop(columns="humidity"), models, scored_at=SCORED_AT, key=KEY
    )
    assert without["forecasts"].map(len).tolist() == scored["forecasts"].map(len).tolist()
    assert not without["forecasts"].equals(scored["forecasts"])


def test_an_hour_without_rows_is_zero_for_a_count_and_missing_for_a_mean():
    """As training's grid (ml.data.series_frames): a zone with no trips that hour had 0 trips,
    but its mean fare is unknown, not 0."""
    hourly = pd.DataFrame(
        {
            "zone": ["a", "a"],
            "ds": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 02:00"], utc=True),
            "fare_mean": [10.0, 12.0],
            "trips": [5.0, 7.0],
        }
    )
    zeros = np.array([False, True])
    [(_, values)] = _hourly(hourly, ["a"], ["fare_mean", "trips"], "zone", zeros).values()
    assert values[:, 1].tolist() == [5.0, 0.0, 7.0]
    assert values[0, 0] == 10.0 and np.isnan(values[1, 0]) and values[2, 0] == 12.0
    [(_, means)] = _hourly(hourly, ["a"], ["fare_mean", "trips"], "zone").values()
    assert np.isnan(means[1]).all()  # without the flags, every empty hour is missing


class _Counting:
    """A bundle that counts the requests it is asked to forecast."""

    def __init__(self, bundle: ForecastBundle) -> None:
        self.bundle, self.asked = bundle, 0

    def forecast_many(self, measure, requests, *, context):
        self.asked += len(requests)
        return self.bundle.forecast_many(measure, requests, context=context)


def _hour(at: str) -> int:
    return int(pd.Timestamp(at).value // 3_600_000_000_000)


def test_the_forecast_memo_answers_a_repeated_question_and_forgets_when_an_hour_changes(
    hourly, bundle
):
    grid_start = _hour(TRAIN[0])
    observed = {s: _series(hourly, s, "temperature")["y"].to_numpy() for s in ("denver", "boston")}
    context = {s: (grid_start, y) for s, y in observed.items()}
    origin = np.array([_hour("2013-04-06 12:00")])
    requests = [
        (s, origin, grid_start, y[: origin[0] + 1 - grid_start]) for s, y in observed.items()
    ]
    memo, counting = ForecastMemo(), _Counting(bundle)

    def served(requests, context):
        return memo.forecast_many(counting, "temperature", requests, context)  # type: ignore[arg-type]

    first = served(requests, context)
    again = served(requests, context)  # the next round, same hour: nothing recomputed
    assert counting.asked == 2
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.yhat, b.yhat, equal_nan=True)
    # A later origin is a new question; the known one is still answered from the memo.
    later = np.array([origin[0] + 1])
    newer = [("boston", later, grid_start, observed["boston"][: later[0] + 1 - grid_start])]
    served(requests + newer, context)
    assert counting.asked == 3
    # A late reading changes one hour of Denver's: every forecast may read it (the global
    # model reads the neighbours), so all are made again, and equal a fresh bundle's.
    changed = observed["denver"].copy()
    changed[origin[0] - grid_start] += 5.0
    context = {**context, "denver": (grid_start, changed)}
    requests = [
        (s, origin, grid_start, context[s][1][: origin[0] + 1 - grid_start]) for s in observed
    ]
    redone = served(requests, context)
    assert counting.asked == 5
    fresh = bundle.forecast_many("temperature", requests, context=context)
    for a, b in zip(redone, fresh, strict=True):
        assert np.array_equal(a.yhat, b.yhat, equal_nan=True)
        assert np.array_equal(a.method, b.method)
    assert not np.array_equal(redone[0].yhat, first[0].yhat, equal_nan=True)
