"""Prophet per (entity, measure) as a forecast candidate: a flat trend, daily and weekly
seasonality (yearly only from a year of history), plus the latest residual decaying over the
horizon. Its point forecast depends on the hour alone, so it is computed in blocks of hours and
kept: training, evaluation and gold reuse them across origins and batches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.forecast.core import ForecastConfig, NotEnoughData, Split, last_seen

if TYPE_CHECKING:
    from prophet import Prophet

__all__ = ["ProphetSeries", "fit_prophet", "prophet_yhat"]

_HOUR_US = 3_600_000_000
# Prophet's yhat is computed and kept per series in epoch-aligned blocks of four weeks:
# a Prophet call costs ~10 ms whatever its length.
BLOCK_HOURS = 28 * 24
MAX_BLOCKS = 16  # ~15 months of hours; 5 KB per block and series


def _import_prophet() -> type[Prophet]:
    """Prophet, imported on first use and with its chatter silenced (no import-time logging)."""
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "plotly failed" at import
    logging.getLogger("cmdstanpy").addHandler(logging.NullHandler())
    for name in ("prophet", "cmdstanpy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from prophet import Prophet

    return Prophet


@dataclass
class ProphetSeries:
    """One fitted series: prophet(t) + r * decay**k, r the latest residual at or before the
    origin (within a day) and k the hours since it."""

    prophet: Prophet
    decay: float
    train_points: int
    blocks: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def yhat(self, hours: np.ndarray) -> np.ndarray:
        """Prophet's point forecast at the given hours since the epoch (any shape)."""
        hours = np.asarray(hours)
        block = hours // BLOCK_HOURS
        values = np.empty(hours.shape)
        for b in np.unique(block):
            inside = block == b
            values[inside] = self._block(int(b))[hours[inside] - b * BLOCK_HOURS]
        return values

    def _block(self, b: int) -> np.ndarray:
        if b not in self.blocks:
            if len(self.blocks) >= MAX_BLOCKS:
                del self.blocks[next(iter(self.blocks))]  # the oldest
            self.blocks[b] = prophet_yhat(
                self.prophet, np.arange(b * BLOCK_HOURS, (b + 1) * BLOCK_HOURS)
            )
        return self.blocks[b]

    def forecast(
        self,
        origins: np.ndarray,
        grid_start: int,
        observed: np.ndarray,
        horizon: int,
        *,
        decay: float | None = None,
    ) -> np.ndarray:
        """yhat (origins x horizon), reading `observed` only up to each origin."""
        decay = self.decay if decay is None else decay
        future = np.asarray(origins)[:, None] + np.arange(1, horizon + 1)
        base = self.yhat(future)
        seen = last_seen(origins, grid_start, observed)
        fresh = seen >= 0
        if decay > 0 and fresh.any():
            seen_hour = seen[fresh] + grid_start
            residual = observed[seen[fresh]] - self.yhat(seen_hour)
            since = (future[fresh] - seen_hour[:, None]).astype("float64")
            base[fresh] += residual[:, None] * decay**since
        return base

    def to_json(self) -> dict[str, Any]:
        from prophet.serialize import model_to_json

        return {
            "prophet": model_to_json(self.prophet),
            "decay": self.decay,
            "train_points": self.train_points,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProphetSeries:
        _import_prophet()
        from prophet.serialize import model_from_json

        prophet = model_from_json(data["prophet"])
        prophet.uncertainty_samples = 0  # intervals are conformal: yhat is all that is used
        return cls(prophet, float(data["decay"]), int(data["train_points"]))


def prophet_yhat(prophet: Prophet, hours: np.ndarray) -> np.ndarray:
    """Prophet's yhat at hours since the epoch (a 1-D array).

    The models `fit_prophet` makes (a flat trend, additive Fourier seasonalities, no holidays,
    regressors or conditions, intervals off) are computed here from their parameters, as
    `Prophet.predict` computes them: 65x faster, since predict spends ~8 ms per call on its
    DataFrames whatever the length. A scorer warming 3,000 series waited on that at start.
    Any other model goes through `predict`.
    """
    if not _plain(prophet):
        ds = pd.to_datetime(np.asarray(hours) * _HOUR_US, unit="us")
        return prophet.predict(pd.DataFrame({"ds": ds}))["yhat"].to_numpy()
    # Prophet's t for seasonality is days since the epoch; hours / 24 is that value exactly.
    x = 2 * np.pi * (np.asarray(hours, dtype="float64") / 24)
    features = [
        wave
        for props in prophet.seasonalities.values()
        for i in range(props["fourier_order"])
        for wave in (np.sin((i + 1) / props["period"] * x), np.cos((i + 1) / props["period"] * x))
    ]
    y_scale = float(prophet.y_scale)
    trend = float(np.nanmean(prophet.params["m"])) * y_scale  # the floor is 0 (absmax)
    if not features:  # Prophet's one "zeros" feature
        return np.full(len(x), trend)
    seasonal = np.column_stack(features) @ np.asarray(prophet.params["beta"]).T
    return trend + np.nanmean(seasonal, axis=1) * y_scale


def _plain(prophet: Prophet) -> bool:
    """Is this a model `prophet_yhat` computes itself (what `fit_prophet` makes)?"""
    return (
        prophet.growth == "flat"
        and prophet.scaling == "absmax"
        and not prophet.logistic_floor
        and prophet.holidays is None
        and prophet.country_holidays is None
        and not prophet.extra_regressors
        and not prophet.uncertainty_samples
        and all(
            props["mode"] == "additive" and props["condition_name"] is None
            for props in prophet.seasonalities.values()
        )
    )


def fit_prophet(
    grid_start: int, y: np.ndarray, split: Split, config: ForecastConfig
) -> ProphetSeries:
    """Fit Prophet on the last `prophet_train_days` of the train part, the residual decay on
    validation (lowest MAE over every hourly origin). Raises NotEnoughData."""
    from ml.forecast.core import hours_since_epoch, values_at

    train_end = hours_since_epoch(split.train_end)
    train_start = max(
        hours_since_epoch(split.train_start),
        train_end - round(config.prophet_train_days * 24),
        grid_start,
    )
    hours = np.arange(train_start, train_end)
    # NaN past the series' last hour: a sparse series (a quiet taxi zone) can end before train_end.
    values = values_at(y, hours - grid_start)
    seen = ~np.isnan(values)
    if seen.sum() < config.min_train_points:
        raise NotEnoughData(
            f"{int(seen.sum())} observed training hours, fewer than {config.min_train_points}"
        )
    train = pd.DataFrame(
        {"ds": pd.to_datetime(hours[seen] * _HOUR_US, unit="us"), "y": values[seen]}
    )
    train_days = (hours[seen][-1] - hours[seen][0]) / 24
    Prophet = _import_prophet()
    prophet = Prophet(
        growth="flat",
        daily_seasonality=True,
        weekly_seasonality=bool(train_days >= 14),
        yearly_seasonality=bool(train_days >= 365),
        uncertainty_samples=0,
        changepoint_prior_scale=config.changepoint_prior_scale,
        seasonality_prior_scale=config.seasonality_prior_scale,
    )
    prophet.fit(train)
    model = ProphetSeries(prophet, 0.0, int(seen.sum()))
    model.decay = _best_decay(model, grid_start, y, split, config)
    return model


def _best_decay(
    model: ProphetSeries, grid_start: int, y: np.ndarray, split: Split, config: ForecastConfig
) -> float:
    """The decay of the grid with the lowest validation MAE; 0 (plain Prophet) without evidence."""
    from ml.forecast.core import hours_since_epoch

    first = hours_since_epoch(split.train_end) - 1
    last = hours_since_epoch(split.validation_end) - 1 - config.horizon_hours
    origins = np.arange(max(first, grid_start), last + 1)
    if len(origins) == 0:
        return 0.0
    future = origins[:, None] + np.arange(1, config.horizon_hours + 1) - grid_start
    actual = np.where(future < len(y), y[np.clip(future, 0, len(y) - 1)], np.nan)
    if np.isnan(actual).all():
        return 0.0
    best, best_mae = 0.0, math.inf
    for decay in config.decay_grid:
        predicted = model.forecast(origins, grid_start, y, config.horizon_hours, decay=decay)
        mae = float(np.nanmean(np.abs(predicted - actual)))
        if mae < best_mae:
            best, best_mae = decay, mae
    return best
