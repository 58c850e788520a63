"""Prophet per (entity, measure) as a forecast candidate: a flat trend, daily and weekly
seasonality (yearly only from a year of history), plus the latest residual decaying over the
horizon. Its point forecast depends on the hour alone, so it is computed in blocks of hours and
kept: training, evaluation and gold reuse them across origins and batches.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.forecast.core import ForecastConfig, NotEnoughData, Split, last_seen

if TYPE_CHECKING:
    from prophet import Prophet

__all__ = ["PlainProphet", "ProphetSeries", "fit_prophet"]

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
    origin (within a day) and k the hours since it.

    The model is kept as Prophet's own JSON (`prophet.serialize`), as it is saved. A model of
    the form `fit_prophet` makes is computed from that JSON's parameters (`PlainProphet`):
    building the Prophet object took 5 ms a series (its training history is parsed back into
    DataFrames), and predict 8 ms a block, which is what a scorer loading and warming 3,000
    series waited for at start. Any other model is built and asked through `predict`.
    """

    model_json: str
    decay: float
    train_points: int
    blocks: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _prophet: Prophet | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fitted(cls, prophet: Prophet, train_points: int) -> ProphetSeries:
        """A series of a Prophet model just fitted (decay 0 until chosen): its JSON is what is
        saved, and the object itself is kept rather than built again from it."""
        from prophet.serialize import model_to_json

        series = cls(model_to_json(prophet), 0.0, train_points)
        series._prophet = prophet
        return series

    @cached_property
    def plain(self) -> PlainProphet | None:
        """The parameters yhat is computed from, or None for a model `predict` must answer."""
        return PlainProphet.from_json(self.model_json)

    @property
    def prophet(self) -> Prophet:
        """The Prophet model itself, built from the JSON on first use."""
        if self._prophet is None:
            _import_prophet()
            from prophet.serialize import model_from_json

            self._prophet = model_from_json(self.model_json)
            self._prophet.uncertainty_samples = 0  # intervals are conformal: yhat is all we use
        return self._prophet

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
            hours = np.arange(b * BLOCK_HOURS, (b + 1) * BLOCK_HOURS)
            if self.plain is not None:
                self.blocks[b] = self.plain.yhat(hours)
            else:
                ds = pd.to_datetime(hours * _HOUR_US, unit="us")
                self.blocks[b] = self.prophet.predict(pd.DataFrame({"ds": ds}))["yhat"].to_numpy()
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
        return {"prophet": self.model_json, "decay": self.decay, "train_points": self.train_points}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProphetSeries:
        return cls(data["prophet"], float(data["decay"]), int(data["train_points"]))


@dataclass(frozen=True)
class PlainProphet:
    """What Prophet's yhat is made of for a flat trend and additive Fourier seasonalities
    without holidays, regressors or conditions (the models `fit_prophet` makes):
    yhat = (m + features(t) @ beta) * y_scale, t in days since the epoch, as
    `Prophet.predict` computes it."""

    m: float
    y_scale: float
    beta: np.ndarray  # (samples, features): one row for a MAP fit
    seasonalities: tuple[tuple[float, int], ...]  # (period in days, Fourier order), in order

    @classmethod
    def from_json(cls, model_json: str) -> PlainProphet | None:
        """From Prophet's JSON (`prophet.serialize.model_to_json`); None for any other form."""
        fields = json.loads(model_json)
        names, seasonalities = fields["seasonalities"]
        plain = (
            fields["growth"] == "flat"
            and fields.get("scaling", "absmax") == "absmax"  # the floor is 0
            and not fields["logistic_floor"]
            and fields["holidays"] is None
            and fields["country_holidays"] is None
            and not fields["extra_regressors"][0]
            and all(
                seasonalities[n]["mode"] == "additive"
                and seasonalities[n]["condition_name"] is None
                for n in names
            )
        )
        if not plain:
            return None
        return cls(
            m=float(np.nanmean(fields["params"]["m"])),
            y_scale=float(fields["y_scale"]),
            beta=np.asarray(fields["params"]["beta"], dtype="float64"),
            seasonalities=tuple(
                (float(seasonalities[n]["period"]), int(seasonalities[n]["fourier_order"]))
                for n in names
            ),
        )

    def yhat(self, hours: np.ndarray) -> np.ndarray:
        # Prophet's t is days since the epoch; hours / 24 is that value exactly.
        x = 2 * np.pi * (np.asarray(hours, dtype="float64") / 24)
        features = [
            wave
            for period, order in self.seasonalities
            for i in range(order)
            for wave in (np.sin((i + 1) / period * x), np.cos((i + 1) / period * x))
        ]
        trend = self.m * self.y_scale
        if not features:  # Prophet's one "zeros" feature
            return np.full(len(x), trend)
        seasonal = np.column_stack(features) @ self.beta.T
        return trend + np.nanmean(seasonal, axis=1) * self.y_scale


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
    model = ProphetSeries.fitted(prophet, int(seen.sum()))
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
