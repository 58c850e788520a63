"""What every forecaster shares: the config, the temporal split, the hourly grid and the two
baselines, vectorised over many forecast origins at once.

A series is y on a complete hourly grid: `grid_start` (whole hours since the epoch, UTC) and a
float array, NaN where an hour is missing. A forecast origin is an hour on that grid; a
forecast from it covers origin + 1 .. origin + horizon and may read y only up to the origin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from periscope.errors import PeriscopeError

__all__ = [
    "BUCKETS",
    "DAY_HOURS",
    "HISTORY_HOURS",
    "RECENT_HOURS",
    "ForecastConfig",
    "ForecastError",
    "NotEnoughData",
    "Split",
    "bucket_of",
    "hours_since_epoch",
    "last_seen",
    "persistence",
    "persistence_many",
    "recent_change_many",
    "seasonal_naive",
    "seasonal_naive_many",
    "temporal_split",
    "to_grid",
]

HOUR = pd.Timedelta(hours=1)
DAY_HOURS = 24
# Every forecaster reads at most this many hours up to the origin (the origin included):
# the latest observation, the last day's shape, "the same hour yesterday" and the global
# model's same hour on each of the last 7 days (gold fetches this much history).
HISTORY_HOURS = 7 * 24
# The latest observation counts (persistence, the global model's level) within this many hours.
RECENT_HOURS = 24
# A band's width follows how much its series has moved lately: the mean change from the same
# hour the day before over this many hours up to the origin (each pair within HISTORY_HOURS).
CHANGE_HOURS = HISTORY_HOURS - DAY_HOURS
_FIXED_POINT = 2**16  # its running sums count whole 1/65,536ths (exact; see recent_change_many)
MIN_TRAIN_DAYS = 3
_HOUR_NS = 3_600_000_000_000
# Horizon buckets a method is chosen for: (first, last) hours ahead, both included.
BUCKETS: tuple[tuple[int, int], ...] = ((1, 6), (7, 12), (13, 24))


class ForecastError(PeriscopeError, ValueError):
    """A series or split that cannot be forecast, or a bundle that cannot be read (the CLI
    prints the message, which says what to do, without a traceback)."""


class NotEnoughData(ForecastError):
    """Too few observations to fit or split."""


@dataclass(frozen=True)
class ForecastConfig:
    """How the candidates are fitted, chosen and calibrated; saved with every bundle."""

    horizon_hours: int = 24
    interval_width: float = 0.8
    # Test-part origins every so many hours (validation uses every hour: it is cheap).
    origin_every_hours: int = 1
    min_train_points: int = 72
    # Prophet: flat trend (a trend fitted on a few months extrapolates a season), daily and
    # weekly seasonality, yearly only from a year of history; fitted on its own recent window.
    prophet_train_days: float = 56.0
    changepoint_prior_scale: float = 0.05
    seasonality_prior_scale: float = 10.0
    decay_grid: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)
    # The global gradient-boosted model per measure (scikit-learn HistGradientBoostingRegressor).
    gbm_origin_every_hours: int = 5
    # 36 weather stations x 2 years give ~3M (origin, horizon) rows. 400k against 120k: every
    # bucket of every weather measure ~1% better on the choosing span (2016-10 .. 2016-12),
    # a retrain's fit 20 -> 29 s; trees as many as before, so scoring costs the same.
    gbm_max_rows: int = 400_000
    # 60 trees at 0.2 matched 150 at 0.1 on validation (8 stations, Dec 2016: temperature MAE
    # 1.27 / 1.87 / 2.23 per bucket against 1.26 / 1.87 / 2.24) at 40% of the fit and scoring cost.
    gbm_max_iter: int = 60
    gbm_learning_rate: float = 0.2
    # Trees of up to 127 leaves, each leaf at least 200 rows: every cell of the choosing spans
    # 0.5-3.4% better than 31 leaves (temperature 13-24 h 0.795 -> 0.780, humidity 0.862 ->
    # 0.855); without the 200-row floor pressure 1-6 h got 20% worse. Fit 1.14x; a tree is
    # ~2 levels deeper, so a batch of forecasts costs ~1.3x.
    gbm_max_leaf_nodes: int = 127
    gbm_min_samples_leaf: int = 200
    # scikit-learn's loss name: "absolute_error" fits the median change, what MAE judges.
    gbm_loss: str = "absolute_error"
    # Other entities' recent departures the global model reads (0: none): the k whose
    # departure from the same hour yesterday best foretells an entity's own a day later on
    # train (for weather, the stations upwind).
    gbm_neighbours: int = 3
    # The target hour a week before and its weekday as features (traffic's weekly cycle).
    gbm_week_cycle: bool = False
    candidates: tuple[str, ...] = ("persistence", "seasonal_naive", "prophet", "gbm")

    def __post_init__(self) -> None:
        if self.horizon_hours < 1 or self.origin_every_hours < 1:
            raise ValueError("horizon_hours and origin_every_hours must be at least 1")
        if self.horizon_hours > DAY_HOURS:
            raise ValueError(
                f"horizon_hours is at most {DAY_HOURS}: the global model reads the same hour yesterday"
            )
        if not 0 < self.interval_width < 1:
            raise ValueError(f"interval_width must be in (0, 1), got {self.interval_width}")
        if not self.decay_grid or any(not 0 <= phi <= 1 for phi in self.decay_grid):
            raise ValueError(f"decay_grid must be values in [0, 1], got {self.decay_grid}")
        if "seasonal_naive" not in self.candidates:
            raise ValueError("seasonal_naive is the yardstick: it must be a candidate")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "decay_grid": list(self.decay_grid),
            "candidates": list(self.candidates),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecastConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("decay_grid", "candidates"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True)
class Split:
    """Half-open hourly boundaries: train [train_start, train_end), validation
    [train_end, validation_end), test [validation_end, test_end); tz-naive UTC."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    validation_end: pd.Timestamp
    test_end: pd.Timestamp

    def to_dict(self) -> dict[str, str]:
        return {name: value.isoformat() for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Split:
        return cls(**{f.name: pd.Timestamp(data[f.name]) for f in fields(cls)})


def _hours(days: float) -> pd.Timedelta:
    # Boundaries stay on the hourly grid even for fractional days.
    return pd.Timedelta(hours=round(days * DAY_HOURS))


def temporal_split(
    first: pd.Timestamp,
    last: pd.Timestamp,
    *,
    test_days: float = 2,
    validation_days: float = 2,
    max_train_days: float | None = None,
) -> Split:
    """Split the hours [first, last] (both observed) into train, validation and test.

    Test is the last `test_days` (may be 0), validation the `validation_days` before it, train
    everything earlier (at most `max_train_days`). Raises NotEnoughData, a ValueError, when
    train would be shorter than three days.
    """
    start = pd.Timestamp(first).ceil("h")
    test_end = pd.Timestamp(last).floor("h") + HOUR
    validation_end = test_end - _hours(test_days)
    train_end = validation_end - _hours(validation_days)
    train_start = start
    if max_train_days is not None:
        train_start = max(start, train_end - _hours(max_train_days))
    if train_end - train_start < pd.Timedelta(days=MIN_TRAIN_DAYS):
        raise NotEnoughData(
            f"no room for {MIN_TRAIN_DAYS} days of training data between {start} and {test_end}"
            f" after {validation_days} validation and {test_days} test days"
        )
    return Split(train_start, train_end, validation_end, test_end)


def hours_since_epoch(times: pd.Timestamp | pd.Series | pd.DatetimeIndex) -> Any:
    """Whole hours since the epoch of naive-UTC times (an int, or an int64 array)."""
    if isinstance(times, pd.Timestamp):
        return int(times.value // _HOUR_NS)
    values = pd.DatetimeIndex(times).as_unit("ns").asi8
    return np.floor_divide(values, _HOUR_NS)


def to_grid(series: pd.DataFrame) -> tuple[int, np.ndarray]:
    """(grid_start, y) of a `ds`/`y` frame on a complete hourly grid (as `series_frames` makes)."""
    if series.empty:
        return 0, np.zeros(0)
    hours = hours_since_epoch(pd.DatetimeIndex(series["ds"]))
    start = int(hours.min())
    y = np.full(int(hours.max()) - start + 1, np.nan)
    y[hours - start] = series["y"].to_numpy(dtype=float)
    return start, y


def bucket_of(horizon: int) -> int:
    """The index in BUCKETS of a horizon (hours ahead)."""
    for i, (first, last) in enumerate(BUCKETS):
        if first <= horizon <= last:
            return i
    raise ValueError(f"horizon {horizon} is in no bucket {BUCKETS}")


def values_at(observed: np.ndarray, index: np.ndarray) -> np.ndarray:
    """observed[index], NaN where the index falls outside the array."""
    inside = (index >= 0) & (index < len(observed))
    values = np.full(index.shape, np.nan)
    values[inside] = observed[index[inside]]
    return values


def last_seen(
    origins: np.ndarray, grid_start: int, observed: np.ndarray, *, within: int = RECENT_HOURS
) -> np.ndarray:
    """Grid index of the latest observation in the `within` hours up to each origin; -1: none."""
    at = np.asarray(origins) - grid_start
    if len(observed) == 0:
        return np.full(at.shape, -1)
    positions = np.where(np.isnan(observed), -1, np.arange(len(observed)))
    latest = np.maximum.accumulate(positions)
    # An origin past the array's end sees all of it; one before its start sees nothing.
    seen = np.where(at >= 0, latest[np.clip(at, 0, len(observed) - 1)], -1)
    return np.where(seen > at - within, seen, -1)


def persistence(
    origins: np.ndarray, grid_start: int, observed: np.ndarray, horizon: int
) -> np.ndarray:
    """The latest observation within a day up to each origin, for every hour ahead (NaN: none)."""
    seen = last_seen(origins, grid_start, observed)
    value = np.where(seen >= 0, values_at(observed, seen), np.nan)
    return np.repeat(value[:, None], horizon, axis=1)


def seasonal_naive(
    origins: np.ndarray, grid_start: int, observed: np.ndarray, horizon: int
) -> np.ndarray:
    """y at the same hour on the latest day at or before each origin (NaN where missing)."""
    ahead = np.arange(1, horizon + 1)
    days_back = np.ceil(ahead / DAY_HOURS).astype(int) * DAY_HOURS
    return values_at(observed, np.asarray(origins)[:, None] + ahead - days_back - grid_start)


# Many requests at once: a live scoring round asks hundreds of one-origin questions per measure,
# and one call per request spent its time in numpy's per-call overhead. Each request is
# (entity, origins, grid_start, observed); the results equal the one-request functions above.
Request = tuple[str, np.ndarray, int, np.ndarray]


@dataclass(frozen=True)
class _Stacked:
    """Every request's observed hours end to end, and per origin: its grid index (`at`), the
    first flat index of its request's hours (`start`) and their number (`length`)."""

    flat: np.ndarray
    at: np.ndarray
    start: np.ndarray
    length: np.ndarray
    counts: np.ndarray  # origins per request

    @classmethod
    def of(cls, requests: list[Request]) -> _Stacked:
        lengths = np.array([len(r[3]) for r in requests], dtype=np.int64)
        counts = np.array([len(r[1]) for r in requests], dtype=np.int64)
        which = np.repeat(np.arange(len(requests)), counts)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        origins = np.concatenate([np.asarray(r[1], dtype=np.int64) for r in requests])
        grid = np.array([r[2] for r in requests], dtype=np.int64)
        return cls(
            flat=np.concatenate([np.asarray(r[3], dtype="float64") for r in requests]),
            at=origins - grid[which],
            start=starts[which],
            length=lengths[which],
            counts=counts,
        )

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        return np.split(rows, np.cumsum(self.counts)[:-1])

    def values(self, index: np.ndarray) -> np.ndarray:
        """Per origin (rows of `index`), its request's y at these grid indices; NaN outside."""
        inside = (index >= 0) & (index < self.length[:, None])
        values = np.full(index.shape, np.nan)
        values[inside] = self.flat[(self.start[:, None] + index)[inside]]
        return values

    def last_seen(self, within: int = RECENT_HOURS) -> np.ndarray:
        """As `last_seen`, per origin: the index in its request's hours, -1 for none."""
        if len(self.flat) == 0:
            return np.full(self.at.shape, -1)
        positions = np.where(np.isnan(self.flat), -1, np.arange(len(self.flat)))
        latest = np.maximum.accumulate(positions)  # may reach back into an earlier request
        usable = (self.at >= 0) & (self.length > 0)
        index = self.start + np.clip(self.at, 0, np.maximum(self.length - 1, 0))
        found = latest[np.where(usable, index, 0)]
        seen = np.where(usable & (found >= self.start), found - self.start, -1)
        return np.where(seen > self.at - within, seen, -1)


def persistence_many(requests: list[Request], horizon: int) -> list[np.ndarray]:
    """`persistence` of every request."""
    if not requests:
        return []
    stacked = _Stacked.of(requests)
    seen = stacked.last_seen()
    value = np.full(seen.shape, np.nan)
    value[seen >= 0] = stacked.flat[(stacked.start + seen)[seen >= 0]]
    return stacked.split(np.repeat(value[:, None], horizon, axis=1))


def seasonal_naive_many(requests: list[Request], horizon: int) -> list[np.ndarray]:
    """`seasonal_naive` of every request."""
    if not requests:
        return []
    stacked = _Stacked.of(requests)
    ahead = np.arange(1, horizon + 1)
    days_back = np.ceil(ahead / DAY_HOURS).astype(int) * DAY_HOURS
    return stacked.split(stacked.values(stacked.at[:, None] + ahead - days_back))


def recent_change_many(requests: list[Request]) -> np.ndarray:
    """Per origin of every request, in order: the mean |y(t) - y(t - 24 h)| over the
    CHANGE_HOURS hours t up to the origin (what seasonal-naive would have missed by lately);
    NaN where no such pair was observed. Reads nothing after an origin."""
    if not requests:
        return np.zeros(0)
    stacked = _Stacked.of(requests)
    lengths = np.array([len(r[3]) for r in requests], dtype=np.int64)
    # Every hour's change from the day before, end to end; then running sums, so that each
    # origin's mean is two lookups (gold asks this of every window it scores). The sums are
    # of whole 1/65,536ths: exact, so an origin's figure does not depend on what was batched
    # before it (a float running sum's rounding does, and rescoring must give the same rows).
    flat = stacked.flat
    change = np.full(len(flat), np.nan)
    change[DAY_HOURS:] = np.abs(flat[DAY_HOURS:] - flat[:-DAY_HOURS])
    # A request's first day has no day before (what precedes it is another request's).
    first_day = (np.cumsum(lengths) - lengths)[:, None] + np.arange(DAY_HOURS)
    change[first_day[np.arange(DAY_HOURS) < lengths[:, None]]] = np.nan
    seen = ~np.isnan(change)
    sums = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(np.rint(np.nan_to_num(change, copy=False) * _FIXED_POINT), out=sums[1:])
    counts = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum(seen, dtype=np.int32, out=counts[1:])
    last = np.minimum(stacked.at, stacked.length - 1)  # the hours up to the origin, observed
    first = np.maximum(stacked.at - CHANGE_HOURS + 1, 0)
    end = np.where(last >= first, stacked.start + last + 1, stacked.start)
    begin = np.where(last >= first, stacked.start + first, stacked.start)
    count = counts[end] - counts[begin]
    with np.errstate(invalid="ignore", divide="ignore"):  # no pair observed: NaN, as meant
        return np.where(count > 0, (sums[end] - sums[begin]) / _FIXED_POINT / count, np.nan)
