"""Hourly forecasts of one (entity_id, measure) series: Prophet, baselines and their errors.

Pure functions on pandas (no Ray, no MLflow): a series is a frame with `ds` (tz-naive UTC
hours on a complete hourly grid) and `y` (float, NaN where an hour is missing). A model is
Prophet fitted on the train part of a `Split`, plus a residual correction that pulls the
first hours of a forecast towards the latest observation, tuned on the validation part.
Everything is scored with rolling forecast origins against two baselines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from prophet import Prophet

__all__ = [
    "METHODS",
    "ForecastBundle",
    "ForecastConfig",
    "ForecastError",
    "NotEnoughData",
    "SeriesModel",
    "SeriesResult",
    "Split",
    "baseline_forecasts",
    "error_metrics",
    "evaluate",
    "fit_series",
    "relative_mae",
    "temporal_split",
    "train_many",
    "train_series",
]

METHODS = ("prophet", "seasonal_naive", "persistence")

ERROR_COLUMNS = [
    "entity_id",
    "measure",
    "origin",
    "ds",
    "horizon_h",
    "actual",
    "prophet",
    "yhat_lower",
    "yhat_upper",
    "seasonal_naive",
    "persistence",
]

HOUR = pd.Timedelta(hours=1)
DAY_HOURS = 24
# A residual older than this says little about the next hours: forecast without correction.
MAX_RESIDUAL_AGE = pd.Timedelta(hours=24)
MIN_TRAIN_DAYS = 3
# Prophet draws its intervals at random; a fixed seed makes a forecast repeatable.
INTERVAL_SEED = 0
# Temperatures cross 0 °C: percentage errors near zero actuals would swamp the mean.
MAPE_MIN_ABS_ACTUAL = 1.0


class ForecastError(ValueError):
    """A series or split that cannot be forecast."""


class NotEnoughData(ForecastError):
    """Too few observations to fit or split."""


@dataclass(frozen=True)
class ForecastConfig:
    """How series are fitted and scored; saved with every bundle."""

    horizon_hours: int = 24
    interval_width: float = 0.8
    origin_every_hours: int = 6
    min_train_points: int = 72
    uncertainty_samples: int = 200
    changepoint_prior_scale: float = 0.05
    seasonality_prior_scale: float = 10.0
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    # Candidates for the residual decay phi, searched on the validation part.
    decay_grid: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)
    # Candidates for the weight of "same hour yesterday" blended into the corrected forecast,
    # searched on validation together with phi (0 = Prophet + residual correction only).
    naive_weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)

    def __post_init__(self) -> None:
        if self.horizon_hours < 1 or self.origin_every_hours < 1:
            raise ValueError("horizon_hours and origin_every_hours must be at least 1")
        if not 0 < self.interval_width < 1:
            raise ValueError(f"interval_width must be in (0, 1), got {self.interval_width}")
        if not self.decay_grid or any(not 0 <= phi <= 1 for phi in self.decay_grid):
            raise ValueError(f"decay_grid must be values in [0, 1], got {self.decay_grid}")
        if not self.naive_weight_grid or any(not 0 <= w < 1 for w in self.naive_weight_grid):
            raise ValueError(
                f"naive_weight_grid must be values in [0, 1), got {self.naive_weight_grid}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "decay_grid": list(self.decay_grid),
            "naive_weight_grid": list(self.naive_weight_grid),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecastConfig:
        return cls(
            **{
                **data,
                "decay_grid": tuple(data.get("decay_grid", cls.decay_grid)),
                "naive_weight_grid": tuple(data.get("naive_weight_grid", cls.naive_weight_grid)),
            }
        )


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

    Test is the last `test_days`, validation the `validation_days` before it, train everything
    earlier (at most `max_train_days`). Raises NotEnoughData, a ValueError, when train would
    be shorter than three days.
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


def _import_prophet() -> type[Prophet]:
    """Prophet, imported on first use and with its chatter silenced.

    Done here rather than at import time so importing this module has no logging side effects.
    """
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "plotly failed" at import
    # cmdstanpy adds its own INFO handler unless its logger already has one.
    logging.getLogger("cmdstanpy").addHandler(logging.NullHandler())
    for name in ("prophet", "cmdstanpy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from prophet import Prophet

    return Prophet


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Prophet samples intervals from numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _observed(series: pd.DataFrame) -> pd.Series:
    """`y` indexed by `ds`, sorted: the lookup every forecast uses."""
    return series.set_index("ds")["y"].astype(float).sort_index()


@dataclass
class SeriesModel:
    """One fitted series: Prophet on the train part, plus the residual decay phi.

    A forecast from an origin is prophet(ds) + r * phi**k, where r is the latest residual
    (observation minus Prophet at or before the origin) and k the hours since that observation;
    then blended with the same hour yesterday: (1 - w) * that + w * y(ds - 24h), w chosen on
    validation (where yesterday's value is missing, the corrected forecast stands alone).
    """

    entity_id: str
    measure: str
    prophet: Prophet
    residual_decay: float
    train_points: int
    naive_weight: float = 0.0

    def _prophet_frame(self, hours: pd.DatetimeIndex) -> pd.DataFrame:
        """Prophet's yhat, yhat_lower, yhat_upper at the given hours, indexed by ds."""
        with _seeded_numpy(INTERVAL_SEED):
            frame = self.prophet.predict(pd.DataFrame({"ds": hours}))
        return frame.set_index("ds")[["yhat", "yhat_lower", "yhat_upper"]]

    def predict(
        self, history: pd.DataFrame, origin: pd.Timestamp, horizon_hours: int
    ) -> pd.DataFrame:
        """Forecast the hours origin + 1h .. origin + horizon from `history` (ds, y up to origin).

        Returns ds, horizon_h, yhat, yhat_lower, yhat_upper.
        """
        origin = pd.Timestamp(origin)
        hours = pd.date_range(
            origin - MAX_RESIDUAL_AGE + HOUR, origin + horizon_hours * HOUR, freq="h"
        )
        return _forecast_from(
            self._prophet_frame(hours),
            _observed(history),
            origin,
            horizon_hours,
            self.residual_decay,
            self.naive_weight,
        )

    def to_json(self) -> dict[str, Any]:
        from prophet.serialize import model_to_json

        return {
            "entity_id": self.entity_id,
            "measure": self.measure,
            "prophet": model_to_json(self.prophet),
            "residual_decay": self.residual_decay,
            "train_points": self.train_points,
            "naive_weight": self.naive_weight,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesModel:
        _import_prophet()
        from prophet.serialize import model_from_json

        return cls(
            entity_id=_entity_of(data),
            measure=data["measure"],
            prophet=model_from_json(data["prophet"]),
            residual_decay=float(data["residual_decay"]),
            train_points=int(data["train_points"]),
            naive_weight=float(data.get("naive_weight", 0.0)),
        )


def _same_hour_before(ds: pd.DatetimeIndex, horizon: np.ndarray) -> pd.DatetimeIndex:
    """ds - 24h (ds - 48h for h in 25..48, ...): the latest same hour at or before the origin."""
    days_back = np.ceil(horizon / DAY_HOURS).astype(int)
    return ds - pd.to_timedelta(days_back * DAY_HOURS, unit="h")


def _forecast_from(
    base: pd.DataFrame,
    observed: pd.Series,
    origin: pd.Timestamp,
    horizon_hours: int,
    decay: float,
    naive_weight: float = 0.0,
) -> pd.DataFrame:
    """Correct Prophet's `base` (indexed by ds) with the latest residual at or before origin."""
    future = pd.date_range(origin + HOUR, periods=horizon_hours, freq="h")
    correction = np.zeros(horizon_hours)
    recent = observed.loc[origin - MAX_RESIDUAL_AGE + HOUR : origin].dropna()
    if not recent.empty and decay > 0:
        seen_at = recent.index[-1]
        residual = recent.iloc[-1] - base.at[seen_at, "yhat"]
        hours_since_seen = ((future - seen_at) / HOUR).to_numpy()
        correction = residual * decay**hours_since_seen
    horizon = np.arange(1, horizon_hours + 1)
    if naive_weight > 0:
        corrected = base.loc[future, "yhat"].to_numpy() + correction
        naive = observed.reindex(_same_hour_before(future, horizon)).to_numpy()
        blended = np.where(
            np.isnan(naive), corrected, (1 - naive_weight) * corrected + naive_weight * naive
        )
        correction = correction + (blended - corrected)  # intervals move with yhat
    forecast = pd.DataFrame({"ds": future, "horizon_h": horizon})
    for column in ("yhat", "yhat_lower", "yhat_upper"):
        forecast[column] = base.loc[future, column].to_numpy() + correction
    if not np.isfinite(forecast[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()).all():
        raise ForecastError(f"non-finite forecast from {origin}")
    return forecast


def baseline_forecasts(
    series: pd.DataFrame, origin: pd.Timestamp, horizon_hours: int
) -> pd.DataFrame:
    """The two baselines from `origin`: ds, horizon_h, seasonal_naive, persistence.

    seasonal_naive is y at the same hour on the latest day at or before the origin
    (ds - 24h, or ds - 48h for h in 25..48, ...); persistence is the last non-NaN y at or
    before the origin. Either is NaN when the value it needs is missing.
    """
    origin = pd.Timestamp(origin)
    observed = _observed(series)
    horizon = np.arange(1, horizon_hours + 1)
    ds = origin + pd.to_timedelta(horizon, unit="h")
    same_hour_before = _same_hour_before(ds, horizon)
    up_to_origin = observed.loc[:origin].dropna()
    last_value = up_to_origin.iloc[-1] if not up_to_origin.empty else np.nan
    return pd.DataFrame(
        {
            "ds": ds,
            "horizon_h": horizon,
            "seasonal_naive": observed.reindex(same_hour_before).to_numpy(),
            "persistence": last_value,
        }
    )


def _origins(start: pd.Timestamp, end: pd.Timestamp, config: ForecastConfig) -> pd.DatetimeIndex:
    """Origins from start - 1h, every origin_every_hours, whose whole horizon is before end."""
    first = pd.Timestamp(start) - HOUR
    last = pd.Timestamp(end) - HOUR - config.horizon_hours * HOUR
    if last < first:
        return pd.DatetimeIndex([])
    return pd.date_range(first, last, freq=pd.Timedelta(hours=config.origin_every_hours))


def _rolling_forecasts(
    model: SeriesModel,
    observed: pd.Series,
    origins: pd.DatetimeIndex,
    horizon_hours: int,
    decay: float,
    naive_weight: float = 0.0,
) -> list[pd.DataFrame]:
    """Corrected forecasts from each origin, seeing y only up to that origin."""
    # One Prophet call for the whole window: Prophet's part never depends on y.
    hours = pd.date_range(
        origins[0] - MAX_RESIDUAL_AGE + HOUR, origins[-1] + horizon_hours * HOUR, freq="h"
    )
    base = model._prophet_frame(hours)
    return [
        _forecast_from(
            base, observed.loc[:origin], origin, horizon_hours, decay, naive_weight
        ).assign(origin=origin)
        for origin in origins
    ]


def evaluate(
    model: SeriesModel,
    series: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: ForecastConfig,
) -> pd.DataFrame:
    """Rolling-origin forecasts of Prophet and the baselines over the hours [start, end).

    One row per (origin, horizon) with an observed actual; columns ERROR_COLUMNS. Each origin
    sees y only up to and including itself. `prophet` equals SeriesModel.predict's yhat; the
    intervals come from one Prophet draw for the whole window, so they can differ from
    predict's by sampling noise.
    """
    origins = _origins(start, end, config)
    if origins.empty:
        return pd.DataFrame(columns=ERROR_COLUMNS)
    observed = _observed(series)
    forecasts = _rolling_forecasts(
        model, observed, origins, config.horizon_hours, model.residual_decay, model.naive_weight
    )
    frames = []
    for origin, forecast in zip(origins, forecasts, strict=True):
        up_to_origin = series[series["ds"] <= origin]
        baselines = baseline_forecasts(up_to_origin, origin, config.horizon_hours)
        frames.append(
            forecast.merge(baselines, on=["ds", "horizon_h"]).assign(
                actual=observed.reindex(forecast["ds"]).to_numpy()
            )
        )
    errors = pd.concat(frames, ignore_index=True).rename(columns={"yhat": "prophet"})
    errors = errors[errors["actual"].notna()].assign(
        entity_id=model.entity_id, measure=model.measure
    )
    return errors[ERROR_COLUMNS].reset_index(drop=True)


def _choose_corrections(
    model: SeriesModel, series: pd.DataFrame, split: Split, config: ForecastConfig
) -> tuple[float, float]:
    """The (phi, naive weight) of the grids with the lowest validation MAE.

    (0, 0), plain Prophet, without validation evidence; ties keep the smaller values.
    """
    origins = _origins(split.train_end, split.validation_end, config)
    if origins.empty:
        return 0.0, 0.0
    observed = _observed(series)
    best, best_mae = (0.0, 0.0), math.inf
    for decay in config.decay_grid:
        forecasts = pd.concat(
            _rolling_forecasts(model, observed, origins, config.horizon_hours, decay)
        )
        actual = observed.reindex(forecasts["ds"]).to_numpy()
        if np.isnan(actual).all():  # no validation actuals: nothing to choose on
            return 0.0, 0.0
        corrected = forecasts["yhat"].to_numpy()
        # Yesterday's hours are at or before each origin: no look-ahead.
        naive = observed.reindex(
            _same_hour_before(pd.DatetimeIndex(forecasts["ds"]), forecasts["horizon_h"].to_numpy())
        ).to_numpy()
        for weight in config.naive_weight_grid:
            blended = np.where(
                np.isnan(naive), corrected, (1 - weight) * corrected + weight * naive
            )
            mae = float(np.nanmean(np.abs(blended - actual)))
            if mae < best_mae:
                best, best_mae = (decay, weight), mae
    return best


def fit_series(
    entity_id: str, measure: str, series: pd.DataFrame, split: Split, config: ForecastConfig
) -> SeriesModel:
    """Fit Prophet on the train part of `series`, the residual decay and naive weight on validation.

    Raises NotEnoughData when train has fewer than config.min_train_points observations.
    """
    train = series[(series["ds"] >= split.train_start) & (series["ds"] < split.train_end)]
    train = train[["ds", "y"]].dropna()
    if len(train) < config.min_train_points:
        raise NotEnoughData(
            f"{len(train)} observed training hours, fewer than {config.min_train_points}"
        )
    train_days = (train["ds"].max() - train["ds"].min()) / pd.Timedelta(days=1)
    Prophet = _import_prophet()
    prophet = Prophet(
        daily_seasonality=True,
        weekly_seasonality=train_days >= 14,
        yearly_seasonality=train_days >= 365,
        interval_width=config.interval_width,
        uncertainty_samples=config.uncertainty_samples,
        changepoint_prior_scale=config.changepoint_prior_scale,
        seasonality_prior_scale=config.seasonality_prior_scale,
        seasonality_mode=config.seasonality_mode,
    )
    prophet.fit(train)
    model = SeriesModel(entity_id, measure, prophet, residual_decay=0.0, train_points=len(train))
    model.residual_decay, model.naive_weight = _choose_corrections(model, series, split, config)
    return model


METRIC_COLUMNS = [
    *(f"{metric}_{method}" for method in METHODS for metric in ("mae", "rmse", "mape")),
    "coverage",
    "n",
]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _metrics_of(errors: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for method in METHODS:
        made = errors[errors[method].notna()]
        actual = made["actual"].to_numpy(dtype=float)
        error = made[method].to_numpy(dtype=float) - actual
        large = np.abs(actual) >= MAPE_MIN_ABS_ACTUAL
        metrics[f"mae_{method}"] = _mean(np.abs(error))
        metrics[f"rmse_{method}"] = math.sqrt(_mean(error**2))
        metrics[f"mape_{method}"] = 100 * _mean(np.abs(error[large] / actual[large]))
    inside = (errors["actual"] >= errors["yhat_lower"]) & (errors["actual"] <= errors["yhat_upper"])
    metrics["coverage"] = _mean(inside.to_numpy())
    metrics["n"] = len(errors)
    return metrics


def error_metrics(errors: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """MAE, RMSE and MAPE (%) of each method, plus Prophet's interval coverage and row count n.

    One row overall (`by=None`) or one per group of `by` (e.g. ["entity_id", "measure"] or
    ["horizon_h"]). Columns mae_<method>, rmse_<method>, mape_<method> for each of METHODS,
    coverage (share of actuals inside [yhat_lower, yhat_upper]) and n. A method's metrics use
    the rows where it made a forecast. MAPE uses only rows with |actual| >= 1.0, because
    temperatures cross 0 °C and dividing by actuals near zero would swamp the mean; it is NaN
    when no row qualifies.
    """
    if not by:
        return pd.DataFrame([_metrics_of(errors)], columns=METRIC_COLUMNS)
    rows = [
        {**dict(zip(by, key, strict=True)), **_metrics_of(group)}
        for key, group in errors.groupby(by, sort=True)  # a list `by` gives tuple keys
    ]
    return pd.DataFrame(rows, columns=[*by, *METRIC_COLUMNS])


def relative_mae(errors: pd.DataFrame) -> float:
    """Mean over series of MAE(prophet) / MAE(seasonal_naive); lower is better.

    The one score that compares a challenger with the champion: below 1 means Prophet beats
    "same hour yesterday". Each series counts once, whatever its scale, and is scored on the
    rows where both methods made a forecast; series where seasonal naive is perfect or absent
    are left out. NaN when no series is left.
    """
    ratios = []
    for _, group in errors.groupby(["entity_id", "measure"]):
        both = group.dropna(subset=["prophet", "seasonal_naive"])
        naive_mae = (both["seasonal_naive"] - both["actual"]).abs().mean()
        if len(both) and naive_mae > 0:
            ratios.append((both["prophet"] - both["actual"]).abs().mean() / naive_mae)
    return float(np.mean(ratios)) if ratios else math.nan


@dataclass
class SeriesResult:
    """What training one series returns; picklable, so Ray can ship it."""

    entity_id: str
    measure: str
    model_json: dict[str, Any] | None  # SeriesModel.to_json(); None when skipped
    errors: pd.DataFrame | None  # evaluate() on the test part
    skipped: str | None  # why there is no model
    seconds: float


def train_series(
    entity_id: str, measure: str, series: pd.DataFrame, split: Split, config: ForecastConfig
) -> SeriesResult:
    """Fit and test one series; data problems come back as a `skipped` reason, not an error."""
    started = time.perf_counter()
    try:
        model = fit_series(entity_id, measure, series, split, config)
        errors = evaluate(model, series, split.validation_end, split.test_end, config)
    # ForecastError is a ValueError; ValueError and RuntimeError are also how Prophet and
    # Stan report a series they cannot fit.
    except (ValueError, RuntimeError) as exc:
        return SeriesResult(
            entity_id,
            measure,
            None,
            None,
            f"{type(exc).__name__}: {exc}",
            time.perf_counter() - started,
        )
    return SeriesResult(
        entity_id, measure, model.to_json(), errors, None, time.perf_counter() - started
    )


def train_many(
    tasks: list[tuple[str, str, pd.DataFrame]], split: Split, config: ForecastConfig
) -> list[SeriesResult]:
    """Train many series one after another: the body of one Ray task."""
    return [
        train_series(station, measure, series, split, config) for station, measure, series in tasks
    ]


def _entity_of(data: dict[str, Any]) -> str:
    """The series' entity: `entity_id`, or `station_id` in bundles saved before sources of
    other shapes arrived (registered models stay loadable)."""
    return str(data["entity_id"] if "entity_id" in data else data["station_id"])


def _series_file(entity_id: str, measure: str) -> str:
    return f"{entity_id}__{measure}.json"


class ForecastBundle:
    """Every series model of one source: what is registered as one model version."""

    def __init__(
        self,
        models: dict[tuple[str, str], SeriesModel],
        config: ForecastConfig,
        split: Split,
        source: str,
    ) -> None:
        self.models = models
        self.config = config
        self.split = split
        self.source = source

    def series(self) -> list[tuple[str, str]]:
        return sorted(self.models)

    def save(self, directory: Path) -> None:
        """Write manifest.json and series/<station>__<measure>.json under `directory`."""
        directory = Path(directory)
        (directory / "series").mkdir(parents=True, exist_ok=True)
        listed = []
        for entity_id, measure in self.series():
            name = _series_file(entity_id, measure)
            model_json = self.models[(entity_id, measure)].to_json()
            (directory / "series" / name).write_text(json.dumps(model_json))
            listed.append({"entity_id": entity_id, "measure": measure, "file": f"series/{name}"})
        manifest = {
            "source": self.source,
            "config": self.config.to_dict(),
            "split": self.split.to_dict(),
            "series": listed,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: Path) -> ForecastBundle:
        directory = Path(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        models = {}
        for entry in manifest["series"]:
            data = json.loads((directory / entry["file"]).read_text())
            models[(_entity_of(entry), entry["measure"])] = SeriesModel.from_json(data)
        return cls(
            models,
            ForecastConfig.from_dict(manifest["config"]),
            Split.from_dict(manifest["split"]),
            manifest["source"],
        )

    @classmethod
    def from_results(
        cls, results: list[SeriesResult], config: ForecastConfig, split: Split, source: str
    ) -> ForecastBundle:
        """The trained series of `results`; skipped ones are left out."""
        models = {
            (result.entity_id, result.measure): SeriesModel.from_json(result.model_json)
            for result in results
            if result.model_json is not None
        }
        return cls(models, config, split, source)

    def _model(self, entity_id: str, measure: str) -> SeriesModel:
        try:
            return self.models[(entity_id, measure)]
        except KeyError:
            raise KeyError(
                f"no model for entity {entity_id!r}, measure {measure!r} in the {self.source}"
                f" bundle ({len(self.models)} series)"
            ) from None

    def predict(
        self,
        entity_id: str,
        measure: str,
        history: pd.DataFrame,
        origin: pd.Timestamp,
        horizon_hours: int | None = None,
    ) -> pd.DataFrame:
        """SeriesModel.predict for one series; the config's horizon unless given."""
        horizon = self.config.horizon_hours if horizon_hours is None else horizon_hours
        return self._model(entity_id, measure).predict(history, origin, horizon)

    def evaluate(
        self,
        series_frames: dict[tuple[str, str], pd.DataFrame],
        start: pd.Timestamp,
        end: pd.Timestamp,
    ) -> pd.DataFrame:
        """evaluate() over [start, end) for every series both here and in `series_frames`.

        Scores a champion on a challenger's test window; series the bundle lacks are left out.
        """
        frames = [
            evaluate(self.models[key], series_frames[key], start, end, self.config)
            for key in sorted(series_frames)
            if key in self.models
        ]
        frames = [frame for frame in frames if not frame.empty]
        if not frames:
            return pd.DataFrame(columns=ERROR_COLUMNS)
        return pd.concat(frames, ignore_index=True)
