"""One gradient-boosted model per measure across every entity of a source, a forecast candidate.

Direct multi-horizon: one row per (origin, hours ahead), predicting the change from the latest
observation. Features are what the day up to the origin shows (the latest value, the last 24
hours relative to it, how old it is, its mean against the day before's), the target's hour
yesterday and on average over the last 3 and 7 days, the target hour's calendar (hour of day
and day of year as sin/cos), the horizon and the entity (categorical).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.forecast.core import (
    DAY_HOURS,
    HISTORY_HOURS,
    ForecastConfig,
    NotEnoughData,
    Split,
    hours_since_epoch,
    last_seen,
    values_at,
)

__all__ = ["GlobalModel", "fit_global", "global_features"]

# HistGradientBoosting's categorical codes must be below its 255 bins; later entities are
# treated as unknown (NaN), which the trees handle like a missing value.
_MAX_CATEGORIES = 254
_YEAR_HOURS = 365.25 * DAY_HOURS
_SEED = 0


def _one_thread() -> Any:
    """OpenMP on one thread: scikit-learn's trees otherwise spin on every core, and with the
    cores shared (Ray tasks, other stages) that made a fit 6x slower, not faster."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # hours without any observation have no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def global_features(
    origins: np.ndarray,
    grid_start: int,
    observed: np.ndarray,
    ahead: np.ndarray,
    entity_code: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(X, last): one feature row per (origin, hours ahead in `ahead`), origin-major, and the
    latest observation per origin (NaN: none within a day). Reads y only up to each origin,
    at most HISTORY_HOURS back; every level is relative to the latest value."""
    origins = np.asarray(origins)
    n = len(origins)
    at = origins - grid_start
    seen = last_seen(origins, grid_start, observed)
    last = np.where(seen >= 0, values_at(observed, seen), np.nan)
    # The last day relative to the latest value: its shape, level-free.
    lags = values_at(observed, at[:, None] - np.arange(DAY_HOURS)) - last[:, None]
    age = np.where(seen >= 0, at - seen, np.nan).astype(float)
    day_mean = _nanmean(lags, axis=1)
    # How the level moved: the last day's mean against the day before's (a front passing).
    day_before = values_at(observed, at[:, None] - DAY_HOURS - np.arange(DAY_HOURS)) - last[:, None]
    day_change = day_mean - _nanmean(day_before, axis=1)
    per_origin = np.column_stack([last, age, lags, day_mean, day_change])
    horizon = len(ahead)
    target = origins[:, None] + ahead  # hours since the epoch
    # The target's hour on each of the last 7 days (all at or before the origin for horizons
    # up to a day): yesterday's alone is noisy, their means carry the daily cycle's level.
    days_back = DAY_HOURS * np.arange(1, HISTORY_HOURS // DAY_HOURS + 1)
    same_hour = (
        values_at(observed, target[:, :, None] - days_back - grid_start) - last[:, None, None]
    )
    yesterday = same_hour[:, :, 0]
    same_hour_3 = _nanmean(same_hour[:, :, :3], axis=2)
    same_hour_7 = _nanmean(same_hour, axis=2)
    hour_angle = 2 * np.pi * (target % DAY_HOURS) / DAY_HOURS
    year_angle = 2 * np.pi * (target % _YEAR_HOURS) / _YEAR_HOURS
    per_row = np.stack(
        [
            yesterday,
            same_hour_3,
            same_hour_7,
            np.sin(hour_angle),
            np.cos(hour_angle),
            np.sin(year_angle),
            np.cos(year_angle),
            np.broadcast_to(ahead, target.shape).astype(float),
            np.full(target.shape, entity_code, dtype=float),
        ],
        axis=2,
    ).reshape(n * horizon, -1)
    X = np.hstack([np.repeat(per_origin, horizon, axis=0), per_row])
    return X.astype(np.float32), last


@dataclass
class GlobalModel:
    """The fitted HistGradientBoostingRegressor of one measure and the entities it knows."""

    measure: str
    entities: list[str]
    regressor: Any  # sklearn.ensemble.HistGradientBoostingRegressor
    train_rows: int

    def entity_code(self, entity_id: str) -> float:
        try:
            code = self.entities.index(entity_id)
        except ValueError:
            return np.nan
        return float(code) if code < _MAX_CATEGORIES else np.nan

    def forecast_many(
        self,
        requests: list[tuple[str, np.ndarray, int, np.ndarray]],
        horizon: int,
        *,
        needed: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """yhat (origins x horizon) for each (entity, origins, grid_start, observed), in one
        predict call: the trees' fixed cost is paid once per batch, not per entity. Only the
        hours ahead marked in `needed` (a boolean mask over 1..horizon) are predicted, the
        others are NaN: the trees are most of gold's cost, so it asks only where it serves them."""
        ahead = np.arange(1, horizon + 1)
        if needed is not None:
            ahead = ahead[needed]
        parts, lasts = [], []
        for entity_id, origins, grid_start, observed in requests:
            X, last = global_features(
                origins, grid_start, observed, ahead, self.entity_code(entity_id)
            )
            parts.append(X)
            lasts.append(last)
        if not parts:
            return []
        X = np.vstack(parts)
        with _one_thread():
            change = self.regressor.predict(X) if len(X) else np.zeros(0)
        out, offset = [], 0
        for last in lasts:
            rows = len(last) * len(ahead)
            yhat = np.full((len(last), horizon), np.nan)
            yhat[:, ahead - 1] = last[:, None] + change[offset : offset + rows].reshape(
                len(last), len(ahead)
            )
            out.append(yhat)
            offset += rows
        return out

    def forecast(
        self,
        entity_id: str,
        origins: np.ndarray,
        grid_start: int,
        observed: np.ndarray,
        horizon: int,
    ) -> np.ndarray:
        return self.forecast_many([(entity_id, origins, grid_start, observed)], horizon)[0]

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=5)

    @staticmethod
    def from_bytes(data: bytes) -> GlobalModel:
        model = pickle.loads(data)  # noqa: S301 - the registry's own artefact
        if not isinstance(model, GlobalModel):
            raise TypeError(f"not a GlobalModel: {type(model).__name__}")
        return model


