"""ml.forecast: splits, baselines, selection, calibration and clipping on synthetic series;
the whole bundle (Prophet, the global model, baselines) on real Denver weather."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from prophet.serialize import model_to_json

from ingest.datasets import read_weather
from ml.forecast import (
    BUCKETS,
    HISTORY_HOURS,
    METHOD_NAMES,
    ForecastBundle,
    ForecastConfig,
    ForecastError,
    Split,
    choose_method,
    conformal_offsets,
    error_metrics,
    fit_bundle,
    global_method,
    hours_since_epoch,
    persistence,
    plan_measure,
    relative_mae,
    seasonal_naive,
    temporal_split,
    to_grid,
    valid_ranges,
)
from ml.forecast.global_method import (
    choose_neighbours,
    fit_global,
    global_features,
    neighbour_features,
)
from ml.forecast.prophet_method import PlainProphet, ProphetSeries, _import_prophet, fit_prophet
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings, get_settings

T0 = pd.Timestamp("2013-01-01 00:00")
HOUR = pd.Timedelta(hours=1)
# Small trees: the global model fits in about a second on these series.
QUICK = ForecastConfig(gbm_max_iter=30, candidates=("persistence", "seasonal_naive", "gbm"))


def _hourly(values, start: pd.Timestamp = T0) -> pd.DataFrame:
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


# --- baselines --------------------------------------------------------------------------


def test_baselines_use_only_data_up_to_the_origin() -> None:
    y = np.arange(48, dtype=float)  # y at hour i is i
    y[10] = math.nan
    y[30] = math.nan
    origins = np.array([30])

    naive = seasonal_naive(origins, 0, y, 24)[0]
    last = persistence(origins, 0, y, 24)[0]

    # The same hour a day earlier (hours 7..30), never the observed hours 31..47 after the
    # origin. Hours 10 and 30 are missing.
    np.testing.assert_array_equal(naive, [7, 8, 9, math.nan, *range(11, 30), math.nan])
    # The origin hour itself is missing: persistence falls back to hour 29.
    assert (last == 29.0).all()


def test_persistence_is_nan_without_an_observation_within_a_day() -> None:
    y = np.array([1.0] + [math.nan] * 30)

    assert np.isnan(persistence(np.array([3, 26]), 0, y, 2)[1]).all()
    assert (persistence(np.array([3, 23]), 0, y, 2) == 1.0).all()
    # An origin before the grid has seen nothing.
    assert np.isnan(persistence(np.array([-1]), 0, y, 2)).all()


# --- metrics -------------------------------------------------------------------------------


def _hand_errors() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity_id": "a",
            "measure": "temperature",
            "horizon_h": [1, 2, 1, 1],
            "actual": [10.0, 0.5, -2.0, 4.0],
            "served": [12.0, 1.5, -2.0, 1.0],
            "yhat_lower": [11.0, 0.0, -3.0, 2.0],
            "yhat_upper": [13.0, 1.0, -1.0, 3.0],
            "seasonal_naive": [9.0, math.nan, 0.0, 4.0],
            "persistence": [10.0, 0.5, -2.0, 4.0],
        }
    )


def test_error_metrics_overall_by_hand() -> None:
    metrics = error_metrics(_hand_errors()).iloc[0]

    # served errors 2, 1, 0, -3; MAPE skips the 0.5 actual: (2/10 + 0/2 + 3/4) / 3.
    assert metrics["mae_served"] == pytest.approx(6 / 4)
    assert metrics["rmse_served"] == pytest.approx(math.sqrt(14 / 4))
    assert metrics["mape_served"] == pytest.approx(100 * 0.95 / 3)
    # seasonal naive has no forecast for the second row: errors -1, 2, 0.
    assert metrics["mae_seasonal_naive"] == pytest.approx(1.0)
    assert metrics["rmse_seasonal_naive"] == pytest.approx(math.sqrt(5 / 3))
    assert metrics["mape_seasonal_naive"] == pytest.approx(100 * 1.1 / 3)
    assert metrics["mae_persistence"] == 0.0
    assert metrics["coverage"] == pytest.approx(0.5)  # rows 2 and 3 are inside their interval
    assert metrics["n"] == 4


def test_error_metrics_by_group() -> None:
    metrics = error_metrics(_hand_errors(), by=["horizon_h"]).set_index("horizon_h")

    assert metrics.loc[1, "mae_served"] == pytest.approx(5 / 3)
    assert metrics.loc[1, "n"] == 3
    assert metrics.loc[2, "mae_served"] == pytest.approx(1.0)
    # Only |actual| < 1 in this group: no MAPE rather than a 200 % one.
    assert math.isnan(metrics.loc[2, "mape_served"])
    assert math.isnan(metrics.loc[2, "mae_seasonal_naive"])


def test_relative_mae_averages_series_ratios() -> None:
    errors = pd.DataFrame(
        {
            "entity_id": ["a", "a", "b", "b", "b"],
            "measure": "temperature",
            "actual": [0.0, 0.0, 0.0, 0.0, 0.0],
            "served": [1.0, 1.0, 3.0, 3.0, 100.0],
            "seasonal_naive": [2.0, 2.0, 2.0, -2.0, math.nan],  # last row is not compared
        }
    )

    assert relative_mae(errors) == pytest.approx((0.5 + 1.5) / 2)


# --- selection -----------------------------------------------------------------------------


def test_choose_method_never_serves_a_candidate_worse_than_seasonal_naive() -> None:
    # gbm beats persistence and prophet but not seasonal-naive: the baseline is served.
    maes = {"persistence": 3.0, "seasonal_naive": 1.0, "prophet": 2.0, "gbm": 1.5}
    assert choose_method(maes) == "seasonal_naive"
    # Better than seasonal-naive: the lowest is served.
    assert choose_method({**maes, "prophet": 0.9, "gbm": 0.8}) == "gbm"
    # A tie goes to the simpler method; no evidence keeps the baseline.
    assert choose_method({**maes, "persistence": 1.0}) == "persistence"
    assert choose_method({"seasonal_naive": math.nan, "gbm": 0.1}) == "seasonal_naive"


def _validation_rows(errors: dict[str, np.ndarray], horizon: int = 24) -> pd.DataFrame:
    """Validation rows of one entity: every origin has horizons 1..horizon; actual 0, so each
    method's forecast is its error."""
    n = len(next(iter(errors.values())))
    return pd.DataFrame(
        {
            "entity_id": "a",
            "horizon_h": np.tile(np.arange(1, horizon + 1), n // horizon),
            "actual": 0.0,
            "recent_change": 1.0,
            **errors,
        }
    )


def test_plan_serves_per_bucket_and_falls_back_where_a_model_loses() -> None:
    horizon = np.tile(np.arange(1, 25), 50)
    early = horizon <= 6
    rows = _validation_rows(
        {
            "seasonal_naive": np.full(len(horizon), 1.0),
            "persistence": np.where(early, 0.5, 3.0),
            # The model is best 1-12 h ahead, but 13-24 h ahead worse than seasonal-naive
            # (still better than persistence): there it must not be served.
            "gbm": np.where(horizon <= 12, 0.2, 1.2),
            "prophet": np.full(len(horizon), 2.0),
        }
    )
    config = ForecastConfig()

    plan = plan_measure(rows, config, means={"a": 0.0}, valid_range=(-10.0, 10.0))

    assert plan.served == ["gbm"] * 12 + ["seasonal_naive"] * 12
    for first, last in BUCKETS:
        maes = plan.validation_mae[f"{first}-{last}"]
        served = plan.served[first - 1]
        assert maes[served] <= maes["seasonal_naive"]


def test_plan_never_serves_worse_than_seasonal_naive_on_random_validation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        errors = {
            m: rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 2), 24 * 30)
            for m in METHOD_NAMES[:4]
        }
        plan = plan_measure(
            _validation_rows(errors), ForecastConfig(), means={"a": 0.0}, valid_range=(-9.0, 9.0)
        )
        for first, last in BUCKETS:
            maes = plan.validation_mae[f"{first}-{last}"]
            assert maes[plan.served[first - 1]] <= maes["seasonal_naive"]
            assert maes[plan.served[first - 1]] == min(maes.values())


