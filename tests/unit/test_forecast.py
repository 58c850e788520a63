"""ml.forecast: splits, baselines and metrics on hand-built frames; Prophet on real Denver weather."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from ingest.datasets import read_weather
from ml.forecast import (
    ForecastBundle,
    ForecastConfig,
    SeriesModel,
    SeriesResult,
    Split,
    baseline_forecasts,
    error_metrics,
    evaluate,
    relative_mae,
    temporal_split,
    train_series,
)
from periscope.settings import Settings, get_settings

T0 = pd.Timestamp("2013-01-01 00:00")
HOUR = pd.Timedelta(hours=1)
FORECAST_COLUMNS = ["prophet", "yhat_lower", "yhat_upper", "seasonal_naive", "persistence"]
# A small config keeps the Prophet fit and its interval sampling quick.
CONFIG = ForecastConfig(uncertainty_samples=100)


def _hourly(values: list[float], start: pd.Timestamp = T0) -> pd.DataFrame:
    return pd.DataFrame(
        {"ds": pd.date_range(start, periods=len(values), freq="h"), "y": np.array(values, float)}
    )


# --- temporal_split ------------------------------------------------------------------------


def test_split_is_ordered_contiguous_and_sized() -> None:
    split = temporal_split(T0, T0 + pd.Timedelta(days=10) - HOUR, test_days=2, validation_days=3)

    assert split.train_start == T0
    assert split.test_end == T0 + pd.Timedelta(days=10)  # the hour after the last observation
    assert split.test_end - split.validation_end == pd.Timedelta(days=2)
    assert split.validation_end - split.train_end == pd.Timedelta(days=3)
    assert split.train_start < split.train_end < split.validation_end < split.test_end
    assert Split.from_dict(split.to_dict()) == split


def test_split_caps_train_days() -> None:
    split = temporal_split(T0, T0 + pd.Timedelta(days=30) - HOUR, max_train_days=5)

    assert split.train_end - split.train_start == pd.Timedelta(days=5)
    assert split.test_end == T0 + pd.Timedelta(days=30)


def test_split_needs_three_days_of_train() -> None:
    just_enough = T0 + pd.Timedelta(days=7) - HOUR  # 3 train + 2 validation + 2 test days
    assert temporal_split(T0, just_enough).train_end == T0 + pd.Timedelta(days=3)

    with pytest.raises(ValueError, match="3 days of training data"):
        temporal_split(T0, just_enough - HOUR)


# --- baselines, metrics --------------------------------------------------------------------


def test_baselines_use_only_data_up_to_the_origin() -> None:
    values = [float(i) for i in range(48)]  # y at hour i is i
    values[10] = math.nan
    values[30] = math.nan
    origin = T0 + 30 * HOUR

    baselines = baseline_forecasts(_hourly(values), origin, horizon_hours=30)

    assert baselines["ds"].tolist() == list(pd.date_range(origin + HOUR, periods=30, freq="h"))
    assert baselines["horizon_h"].tolist() == list(range(1, 31))
    # h <= 24: the same hour a day earlier (hours 7..30); h > 24: two days earlier (7..12),
    # never the observed hours 31..47 after the origin. Hours 10 and 30 are missing.
    day_before = [7, 8, 9, math.nan, *range(11, 30), math.nan]
    two_days_before = [7, 8, 9, math.nan, 11, 12]
    np.testing.assert_array_equal(baselines["seasonal_naive"], day_before + two_days_before)
    # The origin hour itself is missing: persistence falls back to hour 29.
    assert (baselines["persistence"] == 29.0).all()


def test_persistence_is_nan_without_any_observation() -> None:
    baselines = baseline_forecasts(_hourly([math.nan] * 5 + [1.0]), T0 + 3 * HOUR, 2)

    assert baselines["persistence"].isna().all()


def _hand_errors() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity_id": "a",
            "measure": "temperature",
            "horizon_h": [1, 2, 1, 1],
            "actual": [10.0, 0.5, -2.0, 4.0],
            "prophet": [12.0, 1.5, -2.0, 1.0],
            "yhat_lower": [11.0, 0.0, -3.0, 2.0],
            "yhat_upper": [13.0, 1.0, -1.0, 3.0],
            "seasonal_naive": [9.0, math.nan, 0.0, 4.0],
            "persistence": [10.0, 0.5, -2.0, 4.0],
        }
    )


def test_error_metrics_overall_by_hand() -> None:
    metrics = error_metrics(_hand_errors()).iloc[0]

    # prophet errors 2, 1, 0, -3; MAPE skips the 0.5 actual: (2/10 + 0/2 + 3/4) / 3.
    assert metrics["mae_prophet"] == pytest.approx(6 / 4)
    assert metrics["rmse_prophet"] == pytest.approx(math.sqrt(14 / 4))
    assert metrics["mape_prophet"] == pytest.approx(100 * 0.95 / 3)
    # seasonal naive has no forecast for the second row: errors -1, 2, 0.
    assert metrics["mae_seasonal_naive"] == pytest.approx(1.0)
    assert metrics["rmse_seasonal_naive"] == pytest.approx(math.sqrt(5 / 3))
    assert metrics["mape_seasonal_naive"] == pytest.approx(100 * 1.1 / 3)
    assert metrics["mae_persistence"] == 0.0
    assert metrics["coverage"] == pytest.approx(0.5)  # rows 2 and 3 are inside their interval
    assert metrics["n"] == 4


def test_error_metrics_by_group() -> None:
    metrics = error_metrics(_hand_errors(), by=["horizon_h"]).set_index("horizon_h")

    assert metrics.loc[1, "mae_prophet"] == pytest.approx(5 / 3)
    assert metrics.loc[1, "n"] == 3
    assert metrics.loc[2, "mae_prophet"] == pytest.approx(1.0)
    # Only |actual| < 1 in this group: no MAPE rather than a 200 % one.
    assert math.isnan(metrics.loc[2, "mape_prophet"])
    assert math.isnan(metrics.loc[2, "mae_seasonal_naive"])


def test_relative_mae_averages_series_ratios() -> None:
    errors = pd.DataFrame(
        {
            "entity_id": ["a", "a", "b", "b", "b"],
            "measure": "temperature",
            "actual": [0.0, 0.0, 0.0, 0.0, 0.0],
            "prophet": [1.0, 1.0, 3.0, 3.0, 100.0],
            "seasonal_naive": [2.0, 2.0, 2.0, -2.0, math.nan],  # last row is not compared
        }
    )

    assert relative_mae(errors) == pytest.approx((0.5 + 1.5) / 2)


# --- Prophet on real temperature -----------------------------------------------------------


@pytest.fixture(scope="module")
def temperature() -> pd.DataFrame:
    """Five weeks of Denver temperature on a complete tz-naive hourly grid."""
    with pytest.MonkeyPatch.context() as env:
        # Module-scoped, so the unit conftest's function-scoped settings do not apply yet.
        env.setitem(Settings.model_config, "env_file", None)
        env.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "unit")
        env.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "unit")
        get_settings.cache_clear()
        weather = read_weather(get_settings().data_dir, stations=["denver"])
        get_settings.cache_clear()
    frame = weather.select("timestamp", "temperature").to_pandas()
    observed = pd.Series(
        frame["temperature"].to_numpy(),
        index=frame["timestamp"].dt.tz_localize(None).astype("datetime64[ns]"),
    )
    grid = pd.date_range("2013-03-01", "2013-04-05", freq="h", inclusive="left")
    return pd.DataFrame({"ds": grid, "y": observed.reindex(grid).to_numpy()})


@pytest.fixture(scope="module")
def split(temperature: pd.DataFrame) -> Split:
    return temporal_split(
        temperature["ds"].min(), temperature["ds"].max(), test_days=3, validation_days=3
    )


@pytest.fixture(scope="module")
def trained(temperature: pd.DataFrame, split: Split) -> SeriesResult:
    """The one Prophet fit of this file."""
    return train_series("denver", "temperature", temperature, split, CONFIG)


@pytest.fixture(scope="module")
def model(trained: SeriesResult) -> SeriesModel:
    assert trained.model_json is not None, trained.skipped
    return SeriesModel.from_json(trained.model_json)


def _prophet_only(model: SeriesModel, hours: pd.DatetimeIndex) -> np.ndarray:
    return model.prophet.predict(pd.DataFrame({"ds": hours}))["yhat"].to_numpy()


def test_predict_returns_the_horizon(model: SeriesModel, temperature, split) -> None:
    origin = split.validation_end - HOUR
    history = temperature[temperature["ds"] <= origin]

    forecast = model.predict(history, origin, horizon_hours=24)

    assert forecast.columns.tolist() == ["ds", "horizon_h", "yhat", "yhat_lower", "yhat_upper"]
    assert forecast["ds"].tolist() == list(pd.date_range(origin + HOUR, periods=24, freq="h"))
    assert forecast["horizon_h"].tolist() == list(range(1, 25))
    values = forecast[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()
    assert np.isfinite(values).all()
    assert (forecast["yhat_lower"] <= forecast["yhat"]).all()
    assert (forecast["yhat"] <= forecast["yhat_upper"]).all()


def test_predict_adds_the_decaying_latest_residual(model: SeriesModel, temperature, split) -> None:
    origin = split.validation_end - HOUR
    history = temperature[temperature["ds"] <= origin]
    decaying = replace(model, residual_decay=0.9, naive_weight=0.0)
    future = pd.date_range(origin + HOUR, periods=6, freq="h")
    residual = history["y"].iloc[-1] - _prophet_only(model, pd.DatetimeIndex([origin]))[0]

    forecast = decaying.predict(history, origin, horizon_hours=6)

    expected = _prophet_only(model, future) + residual * 0.9 ** np.arange(1, 7)
    np.testing.assert_allclose(forecast["yhat"], expected, rtol=1e-9)
    assert abs(residual) > 0.1  # otherwise this test could not tell a correction from none

    # Nothing observed in the last 24 hours: plain Prophet.
    stale = history.assign(y=history["y"].where(history["ds"] <= origin - 24 * HOUR))
    np.testing.assert_allclose(
        decaying.predict(stale, origin, 6)["yhat"], _prophet_only(model, future), rtol=1e-9
    )


def test_real_temperature_scores(trained: SeriesResult, split: Split) -> None:
    errors = trained.errors
    assert trained.skipped is None
    assert errors is not None and not errors.empty
    assert errors["ds"].min() >= split.validation_end
    assert errors["ds"].max() < split.test_end

    score = relative_mae(errors)
    metrics = error_metrics(errors).iloc[0]
    assert math.isfinite(score) and score > 0
    assert 0.0 <= metrics["coverage"] <= 1.0
    # Denver March temperatures swing by 10-20 °C a day: a working model is within a few degrees.
    assert metrics["mae_prophet"] < 6.0


def test_decay_and_naive_weight_are_the_best_on_validation(
    model: SeriesModel, temperature, split
) -> None:
    def validation_mae(decay: float, weight: float) -> float:
        errors = evaluate(
            replace(model, residual_decay=decay, naive_weight=weight),
            temperature,
            split.train_end,
            split.validation_end,
            CONFIG,
        )
        return float(error_metrics(errors)["mae_prophet"].iloc[0])

    chosen = validation_mae(model.residual_decay, model.naive_weight)
    assert model.residual_decay in CONFIG.decay_grid
    assert model.naive_weight in CONFIG.naive_weight_grid
    assert all(
        chosen <= validation_mae(decay, weight) + 1e-9
        for decay in CONFIG.decay_grid
        for weight in CONFIG.naive_weight_grid
    )


def test_naive_weight_blends_in_the_same_hour_yesterday(
    model: SeriesModel, temperature, split
) -> None:
    origin = split.validation_end - HOUR
    history = temperature[temperature["ds"] <= origin]
    plain = replace(model, residual_decay=0.0, naive_weight=0.0).predict(history, origin, 6)
    blended = replace(model, residual_decay=0.0, naive_weight=0.5).predict(history, origin, 6)
    yesterday = history.set_index("ds")["y"].reindex(plain["ds"] - 24 * HOUR).to_numpy()
    assert not np.isnan(yesterday).any()
    np.testing.assert_allclose(blended["yhat"], 0.5 * plain["yhat"] + 0.5 * yesterday, rtol=1e-9)
    width = blended["yhat_upper"] - blended["yhat_lower"]
    np.testing.assert_allclose(width, plain["yhat_upper"] - plain["yhat_lower"], rtol=1e-9)


def test_evaluation_never_sees_after_the_origin(model: SeriesModel, temperature, split) -> None:
    errors = evaluate(model, temperature, split.validation_end, split.test_end, CONFIG)
    origins = sorted(errors["origin"].unique())
    cut = origins[len(origins) // 2]
    tampered = temperature.assign(y=temperature["y"].where(temperature["ds"] <= cut, 1e6))

    again = evaluate(model, tampered, split.validation_end, split.test_end, CONFIG)

    up_to_cut = errors["origin"] <= cut
    assert_frame_equal(
        errors.loc[up_to_cut, FORECAST_COLUMNS], again.loc[up_to_cut, FORECAST_COLUMNS]
    )
    # The tampering is visible to later origins, so the check above could have failed.
    assert (again.loc[~up_to_cut, "persistence"] == 1e6).all()


def test_bundle_round_trip(
    trained: SeriesResult, temperature: pd.DataFrame, split: Split, tmp_path: Path
) -> None:
    skipped = SeriesResult("denver", "pressure", None, None, "too few points", 0.0)
    bundle = ForecastBundle.from_results([trained, skipped], CONFIG, split, "weather")
    bundle.save(tmp_path / "bundle")

    loaded = ForecastBundle.load(tmp_path / "bundle")

    assert loaded.series() == [("denver", "temperature")]
    assert (loaded.config, loaded.split, loaded.source) == (CONFIG, split, "weather")
    origin = split.validation_end + 5 * HOUR
    history = temperature[temperature["ds"] <= origin]
    assert_frame_equal(
        loaded.predict("denver", "temperature", history, origin),
        bundle.predict("denver", "temperature", history, origin),
    )
    frames = {("denver", "temperature"): temperature, ("boston", "temperature"): temperature}
    assert_frame_equal(
        loaded.evaluate(frames, split.validation_end, split.test_end),
        trained.errors,
        check_dtype=False,
    )
    with pytest.raises(KeyError, match="'boston'"):
        loaded.predict("boston", "temperature", history, origin)


def test_too_few_points_is_a_skip_not_an_error(split: Split, temperature) -> None:
    sparse = temperature.assign(y=temperature["y"].where(temperature.index % 20 == 0))

    result = train_series("denver", "temperature", sparse, split, CONFIG)

    assert result.model_json is None and result.errors is None
    assert result.skipped is not None and "fewer than 72" in result.skipped