def fit_global(
    measure: str,
    series: dict[str, tuple[int, np.ndarray]],
    split: Split,
    config: ForecastConfig,
) -> GlobalModel:
    """Fit one measure's model on the train part of every entity's (grid_start, y).

    Origins every `gbm_origin_every_hours` whose whole horizon lies in the train part; at most
    `gbm_max_rows` rows (a seeded sample). Raises NotEnoughData without any row.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    entities = sorted(series)
    horizon = config.horizon_hours
    train_start = hours_since_epoch(split.train_start)
    train_end = hours_since_epoch(split.train_end)
    xs, ys = [], []
    for code, entity_id in enumerate(entities):
        grid_start, y = series[entity_id]
        # From a day in: the longer look-backs are NaN there, which the trees handle.
        first = max(train_start, grid_start) + DAY_HOURS - 1
        origins = np.arange(first, train_end - horizon, config.gbm_origin_every_hours)
        if len(origins) == 0:
            continue
        X, last = global_features(
            origins,
            grid_start,
            y,
            np.arange(1, horizon + 1),
            code if code < _MAX_CATEGORIES else np.nan,
        )
        target = origins[:, None] + np.arange(1, horizon + 1) - grid_start
        change = (values_at(y, target) - last[:, None]).ravel()
        keep = ~np.isnan(change)
        xs.append(X[keep])
        ys.append(change[keep])
    rows = sum(len(v) for v in ys)
    if rows < config.min_train_points:
        raise NotEnoughData(f"{rows} training rows for the global {measure} model")
    X, target = np.vstack(xs), np.concatenate(ys)
    if len(target) > config.gbm_max_rows:
        pick = np.random.default_rng(_SEED).choice(len(target), config.gbm_max_rows, replace=False)
        X, target = X[pick], target[pick]
    categorical = np.zeros(X.shape[1], dtype=bool)
    categorical[-1] = True  # the entity code is the last column
    regressor = HistGradientBoostingRegressor(
        loss=config.gbm_loss,
        max_iter=config.gbm_max_iter,
        learning_rate=config.gbm_learning_rate,
        max_leaf_nodes=config.gbm_max_leaf_nodes,
        categorical_features=categorical,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=_SEED,
    )
    with _one_thread():
        regressor.fit(X, target)
    return GlobalModel(measure, entities, regressor, len(target))