# --- synthetic series: calibration, clipping, look-ahead -----------------------------------

SIGMA = 1.0


def _daily_with_noise(days: int, seed: int, level: float = 10.0, amplitude: float = 5.0):
    hours = np.arange(days * 24)
    noise = np.random.default_rng(seed).normal(0.0, SIGMA, len(hours))
    return level + amplitude * np.sin(2 * np.pi * hours / 24) + noise


@pytest.fixture(scope="module")
def noisy() -> dict[tuple[str, str], pd.DataFrame]:
    """Four entities of a daily cycle with Gaussian noise of known sigma, 90 days."""
    return {(f"e{i}", "y"): _hourly(_daily_with_noise(90, seed=i)) for i in range(4)}


@pytest.fixture(scope="module")
def noisy_split() -> Split:
    # 48 train days, 21 validation days, 21 test days.
    return temporal_split(T0, T0 + pd.Timedelta(days=90) - HOUR, test_days=21, validation_days=21)


@pytest.fixture(scope="module")
def noisy_bundle(noisy, noisy_split) -> ForecastBundle:
    return fit_bundle(noisy, noisy_split, QUICK, source="synthetic")


def test_conformal_band_covers_about_80_percent_of_unseen_data(
    noisy, noisy_split, noisy_bundle
) -> None:
    errors = noisy_bundle.evaluate(noisy, noisy_split.validation_end, noisy_split.test_end)
    inside = (errors["actual"] >= errors["yhat_lower"]) & (errors["actual"] <= errors["yhat_upper"])

    assert len(errors) > 10_000
    assert 0.77 <= inside.mean() <= 0.83
    for _, by_horizon in errors.assign(inside=inside).groupby("horizon_h"):
        assert 0.72 <= by_horizon["inside"].mean() <= 0.88
    # With iid noise, no method beats sigma: the band is at least the noise's own 80% band
    # (2 * 1.2816 sigma) and not much wider than seasonal-naive's (sigma * sqrt(2)).
    width = (errors["yhat_upper"] - errors["yhat_lower"]).mean()
    assert 2 * 1.2816 * SIGMA * 0.95 <= width <= 2 * 1.2816 * SIGMA * math.sqrt(2) * 1.1


