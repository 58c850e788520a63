"""Hourly forecasts of many (entity, measure) series, vectorised over many origins at once.

Candidates: `persistence`, `seasonal_naive` (same hour yesterday), `prophet` per series
(flat trend, residual decay) and `gbm`, one scikit-learn gradient-boosted model per measure
across entities. A `ForecastBundle` holds them all and serves, per (measure, horizon bucket),
the one with the lowest validation MAE that is not worse than seasonal-naive, with conformal
80% bands, clipped to the contract's valid range.

- `core`: config, temporal split, the hourly grid, the two baselines.
- `prophet_method`, `global_method`: the fitted candidates.
- `bundle`: selection, calibration, fitting (`fit_bundle`), evaluation, save/load.
- `metrics`: MAE/RMSE/MAPE per method, coverage, relative MAE.
"""

from ml.forecast.bundle import (
    BUNDLE_FORMAT,
    ERROR_COLUMNS,
    METHOD_NAMES,
    ForecastBundle,
    ProphetResult,
    SeriesForecast,
    choose_method,
    conformal_offsets,
    fit_bundle,
    fit_every_global,
    fit_globals,
    fit_prophets,
    plan_measure,
    source_config,
    valid_ranges,
)
from ml.forecast.core import (
    BUCKETS,
    HISTORY_HOURS,
    ForecastConfig,
    ForecastError,
    NotEnoughData,
    Split,
    hours_since_epoch,
    persistence,
    seasonal_naive,
    temporal_split,
    to_grid,
)
from ml.forecast.global_method import GlobalModel
from ml.forecast.metrics import METHODS, error_metrics, relative_mae
from ml.forecast.prophet_method import ProphetSeries

__all__ = [
    "BUCKETS",
    "BUNDLE_FORMAT",
    "ERROR_COLUMNS",
    "HISTORY_HOURS",
    "METHODS",
    "METHOD_NAMES",
    "ForecastBundle",
    "ForecastConfig",
    "ForecastError",
    "NotEnoughData",
    "GlobalModel",
    "ProphetResult",
    "ProphetSeries",
    "SeriesForecast",
    "Split",
    "choose_method",
    "conformal_offsets",
    "error_metrics",
    "fit_bundle",
    "fit_every_global",
    "fit_globals",
    "fit_prophets",
    "hours_since_epoch",
    "persistence",
    "plan_measure",
    "relative_mae",
    "seasonal_naive",
    "source_config",
    "temporal_split",
    "to_grid",
    "valid_ranges",
]
