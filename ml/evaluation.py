"""Walk-forward evaluation: the scheduled retrain replayed over months the models never saw.

At each retrain time t (every `retrain_every` from the span's start) a challenger is fitted on
the hourly data known then (the hours before t) with the production defaults. It replaces the
champion only when the production promotion rule says so: the first one always, later ones
when their relative MAE on their own test window is strictly lower than the champion's there
(`ml/training/promotion.py`). The champion then forecasts from every hourly origin until the
next retrain, 1..24 h ahead, seeing observations only up to each origin, and every forecast is
judged beside two baselines: seasonal naive (the same hour yesterday) and persistence (the last
reading).

The walk is pure (pandas/numpy) given a `Forecaster`, a narrow adapter to the forecasting code:
`fit(hourly before t) -> model`, `compare(challenger, champion, hourly before t)` for the
promotion rule, and `model.forecast(entity, measure, origins, observed)` giving yhat, lower and
upper (origins x horizon). `ProductionForecaster` wraps today's training (`ml.training`) and
gold's vectorised scorer; a reworked forecaster needs only a new adapter.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np
import pandas as pd

from periscope.contracts import Measure, SourceContract

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

    from ml.forecast import ForecastBundle, Split
    from ml.training import TrainConfig
    from periscope.settings import Settings

__all__ = [
    "BUCKETS",
    "ERROR_COLUMNS",
    "Evaluation",
    "EvaluationRun",
    "FittedForecast",
    "Forecaster",
    "ProductionForecaster",
    "Retrain",
    "block_interval",
    "dataset_hourly",
    "default_span",
    "history_days",
    "horizon_bucket",
    "hourly_from_records",
    "parse_every",
    "retrain_times",
    "run_evaluation",
    "summarize",
    "walk_forward",
]

HOUR = pd.Timedelta(hours=1)
_HOUR_NS = 3_600 * 10**9
# Horizon buckets (first hour, last hour, label) the issue reports on.
BUCKETS: tuple[tuple[int, int, str], ...] = (
    (1, 6, "1-6 h"),
    (7, 12, "7-12 h"),
    (13, 24, "13-24 h"),
)
ALL = "all"
METHODS = ("model", "seasonal_naive", "persistence")
ERROR_COLUMNS = [
    "entity_id",
    "measure",
    "origin",
    "horizon_h",
    "actual",
    "model",
    "lower",
    "upper",
    "seasonal_naive",
    "persistence",
    "champion",
]


# --- the adapter -------------------------------------------------------------------------------
class FittedForecast(Protocol):
    """A model fitted at one retrain: which series it forecasts, and its forecasts."""

    def series(self) -> list[tuple[str, str]]:
        """The (entity_id, measure) series it can forecast."""
        ...

    def forecast(
        self,
        entity_id: str,
        measure: str,
        origins: np.ndarray,
        grid_start: int,
        observed: np.ndarray,
        context: dict[str, tuple[int, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """yhat, lower, upper (origins x horizon) from each origin (hours since the epoch).

        `observed` is y on the hours from `grid_start` up to max(origins), NaN where missing:
        nothing after the last origin is given. `context`: every entity's (grid_start,
        observed) of the measure on the same terms (a model may read other entities up to
        each origin, as gold gives it every station's recent hours).
        """
        ...


class Forecaster(Protocol):
    """What the walk needs of the forecasting code."""

    horizon_hours: int

    def fit(self, known: pd.DataFrame, cutoff: pd.Timestamp) -> FittedForecast:
        """A challenger trained on `known`, the hourly rows before `cutoff`."""
        ...

    def compare(
        self, challenger: FittedForecast, champion: FittedForecast, known: pd.DataFrame
    ) -> tuple[float, float]:
        """(challenger, champion) scores of the promotion rule; lower is better."""
        ...


@dataclass
class _ProductionModel:
    bundle: ForecastBundle
    split: Split
    seconds: float
    skipped: int

    def series(self) -> list[tuple[str, str]]:
        return self.bundle.series()

    def forecast(
        self,
        entity_id: str,
        measure: str,
        origins: np.ndarray,
        grid_start: int,
        observed: np.ndarray,
        context: dict[str, tuple[int, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The bundle's own vectorised forecast: the code gold's scorer runs.
        return self.bundle.forecast(entity_id, measure, origins, grid_start, observed, context)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ProductionForecaster:
    """Today's `periscope train`/`retrain`: `ml.forecast.fit_bundle` (every candidate) with the
    production defaults (`TrainConfig()`) on the split `make_split` makes of the data known,
    and the promotion comparison of `compare_forecast` (relative MAE of challenger and
    champion on the challenger's test window, common series only).

    `fit_bundle` fits in this process, so `workers` and `_map` (a pool of processes that
    inherit the caller's niceness; Ray runs its workers at 15, which starved them beside other
    work here) are unused until the bundle can take a map of its fits; the Prophet-only
    adapter this replaced spread its fits over them. Use as a context manager to close the pool.
    """

    def __init__(
        self, contract: SourceContract, config: TrainConfig | None = None, *, workers: int = 1
    ) -> None:
        from ml.training import TrainConfig

        self.contract = contract
        self.config = config or TrainConfig()
        self.horizon_hours = self.config.forecast.horizon_hours
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProductionForecaster:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _map(self, function: Callable, chunks: list[list], *args: object) -> list:
        """function(chunk, *args) for every chunk, flattened in order."""
        if self.workers <= 1:
            return [item for chunk in chunks for item in function(chunk, *args)]
        if self._pool is None:
            # spawn: a forked child of a process holding Arrow/polars threads can hang.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        futures = [self._pool.submit(function, chunk, *args) for chunk in chunks]
        return [item for future in futures for item in future.result()]

    def fit(self, known: pd.DataFrame, cutoff: pd.Timestamp) -> _ProductionModel:
        from ml import forecast
        from ml.data import series_frames
        from ml.training import make_split

        started = time.perf_counter()
        split = make_split(known, self.config)
        frames = series_frames(known[known["ds"] < split.test_end], self.contract)
        # What `train_forecasts` fits on Ray, here in-process: every candidate, the selection
        # and bands on validation (ml.forecast.fit_bundle).
        bundle = forecast.fit_bundle(
            frames,
            split,
            self.config.for_source(self.contract).forecast,
            source=self.contract.name,
            ranges=forecast.valid_ranges(self.contract),
        )
        return _ProductionModel(
            bundle, split, time.perf_counter() - started, len(set(frames) - set(bundle.series()))
        )

    def compare(
        self, challenger: FittedForecast, champion: FittedForecast, known: pd.DataFrame
    ) -> tuple[float, float]:
        from ml.data import series_frames

        assert isinstance(challenger, _ProductionModel) and isinstance(champion, _ProductionModel)
        from ml.training.forecasts import compare_forecast

        frames = series_frames(known, self.contract)
        if not set(challenger.series()) & set(champion.series()) & set(frames):
            return math.nan, math.nan  # NaN < NaN is false: the champion stays
        return compare_forecast(challenger.bundle, champion.bundle, frames)


# --- the walk ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Retrain:
    """One scheduled retrain: when, the scores the promotion rule compared, what was served."""

    at: pd.Timestamp
    challenger: int  # the challenger's number (1 = the first retrain's)
    promoted: bool
    challenger_score: float  # NaN for the first, which becomes champion unopposed
    champion_score: float
    champion: int  # the number of the model serving until the next retrain
    series: int
    fit_seconds: float


@dataclass
class Evaluation:
    """Every judged forecast (ERROR_COLUMNS) and the retrains that chose the models."""

    errors: pd.DataFrame
    retrains: list[Retrain]


Every: TypeAlias = pd.Timedelta | pd.DateOffset


def parse_every(text: str) -> Every:
    """A retrain interval: `7d`, `1d`, `12h`, `daily`, `weekly` or `monthly` (calendar months).

    >>> parse_every("weekly"), parse_every("36h")
    (Timedelta('7 days 00:00:00'), Timedelta('1 days 12:00:00'))
    """
    cleaned = text.strip().lower()
    if cleaned == "monthly":
        return pd.DateOffset(months=1)
    cleaned = {"daily": "1d", "weekly": "7d"}.get(cleaned, cleaned)
    match = re.fullmatch(r"(\d+)\s*([dh])", cleaned)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"a retrain interval is like 7d, 1d, 12h, daily, weekly or monthly; got {text!r}"
        )
    return pd.Timedelta(**{"days" if match.group(2) == "d" else "hours": int(match.group(1))})


def retrain_times(start: pd.Timestamp, end: pd.Timestamp, every: Every) -> list[pd.Timestamp]:
    """Retrain times from `start`, every `every`, before `end`."""
    if end <= start:
        raise ValueError(f"the span is empty: {start} .. {end}")
    return list(pd.date_range(start, end, freq=every, inclusive="left"))


def _hours(times: pd.Series | pd.DatetimeIndex | pd.Timestamp) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(np.atleast_1d(times)).asi8 // _HOUR_NS, dtype="int64")


def _grids(
    hourly: pd.DataFrame, key: str, measures: Sequence[str]
) -> dict[str, tuple[int, np.ndarray]]:
    """Per entity: its first hour (since the epoch) and y per hour from then (hours x measures)."""
    grids: dict[str, tuple[int, np.ndarray]] = {}
    for entity, rows in hourly.groupby(key, sort=True):
        hours = _hours(rows["ds"])
        first = int(hours.min())
        grid = np.full((int(hours.max()) - first + 1, len(measures)), np.nan)
        for i, measure in enumerate(measures):
            grid[hours - first, i] = rows[measure].to_numpy(dtype="float64", na_value=np.nan)
        grids[str(entity)] = (first, grid)
    return grids


def _window(grid: tuple[int, np.ndarray], column: int, start: int, end: int) -> np.ndarray:
    """y on the hours [start, end), NaN outside what the grid holds."""
    first, values = grid
    out = np.full(end - start, np.nan)
    lo, hi = max(start, first), min(end, first + len(values))
    if lo < hi:
        out[lo - start : hi - start] = values[lo - first : hi - first, column]
    return out


def _last_seen(y: np.ndarray) -> np.ndarray:
    """y carried forward: at each position the latest non-NaN value at or before it."""
    positions = np.where(np.isnan(y), -1, np.arange(len(y)))
    latest = np.maximum.accumulate(positions)
    return np.where(latest >= 0, y[np.maximum(latest, 0)], np.nan)


def _score_period(
    model: FittedForecast,
    grids: dict[str, tuple[int, np.ndarray]],
    measures: Sequence[str],
    origins: np.ndarray,
    horizon: int,
    champion: int,
) -> list[pd.DataFrame]:
    """The champion's forecasts and both baselines from every origin, with their actuals."""
    from ml.forecast import HISTORY_HOURS

    frames = []
    ahead = np.arange(1, horizon + 1)
    days_back = np.ceil(ahead / 24).astype(int) * 24
    # From a week before the first origin (the model's and the baselines' look-back) to the
    # last origin: nothing later reaches a forecast.
    grid_start = int(origins[0]) + 1 - HISTORY_HOURS
    seen_by = {
        (entity_id, measure): _window(
            grid, list(measures).index(measure), grid_start, int(origins[-1]) + 1
        )
        for entity_id, grid in grids.items()
        for measure in measures
    }
    for entity_id, measure in model.series():
        if entity_id not in grids or measure not in measures:
            continue
        grid = grids[entity_id]
        column = list(measures).index(measure)
        seen = seen_by[(entity_id, measure)]
        context = {e: (grid_start, y) for (e, m), y in seen_by.items() if m == measure}
        yhat, lower, upper = model.forecast(
            entity_id, measure, origins, grid_start, seen, context=context
        )
        at = origins - grid_start
        targets = origins[:, None] + ahead
        actual = _window(grid, column, int(origins[0]) + 1, int(origins[-1]) + horizon + 1)[
            targets - int(origins[0]) - 1
        ]
        naive = seen[targets - days_back - grid_start]
        persistence = np.broadcast_to(_last_seen(seen)[at][:, None], targets.shape)
        keep = ~np.isnan(actual)
        n = int(keep.sum())
        frames.append(
            pd.DataFrame(
                {
                    "entity_id": np.full(n, entity_id, dtype=object),
                    "measure": np.full(n, measure, dtype=object),
                    "origin": pd.to_datetime(
                        np.broadcast_to(origins[:, None], targets.shape)[keep] * _HOUR_NS
                    ),
                    "horizon_h": np.broadcast_to(ahead, targets.shape)[keep].astype("int16"),
                    "actual": actual[keep].astype("float32"),
                    "model": yhat[keep].astype("float32"),
                    "lower": lower[keep].astype("float32"),
                    "upper": upper[keep].astype("float32"),
                    "seasonal_naive": naive[keep].astype("float32"),
                    "persistence": persistence[keep].astype("float32"),
                    "champion": np.full(n, champion, dtype="int16"),
                }
            )
        )
    return frames


def walk_forward(
    hourly: pd.DataFrame,
    contract: SourceContract,
    forecaster: Forecaster,
    *,
    start: pd.Timestamp,
    end: pd.Timestamp,
    retrain_every: Every,
    on_retrain: Callable[[Retrain], None] | None = None,
) -> Evaluation:
    """Replay the scheduled retrain over [start, end) and judge every hourly forecast.

    `hourly`: rows per (contract.key_field, ds) hour with the forecast targets as columns, ds
    naive UTC. A retrain at t sees the rows with ds < t. Its champion forecasts from the
    origins t - 1h .. next retrain - 2h: the forecasts issued in [t, next retrain), each from
    the last hour observed when it is issued. A forecast's row is kept when its actual exists.
    """
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    measures = list(contract.forecast_names)
    key = contract.key_field
    grids = _grids(hourly, key, measures)
    times = retrain_times(start, end, retrain_every)
    horizon = forecaster.horizon_hours
    champion: FittedForecast | None = None
    champion_number = 0
    retrains: list[Retrain] = []
    frames: list[pd.DataFrame] = []
    for number, (at, until) in enumerate(zip(times, [*times[1:], end], strict=True), start=1):
        known = hourly[hourly["ds"] < at]
        challenger = forecaster.fit(known, at)
        if champion is None:
            promoted, ours, theirs = True, math.nan, math.nan
        else:
            ours, theirs = forecaster.compare(challenger, champion, known)
            promoted = ours < theirs  # the production rule: strictly better; ties keep
        if promoted:
            champion, champion_number = challenger, number
        assert champion is not None
        retrain = Retrain(
            at,
            number,
            promoted,
            ours,
            theirs,
            champion_number,
            len(challenger.series()),
            float(getattr(challenger, "seconds", math.nan)),
        )
        retrains.append(retrain)
        origins = np.arange(int(_hours(at)[0]) - 1, int(_hours(until)[0]) - 1)
        frames += _score_period(champion, grids, measures, origins, horizon, champion_number)
        if on_retrain:
            on_retrain(retrain)
    errors = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ERROR_COLUMNS)
    return Evaluation(errors[ERROR_COLUMNS], retrains)


# --- the figures -------------------------------------------------------------------------------
def horizon_bucket(horizon_h: np.ndarray | pd.Series) -> np.ndarray:
    """The bucket label of each horizon (1-6 h, 7-12 h, 13-24 h; beyond 24 h: '>24 h').

    >>> list(horizon_bucket(np.array([1, 6, 7, 13, 24])))
    ['1-6 h', '1-6 h', '7-12 h', '13-24 h', '13-24 h']
    """
    h = np.asarray(horizon_h)
    labels = np.full(h.shape, ">24 h", dtype=object)
    for first, last, label in BUCKETS:
        labels[(h >= first) & (h <= last)] = label
    return labels


def _valid_range(contract: SourceContract, target: str) -> tuple[float, float]:
    for forecast_target in contract.forecast_targets:
        if forecast_target.name == target and forecast_target.aggregate == "mean":
            f = contract.field(forecast_target.field or "")
            if isinstance(f, Measure):
                return f.valid_min, f.valid_max
    return -math.inf, math.inf


SUMMARY_COLUMNS = [
    "measure",
    "by",
    "group",
    "n",
    *(f"{metric}_{method}" for metric in ("mae", "rmse", "bias") for method in METHODS),
    "relative_mae",
    "relative_mae_low",
    "relative_mae_high",
    "relative_mae_persistence",
    "coverage",
    "coverage_low",
    "coverage_high",
    "outside_range",
]

# The intervals resample whole blocks of days of issue, not forecasts: a day's forecasts share
# its weather across entities and horizons, and a weather system lasts a few days, so rows are
# far from independent (row-wise resampling gave weather's 5M forecasts intervals ~10x too narrow).
INTERVAL_LEVEL = 0.9
INTERVAL_BLOCK_DAYS = 3
INTERVAL_RESAMPLES = 2000


def block_interval(
    numerator: np.ndarray, denominator: np.ndarray, block: np.ndarray, *, seed: int = 0
) -> tuple[float, float]:
    """The INTERVAL_LEVEL percentile interval of sum(numerator) / sum(denominator) when the
    blocks (`block`: a label per row, whole numbers from 0) are drawn with replacement, as many
    as there are (scipy's bootstrap of the blocks' sums, paired): deterministic for a seed.
    One block gives its ratio at both ends; NaN when the ratio is undefined.

    >>> block_interval(np.array([1.0, 2.0]), np.array([2.0, 4.0]), np.array([0, 1]))
    (0.5, 0.5)
    """
    from scipy.stats import bootstrap

    present = np.bincount(block) > 0  # labels need not be consecutive (a month's blocks)
    top = np.bincount(block, weights=numerator)[present]
    bottom = np.bincount(block, weights=denominator)[present]
    if not len(top) or bottom.sum() <= 0:
        return math.nan, math.nan
    if len(top) == 1:
        return float(top[0] / bottom[0]), float(top[0] / bottom[0])

    def ratio(tops: np.ndarray, bottoms: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return tops.sum(axis=axis) / bottoms.sum(axis=axis)

    low, high = bootstrap(
        (top, bottom),
        ratio,
        paired=True,
        vectorized=True,
        n_resamples=INTERVAL_RESAMPLES,
        confidence_level=INTERVAL_LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(low), float(high)


def _figures(rows: pd.DataFrame) -> dict[str, float]:
    actual = rows["actual"].to_numpy("float64")
    figures: dict[str, float] = {"n": len(rows)}
    for method in METHODS:
        error = rows[method].to_numpy("float64") - actual
        figures[f"mae_{method}"] = float(np.mean(np.abs(error)))
        figures[f"rmse_{method}"] = float(np.sqrt(np.mean(error**2)))
        figures[f"bias_{method}"] = float(np.mean(error))
    naive = figures["mae_seasonal_naive"]
    figures["relative_mae"] = figures["mae_model"] / naive if naive > 0 else math.nan
    figures["relative_mae_persistence"] = (
        figures["mae_persistence"] / naive if naive > 0 else math.nan
    )
    inside = (rows["actual"] >= rows["lower"]) & (rows["actual"] <= rows["upper"])
    figures["coverage"] = float(inside.mean())
    figures["outside_range"] = float(rows["_outside"].mean())
    block = rows["_block"].to_numpy()
    figures["relative_mae_low"], figures["relative_mae_high"] = block_interval(
        np.abs(rows["model"].to_numpy("float64") - actual),
        np.abs(rows["seasonal_naive"].to_numpy("float64") - actual),
        block,
    )
    figures["coverage_low"], figures["coverage_high"] = block_interval(
        inside.to_numpy("float64"), np.ones(len(rows)), block
    )
    return figures


def summarize(errors: pd.DataFrame, contract: SourceContract) -> pd.DataFrame:
    """Per measure, by horizon bucket (and `all`) and by month of issue (origin + 1 h): n, MAE, RMSE and
    bias (forecast - actual) of the model and both baselines, relative MAE (model MAE /
    seasonal-naive MAE, and persistence's), 80% interval coverage and the share of model
    forecasts outside the contract's valid range. Columns SUMMARY_COLUMNS.

    Relative MAE and coverage come with a 90% interval (`_low`, `_high`): how far they could
    move on other days of the same kind, from a bootstrap of blocks of INTERVAL_BLOCK_DAYS days
    of issue (`block_interval`). A figure whose interval holds a target neither meets nor
    misses it by more than its days can tell.

    Every figure of a group uses the same rows: those where the actual, the model and both
    baselines exist, pooled over entities.
    """
    common = errors.dropna(subset=["actual", "model", "seasonal_naive", "persistence"])
    if common.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    ranges = {m: _valid_range(contract, m) for m in common["measure"].unique()}
    low = common["measure"].map({m: lo for m, (lo, _) in ranges.items()}).to_numpy("float64")
    high = common["measure"].map({m: hi for m, (_, hi) in ranges.items()}).to_numpy("float64")
    yhat = common["model"].to_numpy("float64")
    # A forecast is issued an hour after its origin; months and interval blocks go by that.
    issued = pd.DatetimeIndex(common["origin"]) + HOUR
    common = common.assign(
        _outside=(yhat < low) | (yhat > high),
        _bucket=horizon_bucket(common["horizon_h"].to_numpy()),
        _month=_issue_months(issued),
        _block=_issue_blocks(issued),
    )
    order = [label for _, _, label in BUCKETS] + [">24 h", ALL]
    rows = []
    for measure, part in common.groupby("measure", sort=False):
        groups = [(b, part[part["_bucket"] == b]) for b in order[:-1]] + [(ALL, part)]
        for group, chosen in groups:
            if len(chosen):
                rows.append(
                    {"measure": measure, "by": "horizon", "group": group, **_figures(chosen)}
                )
        for month, chosen in part.groupby("_month", sort=True):
            rows.append({"measure": measure, "by": "month", "group": month, **_figures(chosen)})
    measure_order = {m: i for i, m in enumerate(contract.forecast_names)}
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["_m"] = summary["measure"].map(measure_order)
    summary = summary.sort_values(["_m", "by"], kind="stable").drop(columns="_m")
    return summary.reset_index(drop=True)


def _issue_months(issued: pd.DatetimeIndex) -> np.ndarray:
    """'YYYY-MM' of each issue time; formatted once a month, not once a row (strftime of
    weather's 5M rows took 24 s)."""
    months, at = np.unique(issued.to_numpy().astype("datetime64[M]"), return_inverse=True)
    return months.astype(str)[at]


def _issue_blocks(issued: pd.DatetimeIndex) -> np.ndarray:
    """The interval's block of each issue time: INTERVAL_BLOCK_DAYS days, counted from the
    first day issued, so every group of one summary shares the same blocks."""
    day = issued.floor("D")
    return np.asarray((day - day.min()).days // INTERVAL_BLOCK_DAYS, dtype="int64")


# --- the data ------------------------------------------------------------------------------------
def history_days(config: TrainConfig) -> float:
    """Days of history before a retrain that its training can use (train + validation + test)."""
    return (config.max_train_days or 3650.0) + config.validation_days + config.test_days


def hourly_from_records(records: pl.DataFrame, contract: SourceContract) -> pd.DataFrame:
    """The hourly frame `ml.data.hourly_observations` reads from silver, made from the
    contract's raw records (a dataset reader's frame) as silver would keep them.

    Silver quarantines a record with a required measure outside its valid range (NaN
    included) and drops an optional one's value to null; readers have turned sentinels into
    nulls already. Then per (key, hour): each `hourly_columns` aggregate.
    """
    import polars as pl

    from ml.data import hourly_columns

    key, ts = contract.key_field, contract.event_time_field
    bad_required = pl.lit(False)
    cleaned = []
    for m in contract.measures:
        if m.name not in records.columns:
            continue
        value = pl.col(m.name)
        out = value.is_not_null() & (value.is_nan() | (value < m.valid_min) | (value > m.valid_max))
        if m.required:
            bad_required = bad_required | out
        else:
            cleaned.append(pl.when(out).then(None).otherwise(value).alias(m.name))
    kept = records.filter(~bad_required).with_columns(cleaned)
    aggregates = []
    for name, (aggregate, source_field) in hourly_columns(contract).items():
        if source_field is None:
            aggregates.append(pl.len().cast(pl.Float64).alias(name))
        else:
            column = pl.col(source_field).cast(pl.Float64)
            how = {"mean": column.mean(), "sum": column.sum(), "count": column.count()}
            aggregates.append(how[aggregate].cast(pl.Float64).alias(name))
    hourly = (
        kept.with_columns(
            pl.col(ts)
            .dt.convert_time_zone("UTC")
            .dt.replace_time_zone(None)
            .dt.truncate("1h")
            .alias("ds")
        )
        .group_by(key, "ds")
        .agg(aggregates)
        .sort(key, "ds")
    )
    frame = hourly.to_pandas()
    frame[key] = frame[key].astype(str)
    frame["ds"] = frame["ds"].astype("datetime64[ns]")
    return frame


def dataset_hourly(
    contract: SourceContract, data_dir: Path, entities: Sequence[str] | None = None
) -> pd.DataFrame:
    """The contract's dataset (its reader's raw records under `data_dir`) as silver would keep
    it, hourly (`hourly_from_records`), for `entities` (default: every entity it has)."""
    reader = contract.dataset_reader()
    chosen = list(entities) if entities else reader.entities(data_dir)
    return hourly_from_records(reader.read(data_dir, entities=chosen), contract)


def default_span(
    hourly: pd.DataFrame, contract: SourceContract, months: int = 3
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The last `months` calendar months with data for every forecast target: [from, to).

    `to` is the first day of the month after the last month in which every target has a value.
    """
    lasts = [hourly.loc[hourly[m].notna(), "ds"].max() for m in contract.forecast_names]
    if not lasts or any(pd.isna(last) for last in lasts):
        raise ValueError(f"{contract.name}: some forecast target has no data at all")
    last = min(lasts)
    end = (pd.Timestamp(last).to_period("M") + 1).to_timestamp()
    return end - pd.DateOffset(months=months), end


# --- the run: data from the lake or the dataset, then the walk ----------------------------------
@dataclass
class EvaluationRun:
    """A finished evaluation with what it read and how long it took."""

    source: str
    start: pd.Timestamp
    end: pd.Timestamp
    retrain_every: str
    data_from: str  # where the hourly series came from
    entities: int
    evaluation: Evaluation
    summary: pd.DataFrame
    seconds: float


def _lake_hourly(
    settings: Settings,
    contract: SourceContract,
    entities: Sequence[str],
    since: pd.Timestamp,
    until: pd.Timestamp,
) -> pd.DataFrame | None:
    """Silver's hourly series for the span, or None when the lake does not hold all of it."""
    from ml.data import LakeSlice, hourly_observations
    from periscope.errors import PeriscopeError

    try:
        hourly = hourly_observations(
            settings,
            contract,
            LakeSlice(
                stations=tuple(entities),
                since=since.to_pydatetime(),
                until=until.to_pydatetime(),
            ),
        )
    except PeriscopeError:
        return None
    if hourly.empty:
        return None
    day = pd.Timedelta(days=1)
    covers = (
        hourly["ds"].min() <= since + day
        and hourly["ds"].max() >= until - 2 * day
        and set(entities) <= set(hourly[contract.key_field].astype(str))
    )
    return hourly if covers else None


def run_evaluation(
    settings: Settings,
    source: str,
    *,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    retrain_every: str = "monthly",
    entities: Sequence[str] | None = None,
    workers: int | None = None,
    on_start: Callable[[str, list[pd.Timestamp]], None] | None = None,
    on_retrain: Callable[[Retrain], None] | None = None,
) -> EvaluationRun:
    """Read the hourly series (the lake's silver when it holds the span, else the contract's
    dataset read as silver keeps it), replay the retrain schedule with the production
    forecaster on `workers` processes, and summarise. Default span: the last three months with data."""
    from periscope.contracts import get_contract

    started = time.perf_counter()
    contract = get_contract(source)
    reader = contract.dataset_reader()
    chosen = list(entities) if entities else reader.entities(settings.data_dir)
    history: pd.DataFrame | None = None
    if start is None or end is None:
        history = dataset_hourly(contract, settings.data_dir, chosen)
        default_start, default_end = default_span(history, contract)
        start = default_start if start is None else start
        end = default_end if end is None else end
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    forecaster = ProductionForecaster(contract, workers=workers or settings.train_workers)
    since = start - pd.Timedelta(days=history_days(forecaster.config) + 1)
    until = end + forecaster.horizon_hours * HOUR
    hourly = _lake_hourly(settings, contract, chosen, since, until)
    data_from = f"lake silver/{contract.name}_observations"
    if hourly is None:
        if history is None:
            history = dataset_hourly(contract, settings.data_dir, chosen)
        hourly = history[(history["ds"] >= since) & (history["ds"] < until)]
        data_from = f"dataset {settings.data_dir} (the lake does not hold the span)"
    hourly = hourly.reset_index(drop=True)
    in_span = hourly[(hourly["ds"] >= start) & (hourly["ds"] < end)]
    if in_span.empty:
        from periscope.errors import PeriscopeError

        raise PeriscopeError(
            f"{source} has no data in {start:%Y-%m-%d} .. {end:%Y-%m-%d}; its history ends "
            f"{hourly['ds'].max() if len(hourly) else 'before that'}"
        )
    every = parse_every(retrain_every)
    if on_start:
        on_start(data_from, retrain_times(start, end, every))
    with forecaster:
        evaluation = walk_forward(
            hourly,
            contract,
            forecaster,
            start=start,
            end=end,
            retrain_every=every,
            on_retrain=on_retrain,
        )
    return EvaluationRun(
        source,
        start,
        end,
        retrain_every,
        data_from,
        int(hourly[contract.key_field].nunique()),
        evaluation,
        summarize(evaluation.errors, contract),
        time.perf_counter() - started,
    )