def test_conformal_offsets_are_split_conformal_ranks_that_hold_coverage_on_few_residuals() -> None:
    # The floor((n + 1) * 0.1)-th and ceil((n + 1) * 0.9)-th smallest of n residuals.
    ranks = np.arange(1.0, 73.0)
    assert conformal_offsets(ranks[:9, None], 0.8) == (np.array([1.0]), np.array([9.0]))
    assert conformal_offsets(ranks[:, None], 0.8) == (np.array([7.0]), np.array([66.0]))
    # Too few for a rank: the extremes; NaN (no actual) is no residual.
    two = np.array([[3.0], [np.nan], [-1.0]])
    assert conformal_offsets(two, 0.8) == (np.array([-1.0]), np.array([3.0]))

    # 72 residuals a horizon (3 days of one station): a new residual from the same
    # distribution lands inside at least 80 % of the time. Plain quantiles: ~78 %.
    rng = np.random.default_rng(5)
    trials = 20_000
    lower, upper = conformal_offsets(rng.standard_t(4, size=(72, trials)), 0.8)
    new = rng.standard_t(4, size=trials)
    covered = ((new >= lower) & (new <= upper)).mean()
    assert 0.797 <= covered <= 0.83


def test_bands_widen_where_the_series_has_moved_more_and_cover_both_spells() -> None:
    # Noise of sigma 1 and 3 in alternating fortnights: a band sized for the average covers
    # nearly all of a calm fortnight and too little of a stormy one.
    days = 120
    hours = np.arange(days * 24)
    sigma = np.where((hours // (24 * 14)) % 2, 3.0, 1.0)
    frames = {
        (f"e{i}", "y"): _hourly(
            10
            + 5 * np.sin(2 * np.pi * hours / 24)
            + sigma * np.random.default_rng(20 + i).normal(size=len(hours))
        )
        for i in range(4)
    }
    split = temporal_split(
        T0, T0 + pd.Timedelta(days=days) - HOUR, test_days=42, validation_days=28
    )
    bundle = fit_bundle(frames, split, QUICK, source="synthetic")
    assert bundle.plans["y"].typical_change is not None

    errors = bundle.evaluate(frames, split.validation_end, split.test_end)
    # Judged from a week into each spell: the scale reads the last 6 days.
    hour = hours_since_epoch(errors["ds"]) - hours_since_epoch(T0)
    settled = (hour % (24 * 14)) >= 24 * 7
    inside = (errors["actual"] >= errors["yhat_lower"]) & (errors["actual"] <= errors["yhat_upper"])
    stormy = sigma[hour] == 3.0
    width = errors["yhat_upper"] - errors["yhat_lower"]
    for spell in (stormy, ~stormy):
        assert 0.72 <= inside[settled & spell].mean() <= 0.88
    assert width[settled & stormy].mean() > 2 * width[settled & ~stormy].mean()


def test_forecasts_and_bands_stay_in_the_valid_range() -> None:
    # Humidity-like: a cycle pushing against 100 %, readings clipped there.
    frames = {
        (f"e{i}", "humidity"): _hourly(np.clip(_daily_with_noise(40, i, 96.0, 8.0), 0, 100))
        for i in range(3)
    }
    # Counts: mostly 0, so a symmetric band would reach below it.
    rng = np.random.default_rng(5)
    frames.update(
        {(f"e{i}", "trips"): _hourly(rng.poisson(0.3, 40 * 24).astype(float)) for i in range(3)}
    )
    split = temporal_split(T0, T0 + pd.Timedelta(days=40) - HOUR, test_days=7, validation_days=10)
    ranges = {"humidity": (0.0, 100.0), "trips": (0.0, math.inf)}
    bundle = fit_bundle(frames, split, QUICK, source="synthetic", ranges=ranges)

    errors = bundle.evaluate(frames, split.validation_end, split.test_end)

    for measure, (lo, hi) in ranges.items():
        rows = errors[errors["measure"] == measure]
        values = rows[["served", "yhat_lower", "yhat_upper"]].to_numpy()
        assert (values >= lo).all() and (values <= hi).all(), measure
        assert (rows["yhat_lower"] <= rows["served"]).all()
        assert (rows["served"] <= rows["yhat_upper"]).all()
    # Without the clip the humidity band would cross 100 %: it touches it instead.
    assert (errors.loc[errors["measure"] == "humidity", "yhat_upper"] == 100.0).any()
    assert (errors.loc[errors["measure"] == "trips", "yhat_lower"] == 0.0).any()


def test_valid_ranges_come_from_the_contract() -> None:
    assert valid_ranges(get_contract("weather")) == {
        "temperature": (-90.0, 60.0),
        "humidity": (0.0, 100.0),
        "pressure": (500.0, 1090.0),
    }
    assert valid_ranges(get_contract("air_quality"))["co_gt"] == (0.0, 50.0)


def test_changing_the_future_changes_no_forecast(noisy, noisy_split, noisy_bundle) -> None:
    grid_start = hours_since_epoch(T0)
    y = noisy[("e1", "y")]["y"].to_numpy()
    origins = hours_since_epoch(noisy_split.validation_end) + np.array([0, 5, 30, 31])
    for origin in origins:
        future = np.arange(len(y)) > origin - grid_start
        changed = np.where(future, y + 50.0 * np.sin(np.arange(len(y))), y)
        request = [("e1", np.array([origin]), grid_start, y)]
        altered = [("e1", np.array([origin]), grid_start, changed)]
        for method in METHOD_NAMES:
            np.testing.assert_array_equal(
                noisy_bundle.candidate(method, "y", request)[0],
                noisy_bundle.candidate(method, "y", altered)[0],
                err_msg=method,
            )
        ours, theirs = (noisy_bundle.forecast_many("y", r)[0] for r in (request, altered))
        for name in ("yhat", "lower", "upper", "method"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
        # ... while the past does matter.
        past = np.where(np.arange(len(y)) == origin - grid_start, y + 5.0, y)
        moved = noisy_bundle.forecast_many("y", [("e1", np.array([origin]), grid_start, past)])
        assert not np.array_equal(moved[0].yhat, ours.yhat)


@pytest.mark.parametrize("week_cycle", [False, True])
def test_global_features_read_the_week_up_to_the_origin_and_nothing_after(week_cycle) -> None:
    rng = np.random.default_rng(3)
    y = 10 + np.sin(np.arange(24 * 20) * 2 * np.pi / 24) + rng.normal(0, 0.3, 24 * 20)
    ahead = np.arange(1, 25)
    features = functools.partial(global_features, week_cycle=week_cycle)
    for origin in (24 * 8, 24 * 12 + 7, 24 * 19 - 25):
        X, last = features(np.array([origin]), 0, y, ahead, 0.0)
        # The future (even its NaNs) changes no feature ...
        changed = y.copy()
        changed[origin + 1 :] = np.where(np.arange(len(y) - origin - 1) % 3, 99.0, np.nan)
        np.testing.assert_array_equal(features(np.array([origin]), 0, changed, ahead, 0.0)[0], X)
        # ... an hour a week back does (the same-hour means and the day-before mean read it),
        # one beyond HISTORY_HOURS does not.
        week_back, beyond = y.copy(), y.copy()
        week_back[origin + 1 - HISTORY_HOURS] += 7.0
        beyond[origin - HISTORY_HOURS] += 7.0
        assert not np.array_equal(features(np.array([origin]), 0, week_back, ahead, 0.0)[0], X)
        np.testing.assert_array_equal(features(np.array([origin]), 0, beyond, ahead, 0.0)[0], X)
        assert last[0] == np.float64(y[origin])


def test_a_forecast_without_recent_observations_falls_back_and_says_so(noisy_bundle) -> None:
    grid_start = 0
    y = _daily_with_noise(3, seed=9)
    y[30:] = math.nan  # nothing after hour 29
    origins = np.array([40, 60])  # 10 and 30 hours after the last observation

    result = noisy_bundle.forecast_many("y", [("e0", origins, grid_start, y)])[0]

    names = np.array(METHOD_NAMES)[result.method]
    assert np.isfinite(result.yhat).all()
    # 60 h: yesterday's hours are missing and the last observation is too old: the mean.
    assert set(names[1]) == {"mean"}
    assert np.allclose(result.yhat[1], noisy_bundle.means[("e0", "y")])
    # An entity the bundle never saw gets the baselines, never a model's guess.
    unknown = noisy_bundle.forecast_many("y", [("new", np.array([29]), 0, y)])[0]
    assert set(np.array(METHOD_NAMES)[unknown.method].ravel()) <= {
        "seasonal_naive",
        "persistence",
        "gbm",
    }


# --- save and load -------------------------------------------------------------------------


def test_bundle_round_trip(noisy, noisy_split, noisy_bundle, tmp_path: Path) -> None:
    noisy_bundle.save(tmp_path)
    loaded = ForecastBundle.load(tmp_path)
    assert ForecastBundle.is_current(tmp_path)

    assert loaded.series() == noisy_bundle.series()
    assert loaded.config == noisy_bundle.config and loaded.split == noisy_split
    start, end = noisy_split.validation_end, noisy_split.test_end
    assert_frame_equal(loaded.evaluate(noisy, start, end), noisy_bundle.evaluate(noisy, start, end))


@pytest.mark.parametrize("saved", [{}, {"format": 3}])  # Prophet-only; before the neighbours
def test_bundles_of_the_old_format_ask_for_a_retrain(tmp_path: Path, saved: dict) -> None:
    manifest = {"source": "weather", "series": [], **saved}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not ForecastBundle.is_current(tmp_path)  # training treats such a champion as none

    with pytest.raises(ForecastError, match="retrain it with `periscope train --source weather`"):
        ForecastBundle.load(tmp_path)
    # A PeriscopeError: `periscope models promote` on such a version prints this, no traceback.
    assert issubclass(ForecastError, PeriscopeError)


# --- the global model's neighbours ---------------------------------------------------------


def _travelling_weather(days: int = 60, seed: int = 7) -> dict[str, tuple[int, np.ndarray]]:
    """Three entities: `east` gets `west`'s day-to-day swings 18 h later; `island` its own."""
    rng = np.random.default_rng(seed)
    hours = days * 24 + 18
    swings = np.convolve(rng.normal(0, 1.0, hours), np.ones(36) / 6, mode="same")
    cycle = 3 * np.sin(2 * np.pi * np.arange(hours) / 24)
    west = 10 + cycle + swings + rng.normal(0, 0.2, hours)
    east = 12 + cycle + np.r_[np.zeros(18), swings[:-18]] + rng.normal(0, 0.2, hours)
    island = 20 + cycle + np.convolve(rng.normal(0, 1.0, hours), np.ones(36) / 6, mode="same")
    return {"west": (0, west[18:]), "east": (0, east[18:]), "island": (0, island[18:])}


def test_neighbours_are_the_entities_whose_swings_arrive_later() -> None:
    series = _travelling_weather()

    chosen = choose_neighbours(series, 0, 60 * 24, k=1)

    assert chosen["east"] == ["west"]
    assert choose_neighbours(series, 0, 60 * 24, k=0) == {e: [] for e in series}
    # Hours outside [start, end) are not read: the same choice from a copy blanked there.
    blanked = {
        e: (g, np.where(np.arange(len(y)) < 30 * 24, y, np.nan)) for e, (g, y) in series.items()
    }
    assert choose_neighbours(blanked, 0, 30 * 24, k=1) == choose_neighbours(series, 0, 30 * 24, k=1)


def test_neighbour_features_read_each_neighbour_up_to_the_origin_only() -> None:
    series = _travelling_weather()
    _, west = series["west"]
    for origin in (24 * 5, 24 * 30 + 7, 24 * 59):
        features = neighbour_features(np.array([origin]), [series["west"], None], k=2)
        assert features.shape == (1, 6) and np.isnan(features[0, 3:]).all()
        np.testing.assert_allclose(
            features[0, :3],
            [
                west[origin] - west[origin - 24],
                west[origin] - west[origin - 6],
                west[origin] - west[origin - np.array([24, 48, 72])].mean(),
            ],
        )
        # The future (even its NaNs) changes nothing; the neighbour's last hour does.
        future = west.copy()
        future[origin + 1 :] = np.where(np.arange(len(west) - origin - 1) % 2, 50.0, np.nan)
        np.testing.assert_array_equal(
            neighbour_features(np.array([origin]), [(0, future), None], k=2), features
        )
        moved = west.copy()
        moved[origin] += 1.0
        assert not np.array_equal(
            neighbour_features(np.array([origin]), [(0, moved), None], k=2), features
        )
        # A neighbour whose latest hours have not arrived is read at its last one (within 3 h).
        late = west[: origin - 1]
        expected = neighbour_features(np.array([origin - 2]), [(0, west)], k=1)
        np.testing.assert_array_equal(
            neighbour_features(np.array([origin]), [(0, late)], k=1), expected
        )
        assert np.isnan(
            neighbour_features(np.array([origin]), [(0, west[: origin - 3])], k=1)
        ).all()


def test_the_global_model_reads_its_neighbours_up_to_the_origin_and_nothing_after() -> None:
    series = _travelling_weather()
    frames = {(e, "y"): _hourly(y) for e, (_, y) in series.items()}
    split = temporal_split(T0, T0 + pd.Timedelta(days=60) - HOUR, test_days=7, validation_days=7)
    config = dataclasses.replace(QUICK, gbm_neighbours=3)
    model = fit_global("y", {e: to_grid(f) for (e, _), f in frames.items()}, split, config)
    assert model.neighbours["east"][0] == "west"
    grid_start = hours_since_epoch(T0)
    context = {e: (grid_start, y) for e, (_, y) in series.items()}
    _, east = series["east"]
    for origin in grid_start + np.array([24 * 50, 24 * 55 + 9]):
        request = [("east", np.array([origin]), grid_start, east)]
        yhat = model.forecast_many(request, 24, context=context)[0]
        # Every entity's future (even NaN) changes nothing ...
        future = {
            e: (g, np.where(np.arange(len(y)) > origin - g, np.nan, y))
            for e, (g, y) in context.items()
        }
        np.testing.assert_array_equal(model.forecast_many(request, 24, context=future)[0], yhat)
        # ... the neighbour's present does (a swing that has not reached `east` yet).
        _, west = context["west"]
        swung = dict(
            context,
            west=(
                grid_start,
                np.where(np.arange(len(west)) == origin - grid_start, west - 8.0, west),
            ),
        )
        assert not np.array_equal(model.forecast_many(request, 24, context=swung)[0], yhat)


def test_the_global_model_forecasts_the_same_in_blocks_of_rows_as_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    series = _travelling_weather()
    split = temporal_split(T0, T0 + pd.Timedelta(days=60) - HOUR, test_days=7, validation_days=7)
    model = fit_global("y", {e: to_grid(_hourly(y)) for e, (_, y) in series.items()}, split, QUICK)
    grid_start = hours_since_epoch(T0)
    origins = grid_start + 24 * 50 + np.arange(30)  # 3 entities x 30 origins x 24 h: 2,160 rows
    request = [(e, origins, grid_start, y) for e, (_, y) in series.items()]
    whole = model.forecast_many(request, 24)
    monkeypatch.setattr(global_method, "_PREDICT_BLOCK_ROWS", 100)  # 22 blocks, the last short
    for one, blocked in zip(whole, model.forecast_many(request, 24), strict=True):
        assert np.isfinite(one).all()
        np.testing.assert_array_equal(blocked, one)


def test_the_global_model_reads_the_day_of_year_only_from_a_year_of_training() -> None:
    fitted = {}
    for days in (60, 400):
        y = _daily_with_noise(days, seed=4)
        last = T0 + pd.Timedelta(days=days) - HOUR
        split = temporal_split(T0, last, test_days=7, validation_days=7)
        fitted[days] = fit_global("y", {"e0": to_grid(_hourly(y))}, split, QUICK), y
    assert fitted[400][0].year_cycle and not fitted[60][0].year_cycle
    # Without it, the same readings half a year later (whole days: the same hours of day)
    # give the same forecast: nothing tells the trees it is another season.
    model, y = fitted[60]
    origin, later = 24 * 50 + 5, 24 * 182
    grid_start = hours_since_epoch(T0)
    now = model.forecast("e0", np.array([grid_start + origin]), grid_start, y, 24)
    shifted = model.forecast(
        "e0", np.array([grid_start + later + origin]), grid_start + later, y, 24
    )
    np.testing.assert_array_equal(shifted, now)


# --- every candidate on real Denver weather ------------------------------------------------


@pytest.fixture(scope="module")
def denver() -> dict[tuple[str, str], pd.DataFrame]:
    """Ten weeks of Denver and Boston temperature on complete tz-naive hourly grids."""
    with pytest.MonkeyPatch.context() as env:
        # Module-scoped, so the unit conftest's function-scoped settings do not apply yet.
        env.setitem(Settings.model_config, "env_file", None)
        env.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "unit")
        env.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "unit")
        get_settings.cache_clear()
        weather = read_weather(get_settings().data_dir, stations=["denver", "boston"])
        get_settings.cache_clear()
    frame = weather.select("station_id", "timestamp", "temperature").to_pandas()
    grid = pd.date_range("2013-02-01", "2013-04-12", freq="h", inclusive="left")
    frames = {}
    for station, rows in frame.groupby("station_id"):
        observed = pd.Series(
            rows["temperature"].to_numpy(),
            index=rows["timestamp"].dt.tz_localize(None).astype("datetime64[ns]"),
        )
        frames[(str(station), "temperature")] = pd.DataFrame(
            {"ds": grid, "y": observed.reindex(grid).to_numpy()}
        )
    return frames


def test_every_candidate_on_real_temperature(denver) -> None:
    first, last = (f["ds"] for f in (denver[("denver", "temperature")],) * 2)
    split = temporal_split(first.min(), last.max(), test_days=7, validation_days=14)
    config = ForecastConfig(gbm_max_iter=60, prophet_train_days=28)

    bundle = fit_bundle(denver, split, config, source="weather", ranges={"temperature": (-90, 60)})
    errors = bundle.evaluate(denver, split.validation_end, split.test_end)

    assert set(bundle.prophets) == set(denver) and set(bundle.globals) == {"temperature"}
    plan = bundle.plans["temperature"]
    for first_h, last_h in BUCKETS:
        maes = plan.validation_mae[f"{first_h}-{last_h}"]
        assert maes[plan.served[first_h - 1]] <= maes["seasonal_naive"]
    # On the unseen week the served forecast beats "same hour yesterday" and its band covers
    # roughly what it should (a week of two stations: a loose check).
    assert relative_mae(errors) < 1.0
    inside = (errors["actual"] >= errors["yhat_lower"]) & (errors["actual"] <= errors["yhat_upper"])
    assert 0.6 <= inside.mean() <= 0.95
    assert set(errors["method"]) <= set(METHOD_NAMES)


def test_production_split_keeps_most_of_a_short_history_for_training() -> None:
    from ml.training import TrainConfig

    config = TrainConfig()  # 7 test days, up to 28 validation days, up to 730 train days
    long = config.split(T0, T0 + pd.Timedelta(days=400))
    assert long.test_end - long.validation_end == pd.Timedelta(days=7)
    assert long.validation_end - long.train_end == pd.Timedelta(days=28)
    assert long.train_start == T0

    short = config.split(T0, T0 + pd.Timedelta(days=40))  # a lake of a few weeks
    assert short.validation_end - short.train_end == pd.Timedelta(hours=round(33 / 4 * 24))
    assert short.train_end - short.train_start > pd.Timedelta(days=24)


def test_a_series_that_ends_before_the_train_cutoff_still_fits() -> None:
    """A quiet entity (a taxi zone with no trips in the last days) has a series shorter than the
    split: Prophet trains on the hours it has and the bundle forecasts it, no IndexError."""
    rng = np.random.default_rng(3)
    hours = np.arange(30 * 24)
    busy = _hourly(10 + 5 * np.sin(hours * 2 * np.pi / 24) + rng.normal(0, 1, len(hours)))
    quiet = busy.iloc[: 12 * 24].copy()  # stops on day 12, before the train part ends
    frames = {("a", "trips"): busy, ("b", "trips"): quiet}
    split = temporal_split(T0, T0 + 30 * 24 * HOUR, test_days=3, validation_days=3)
    assert quiet["ds"].max() < split.train_end
    config = ForecastConfig(
        candidates=("persistence", "seasonal_naive", "prophet"), prophet_train_days=28
    )

    bundle = fit_bundle(frames, split, config, source="taxi", ranges={"trips": (0, 1e6)})

    assert set(bundle.prophets) == set(frames)


def test_the_baselines_of_many_requests_equal_one_request_at_a_time():
    # Gold asks hundreds of requests at once; each answer must be the one-request function's:
    # gaps, empty histories, origins before, inside and past the observed hours.
    from ml.forecast.core import persistence_many, seasonal_naive_many

    rng = np.random.default_rng(7)
    for _ in range(60):
        requests = []
        for i in range(int(rng.integers(0, 10))):
            n = int(rng.integers(0, 200))
            observed = rng.normal(size=n)
            observed[rng.random(n) < rng.random()] = np.nan
            grid_start = 1000 + int(rng.integers(-5, 5))
            origins = np.unique(rng.integers(grid_start - 30, grid_start + n + 40, size=4))
            requests.append((f"e{i}", origins, grid_start, observed))
        for many, one in ((persistence_many, persistence), (seasonal_naive_many, seasonal_naive)):
            for horizon in (1, 24):
                got = many(requests, horizon)
                assert len(got) == len(requests)
                for answer, (_, origins, grid_start, observed) in zip(got, requests, strict=True):
                    expected = one(origins, grid_start, observed, horizon)
                    assert answer.shape == expected.shape
                    assert np.array_equal(answer, expected, equal_nan=True)


def test_the_recent_change_of_many_requests_is_the_mean_daily_change_up_to_each_origin():
    # What bands scale with, computed with running sums over every request end to end: each
    # origin's must be the plain mean over its own request's hours, never a neighbour's.
    from ml.forecast.core import CHANGE_HOURS, DAY_HOURS, recent_change_many

    def plain(origin: int, grid_start: int, y: np.ndarray) -> float:
        at = origin - grid_start
        pairs = [
            abs(y[t] - y[t - DAY_HOURS])
            for t in range(at - CHANGE_HOURS + 1, at + 1)
            if DAY_HOURS <= t < len(y)
        ]
        pairs = [p for p in pairs if np.isfinite(p)]
        return float(np.mean(pairs)) if pairs else math.nan

    rng = np.random.default_rng(11)
    for _ in range(30):
        requests = []
        for i in range(int(rng.integers(0, 8))):
            n = int(rng.integers(0, 260))
            observed = rng.normal(size=n) * rng.uniform(0.1, 5)
            observed[rng.random(n) < rng.random() * 0.5] = np.nan
            grid_start = int(rng.integers(-50, 50))
            origins = rng.integers(
                grid_start - 30, grid_start + n + 40, size=int(rng.integers(0, 5))
            )
            requests.append((f"e{i}", origins, grid_start, observed))
        expected = [plain(o, g, y) for _, origins, g, y in requests for o in origins]
        np.testing.assert_allclose(
            recent_change_many(requests), expected, atol=1e-5, equal_nan=True
        )


def test_a_source_whose_series_follow_the_week_gets_the_week_cycle_and_others_do_not() -> None:
    from ml.forecast import source_config
    from periscope.contracts import CONTRACTS

    base = ForecastConfig()
    assert not base.gbm_week_cycle
    assert source_config(base, CONTRACTS["air_quality"]).gbm_week_cycle  # road traffic's week
    assert source_config(base, CONTRACTS["weather"]) == base
    # saved with the bundle's config, so gold's scoring builds the same features
    config = source_config(base, CONTRACTS["air_quality"])
    assert ForecastConfig.from_dict(config.to_dict()).gbm_week_cycle
    # and training records what it fitted (the registry's params)
    from ml.training import TrainConfig

    assert TrainConfig().for_source(CONTRACTS["air_quality"]).params()["forecast_gbm_week_cycle"]
    assert not TrainConfig().for_source(CONTRACTS["weather"]).params()["forecast_gbm_week_cycle"]


def test_prophet_yhat_from_the_parameters_equals_prophets_predict(denver) -> None:
    rows = denver[("denver", "temperature")]
    split = temporal_split(rows["ds"].min(), rows["ds"].max(), test_days=7, validation_days=14)
    grid_start = hours_since_epoch(rows["ds"].min())
    fitted = fit_prophet(
        grid_start, rows["y"].to_numpy(), split, ForecastConfig(prophet_train_days=28)
    )
    # A model with a yearly and a custom seasonality too: several Fourier blocks, in Prophet's
    # column order.
    wide = _import_prophet()(growth="flat", yearly_seasonality=True, uncertainty_samples=0)
    wide.add_seasonality("eight_hours", period=8 / 24, fourier_order=2)
    wide.fit(pd.DataFrame({"ds": rows["ds"], "y": rows["y"]}).dropna())
    # Blocks before, inside and long after training.
    hours = np.arange(grid_start - 500, grid_start + 9_000, 7)

    for model in (fitted.prophet, wide):
        saved = ProphetSeries.from_json({**fitted.to_json(), "prophet": model_to_json(model)})
        assert PlainProphet.from_json(saved.model_json) is not None
        expected = model.predict(
            pd.DataFrame({"ds": pd.to_datetime(hours * 3_600_000_000, unit="us")})
        )["yhat"].to_numpy()
        np.testing.assert_allclose(saved.yhat(hours), expected, rtol=1e-12, atol=1e-9)
        assert saved._prophet is None  # computed without building the Prophet object


def test_a_prophet_model_of_another_form_is_left_to_predict(denver) -> None:
    rows = pd.DataFrame(denver[("denver", "temperature")]).dropna()
    model = _import_prophet()(growth="linear", uncertainty_samples=0)  # a trend with changepoints
    model.fit(rows)
    saved = ProphetSeries(model_to_json(model), decay=0.0, train_points=len(rows))
    assert PlainProphet.from_json(saved.model_json) is None
    last = hours_since_epoch(rows["ds"].max())
    hours = np.arange(last, last + 48)
    expected = model.predict(
        pd.DataFrame({"ds": pd.to_datetime(hours * 3_600_000_000, unit="us")})
    )["yhat"].to_numpy()
    np.testing.assert_array_equal(saved.yhat(hours), expected)
