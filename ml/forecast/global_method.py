"""One gradient-boosted model per measure across every entity of a source, a forecast candidate.

Direct multi-horizon: one row per (origin, hours ahead), predicting the change from the latest
observation. Features are what the day up to the origin shows (the latest value, the last 24
hours relative to it, how old it is, its mean against the day before's), the target's hour
yesterday and on average over the last 3 and 7 days, the target hour's calendar (hour of day
and, from a year of training history, day of year as sin/cos), the horizon and the entity
(categorical). And what the entity's neighbours show at the origin: weather travels (west to
east, ~500-1,000 km a day), so the recent change at the stations it comes from says much about
the next day. The neighbours are learnt on train, not read from coordinates: the entities
whose departure from the same hour yesterday best foretells the entity's own 18 h later.
"""

from __future__ import annotations

import functools
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

__all__ = [
    "GlobalModel",
    "choose_neighbours",
    "fit_global",
    "global_features",
    "neighbour_features",
]

Series = tuple[int, np.ndarray]  # (grid_start, y) of one entity's measure

# HistGradientBoosting's categorical codes must be below its 255 bins; later entities are
# treated as unknown (NaN), which the trees handle like a missing value.
_MAX_CATEGORIES = 254
_YEAR_HOURS = 365.25 * DAY_HOURS
_SEED = 0
# A neighbour's latest reading counts within this many hours up to the origin: in a stream
# its last hour may not have arrived yet when the entity's is scored.
_NEIGHBOUR_RECENT_HOURS = 3
# A neighbour's departure at t is matched with the entity's own at t + this many hours (the
# middle of the longest horizon bucket, 13-24 h, where the model loses most to yesterday).
_NEIGHBOUR_LEAD_HOURS = 18
_NEIGHBOUR_FEATURES = 3  # per neighbour: 24 h change, 6 h change, departure from 3 days
# The day of year is a feature only when training covers a whole year: on less, a test month
# outside the months trained on falls on whichever side of the trees' splits is nearest.
# (Air quality, trained on Sep-Nov 2004 for December: relative MAE NO2 0.808 -> 0.757,
# CO 0.753 -> 0.733 on the choosing span 2004-09 .. 2004-11 without it.)
_YEAR_CYCLE_DAYS = 365
# scikit-learn walks every row through one tree before the next: a gold batch (350k rows of
# float64, ~130 MB) is read from memory once per tree. Blocks of this many rows (~3 MB) stay in
# the cache across the trees, with the same predictions.
_PREDICT_BLOCK_ROWS = 8192


def _one_thread() -> Any:
    """OpenMP on one thread: scikit-learn's trees otherwise spin on every core, and with the
    cores shared (Ray tasks, other stages) that made a fit 6x slower, not faster."""
    return _thread_pools().limit(limits=1, user_api="openmp")


@functools.cache
def _thread_pools() -> Any:
    """The process's thread pools, found once (after scikit-learn has loaded its OpenMP):
    threadpool_limits looks for them on every call, 5 ms each, three times a gold round."""
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime the limit must find
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _predict_in_blocks(regressor: Any, X: np.ndarray) -> np.ndarray:
    """regressor.predict(X), _PREDICT_BLOCK_ROWS rows at a time."""
    blocks = [
        regressor.predict(X[i : i + _PREDICT_BLOCK_ROWS])
        for i in range(0, len(X), _PREDICT_BLOCK_ROWS)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # hours without any observation have no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _departures(series: Series, hours: np.ndarray) -> np.ndarray:
    """y at each hour minus y 24 hours before (NaN where either is missing)."""
    grid_start, y = series
    return values_at(y, hours - grid_start) - values_at(y, hours - DAY_HOURS - grid_start)


def choose_neighbours(
    series: dict[str, Series], start: int, end: int, k: int
) -> dict[str, list[str]]:
    """Per entity, up to `k` other entities, best first, whose departure from the same hour
    yesterday at an hour t correlates best (and positively) with the entity's own at
    t + 18 h, over the hours [start, end): where its weather comes from, learnt from data."""
    entities = sorted(series)
    chosen: dict[str, list[str]] = {e: [] for e in entities}
    if k <= 0 or len(entities) < 2 or end - start <= _NEIGHBOUR_LEAD_HOURS:
        return chosen
    hours = np.arange(start, end)
    departures = np.column_stack([_departures(series[e], hours) for e in entities])
    past, future = departures[:-_NEIGHBOUR_LEAD_HOURS], departures[_NEIGHBOUR_LEAD_HOURS:]
    for i, entity in enumerate(entities):
        scores = []
        for j, other in enumerate(entities):
            both = np.isfinite(past[:, j]) & np.isfinite(future[:, i])
            if j == i or both.sum() < 7 * DAY_HOURS:
                continue
            r = np.corrcoef(past[both, j], future[both, i])[0, 1]
            if np.isfinite(r) and r > 0:
                scores.append((float(r), other))
        chosen[entity] = [other for _, other in sorted(scores, reverse=True)[:k]]
    return chosen


def neighbour_features(origins: np.ndarray, neighbours: list[Series | None], k: int) -> np.ndarray:
    """(origins x 3k): for each of `k` neighbours (best first; NaN for one missing), at its
    latest reading within 3 h up to each origin: its change over the last 24 h and 6 h and its
    departure from its mean of that hour on the 3 days before. Reads nothing after an origin."""
    origins = np.asarray(origins)
    columns: list[np.ndarray] = []
    for i in range(k):
        neighbour = neighbours[i] if i < len(neighbours) else None
        if neighbour is None:
            columns += [np.full(len(origins), np.nan)] * _NEIGHBOUR_FEATURES
            continue
        grid_start, y = neighbour
        seen = last_seen(origins, grid_start, y, within=_NEIGHBOUR_RECENT_HOURS)
        now = values_at(y, seen)  # NaN where seen is -1 (outside the array)
        days_before = values_at(y, seen[:, None] - DAY_HOURS * np.arange(1, 4))
        columns += [
            now - values_at(y, seen - DAY_HOURS),
            now - values_at(y, seen - 6),
            now - _nanmean(days_before, axis=1),
        ]
    return np.column_stack(columns) if columns else np.zeros((len(origins), 0))


def global_features(
    origins: np.ndarray,
    grid_start: int,
    observed: np.ndarray,
    ahead: np.ndarray,
    entity_code: float,
    context: np.ndarray | None = None,
    *,
    week_cycle: bool = False,
    year_cycle: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(X, last): one feature row per (origin, hours ahead in `ahead`), origin-major, and the
    latest observation per origin (NaN: none within a day). Reads y only up to each origin,
    at most HISTORY_HOURS back; every level is relative to the latest value. `context`:
    further columns per origin (`neighbour_features`), placed before the per-row ones.
    `week_cycle`: also the target hour a week before and its day of the week (traffic).
    `year_cycle`: the target's day of year (sin/cos)."""
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
    if context is not None:
        per_origin = np.hstack([per_origin, context])
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
    yearly = [np.sin(year_angle), np.cos(year_angle)] if year_cycle else []
    weekly = []
    if week_cycle:
        # 1970-01-01 was a Thursday: Monday is 0.
        weekday = ((target // DAY_HOURS + 3) % 7).astype(float)
        weekly = [same_hour[:, :, 6], weekday]
    per_row = np.stack(
        [
            yesterday,
            same_hour_3,
            same_hour_7,
            *weekly,
            np.sin(hour_angle),
            np.cos(hour_angle),
            *yearly,
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
    neighbours: dict[str, list[str]]  # entity -> the entities its context is read from
    neighbour_count: int  # k: the context's columns are 3 per neighbour
    week_cycle: bool
    # A default, so that a model pickled before it loads (with the day of year, as fitted).
    year_cycle: bool = True

    def context(self, entity_id: str, origins: np.ndarray, series: dict[str, Series]) -> np.ndarray:
        """The neighbour columns of one entity's feature rows, read from `series` (any entity's
        (grid_start, y); a neighbour missing there is NaN)."""
        chosen = [series.get(other) for other in self.neighbours.get(entity_id, [])]
        return neighbour_features(origins, chosen, self.neighbour_count)

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
        context: dict[str, Series] | None = None,
    ) -> list[np.ndarray]:
        """yhat (origins x horizon) for each (entity, origins, grid_start, observed), in one
        predict call: the trees' fixed cost is paid once per batch, not per entity. Only the
        hours ahead marked in `needed` (a boolean mask over 1..horizon) are predicted, the
        others are NaN: the trees are most of gold's cost, so it asks only where it serves them.
        `context`: every entity's (grid_start, observed) the neighbours are read from (only up
        to each origin); by default the requests' own."""
        ahead = np.arange(1, horizon + 1)
        if needed is not None:
            ahead = ahead[needed]
        if context is None:
            context = {entity_id: (start, y) for entity_id, _, start, y in requests}
        parts, lasts = [], []
        for entity_id, origins, grid_start, observed in requests:
            X, last = global_features(
                origins,
                grid_start,
                observed,
                ahead,
                self.entity_code(entity_id),
                self.context(entity_id, origins, context),
                week_cycle=self.week_cycle,
                year_cycle=self.year_cycle,
            )
            parts.append(X)
            lasts.append(last)
        if not parts:
            return []
        X = np.vstack(parts)
        with _one_thread():
            change = _predict_in_blocks(self.regressor, X)
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
        context: dict[str, Series] | None = None,
    ) -> np.ndarray:
        return self.forecast_many(
            [(entity_id, origins, grid_start, observed)], horizon, context=context
        )[0]

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
    series: dict[str, Series],
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
    neighbours = choose_neighbours(series, train_start, train_end, config.gbm_neighbours)
    # As many neighbour slots as some entity fills (a slot no entity has would be all NaN).
    k = max((len(chosen) for chosen in neighbours.values()), default=0)
    # Read only up to each origin, all of which lie in train.
    first_seen = min((grid_start for grid_start, _ in series.values()), default=train_start)
    year_cycle = train_end - max(train_start, first_seen) >= _YEAR_CYCLE_DAYS * DAY_HOURS
    model = GlobalModel(
        measure, entities, None, 0, neighbours, k, config.gbm_week_cycle, year_cycle
    )
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
            model.context(entity_id, origins, series),
            week_cycle=model.week_cycle,
            year_cycle=model.year_cycle,
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
    # A column without any value (a look-back longer than every series) cannot be binned:
    # a constant stands in, which no split uses.
    X[:, np.isnan(X).all(axis=0)] = 0.0
    categorical = np.zeros(X.shape[1], dtype=bool)
    categorical[-1] = True  # the entity code is the last column
    regressor = HistGradientBoostingRegressor(
        loss=config.gbm_loss,
        max_iter=config.gbm_max_iter,
        learning_rate=config.gbm_learning_rate,
        max_leaf_nodes=config.gbm_max_leaf_nodes,
        min_samples_leaf=config.gbm_min_samples_leaf,
        categorical_features=categorical,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=_SEED,
    )
    with _one_thread():
        regressor.fit(X, target)
    model.regressor, model.train_rows = regressor, len(target)
    return model
