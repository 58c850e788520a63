"""The forecast bundle of one source: every candidate, the method served per (measure, horizon
bucket), conformal 80% bands and the contract's valid range; fitted, saved, loaded, and asked
for forecasts from many origins at once (training, evaluation and gold call the same code).

Selection: on the validation part, per measure and horizon bucket, the candidate with the
lowest MAE is served, but never one whose MAE is worse than seasonal-naive's. Bands: the
served method's validation residuals per (measure, horizon), each divided by how much its
series had moved lately (`recent_change_many`, at the origin), their 10th and 90th percentiles
(for an 80% band) times that at the origin served, added to yhat: a series in a calm spell
gets narrower bands and one in a stormy spell wider ones, so coverage holds in both. Where the
served method has nothing to say (no observation in the last day, an unknown entity), the
forecast falls back to seasonal-naive, persistence, then the entity's training mean, and the
gold row names the method actually used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.forecast.core import (
    BUCKETS,
    ForecastConfig,
    ForecastError,
    Split,
    hours_since_epoch,
    persistence_many,
    recent_change_many,
    seasonal_naive_many,
    to_grid,
)
from ml.forecast.global_method import GlobalModel, fit_global
from ml.forecast.prophet_method import ProphetSeries, fit_prophet
from periscope.contracts import Measure, SourceContract
from periscope.predictions import FORECAST_METHODS

__all__ = [
    "BUNDLE_FORMAT",
    "ERROR_COLUMNS",
    "FALLBACKS",
    "METHOD_NAMES",
    "ForecastBundle",
    "ProphetResult",
    "SeriesForecast",
    "choose_method",
    "conformal_offsets",
    "fit_bundle",
    "fit_every_global",
    "fit_globals",
    "source_config",
    "fit_prophets",
    "plan_measure",
    "valid_ranges",
]

# 3: the global model reads a week of history (same-hour means, the day-before mean).
# 4: ... and its neighbours' recent departures (GlobalModel.neighbours).
BUNDLE_FORMAT = 4
# Every name a gold row's `method` can hold (periscope.predictions, which the warehouse reads too).
METHOD_NAMES = FORECAST_METHODS
# What stands in, in order, where the served method gives no forecast.
FALLBACKS = ("seasonal_naive", "persistence", "mean")
ERROR_COLUMNS = [
    "entity_id",
    "measure",
    "origin",
    "ds",
    "horizon_h",
    "actual",
    "served",
    "method",
    "yhat_lower",
    "yhat_upper",
    "recent_change",
    "prophet",
    "gbm",
    "seasonal_naive",
    "persistence",
]


def choose_method(validation_mae: dict[str, float]) -> str:
    """The served method of one (measure, bucket): the lowest validation MAE among the
    candidates not worse than seasonal-naive's; seasonal-naive itself without evidence.

    >>> choose_method({"seasonal_naive": 2.0, "persistence": 1.5, "gbm": 1.0})
    'gbm'
    >>> choose_method({"seasonal_naive": 2.0, "gbm": float("nan")})
    'seasonal_naive'
    """
    yardstick = validation_mae.get("seasonal_naive", math.nan)
    if not math.isfinite(yardstick):
        return "seasonal_naive"
    eligible = {
        method: mae
        for method, mae in validation_mae.items()
        if math.isfinite(mae) and mae <= yardstick
    }
    # Ties go to the simpler method: the order of METHOD_NAMES.
    return min(eligible, key=lambda m: (eligible[m], METHOD_NAMES.index(m)))


def conformal_offsets(
    residuals: np.ndarray, interval_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per horizon (columns of `residuals` = actual - yhat, NaN: no actual), the offsets of
    an interval holding the central `interval_width` share: split conformal's order statistics
    of the n residuals, the floor((n + 1) * tail)-th smallest and the ceil((n + 1) * (1 - tail))-th
    (tail = (1 - width) / 2), the ranks that cover a new exchangeable residual with probability
    at least `interval_width`. Plain quantiles of n points come short by about 1 / n: 72
    residuals a horizon (a short lake's 3 days of validation, one station) gave 78 %, not 80.
    Where n is too small for a rank, the smallest or largest residual stands in."""
    tail = (1 - interval_width) / 2
    lower, upper = np.zeros(residuals.shape[1]), np.zeros(residuals.shape[1])
    for h in range(residuals.shape[1]):
        seen = np.sort(residuals[:, h][~np.isnan(residuals[:, h])])
        n = len(seen)
        if n:
            # 1-based ranks; the rounding guards (n + 1) * tail landing a hair off a whole number.
            low = int(np.floor(round((n + 1) * tail, 9)))
            high = int(np.ceil(round((n + 1) * (1 - tail), 9)))
            lower[h] = seen[min(max(low, 1), n) - 1]
            upper[h] = seen[min(max(high, 1), n) - 1]
    return lower, upper


# A band's scale is the series' recent change, but at least this share of the measure's typical
# one (its median on validation): a sensor that sat still for days does not get a band of 0.
_MIN_SCALE_SHARE = 0.25


def band_scale(recent_change: np.ndarray, typical: float) -> np.ndarray:
    """What a band's offsets are multiplied by at each origin: the series' recent change,
    floored at a share of the typical change; the typical change where it is unknown."""
    with np.errstate(invalid="ignore"):
        return np.where(
            np.isfinite(recent_change),
            np.maximum(recent_change, _MIN_SCALE_SHARE * typical),
            typical,
        )


@dataclass
class SeriesForecast:
    """Forecasts from many origins (origins x horizon) and the method behind each value."""

    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: np.ndarray  # indices into METHOD_NAMES
    recent_change: np.ndarray  # per origin (`recent_change_many`): what the band scaled with


@dataclass
class MeasurePlan:
    """How one measure is served: its valid range, the method per horizon and the band
    offsets per method and horizon (from validation residuals), in units of the series'
    recent change (`band_scale`) where `typical_change` is set, of the measure otherwise (a
    bundle saved before bands scaled)."""

    lo: float
    hi: float
    served: list[str]  # per horizon 1..H
    offsets: dict[str, tuple[np.ndarray, np.ndarray]]
    validation_mae: dict[str, dict[str, float]]  # bucket label -> method -> MAE
    typical_change: float | None = None  # the median recent change on validation

    def to_json(self) -> dict[str, Any]:
        return {
            "lo": self.lo,
            "hi": self.hi,
            "served": self.served,
            "offsets": {m: [lo.tolist(), hi.tolist()] for m, (lo, hi) in self.offsets.items()},
            "validation_mae": self.validation_mae,
            "typical_change": self.typical_change,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeasurePlan:
        return cls(
            float(data["lo"]),
            float(data["hi"]),
            list(data["served"]),
            {m: (np.array(lo), np.array(hi)) for m, (lo, hi) in data["offsets"].items()},
            data["validation_mae"],
            data.get("typical_change"),
        )


def _bucket_label(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}-{bucket[1]}"


class ForecastBundle:
    """Every forecast model of one source: what is registered as one model version."""

    def __init__(
        self,
        *,
        source: str,
        config: ForecastConfig,
        split: Split,
        means: dict[tuple[str, str], float],
        prophets: dict[tuple[str, str], ProphetSeries],
        globals_: dict[str, GlobalModel],
        plans: dict[str, MeasurePlan] | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.split = split
        self.means = means  # (entity, measure) -> training mean: which series are served
        self.prophets = prophets
        self.globals = globals_
        self.plans = plans or {}

    def series(self) -> list[tuple[str, str]]:
        """The (entity_id, measure) pairs gold forecasts."""
        return sorted(self.means)

    def measures(self) -> list[str]:
        return sorted({m for _, m in self.means})

    # --- forecasting --------------------------------------------------------------------
    def candidate(
        self,
        method: str,
        measure: str,
        requests: list[tuple[str, np.ndarray, int, np.ndarray]],
        *,
        needed: np.ndarray | None = None,
        context: dict[str, tuple[int, np.ndarray]] | None = None,
    ) -> list[np.ndarray]:
        """One method's raw yhat (origins x horizon, NaN: no forecast) for each request
        (entity, origins, grid_start, observed), reading y only up to each origin. `needed`
        (a mask over the horizons) lets the costly global model skip the others; `context`
        (entity -> (grid_start, observed) of this measure) is what the global model reads
        the neighbours from, by default the requests themselves."""
        horizon = self.config.horizon_hours
        if method == "gbm":
            model = self.globals.get(measure)
            if model is not None:
                return model.forecast_many(requests, horizon, needed=needed, context=context)
        if method == "persistence":
            return persistence_many(requests, horizon)
        if method == "seasonal_naive":
            return seasonal_naive_many(requests, horizon)
        out = []
        for entity_id, origins, grid_start, observed in requests:
            shape = (len(origins), horizon)
            if method == "prophet" and (entity_id, measure) in self.prophets:
                prophet = self.prophets[(entity_id, measure)]
                out.append(prophet.forecast(origins, grid_start, observed, horizon))
            elif method == "mean":
                out.append(np.full(shape, self.means.get((entity_id, measure), np.nan)))
            else:  # a candidate this series has no model for
                out.append(np.full(shape, np.nan))
        return out

    def forecast_many(
        self,
        measure: str,
        requests: list[tuple[str, np.ndarray, int, np.ndarray]],
        *,
        context: dict[str, tuple[int, np.ndarray]] | None = None,
    ) -> list[SeriesForecast]:
        """Served forecasts with bands, clipped to the valid range, for each request
        (entity_id, origins: hours since the epoch, grid_start, observed y from grid_start
        with NaN where missing, reaching back a week before the first origin). `context`:
        other entities' (grid_start, observed) of the measure, read up to each origin (the
        global model's neighbours); by default the requests' own."""
        plan = self.plans[measure]
        served = np.array([METHOD_NAMES.index(m) for m in plan.served])
        needed = [m for m in METHOD_NAMES if m in plan.served or m in FALLBACKS]
        served_as = np.array(plan.served)
        values = {
            m: self.candidate(m, measure, requests, needed=served_as == m, context=context)
            for m in needed
        }
        # Every request's rows at once: the steps below are elementwise, and per request they
        # were a fifth of a live scoring round (hundreds of small requests, one origin each).
        rows = np.cumsum([0, *(len(r[1]) for r in requests)])
        stacked = {
            m: np.concatenate(v) if v else np.zeros((0, len(served))) for m, v in values.items()
        }
        method = np.broadcast_to(served, stacked["mean"].shape).copy()
        yhat = np.full(method.shape, np.nan)
        for code in np.unique(served):
            yhat = np.where(method == code, stacked[METHOD_NAMES[code]], yhat)
        for fallback in FALLBACKS:
            missing = np.isnan(yhat)
            yhat = np.where(missing, stacked[fallback], yhat)
            method = np.where(missing, METHOD_NAMES.index(fallback), method)
        yhat = np.clip(yhat, plan.lo, plan.hi)
        recent = recent_change_many(requests)
        scale = (
            np.ones((len(yhat), 1))
            if plan.typical_change is None
            else band_scale(recent, plan.typical_change)[:, None]
        )
        lower, upper = np.empty_like(yhat), np.empty_like(yhat)
        for code in np.unique(method):
            at = method == code
            lo_off, hi_off = plan.offsets[METHOD_NAMES[code]]
            lower = np.where(at, yhat + lo_off * scale, lower)
            upper = np.where(at, yhat + hi_off * scale, upper)
        lower = np.clip(np.minimum(lower, yhat), plan.lo, plan.hi)
        upper = np.clip(np.maximum(upper, yhat), plan.lo, plan.hi)
        return [
            SeriesForecast(yhat[a:b], lower[a:b], upper[a:b], method[a:b], recent[a:b])
            for a, b in zip(rows[:-1], rows[1:], strict=True)
        ]

    def forecast(
        self,
        entity_id: str,
        measure: str,
        origins: np.ndarray,
        grid_start: int,
        observed: np.ndarray,
        context: dict[str, tuple[int, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """yhat, yhat_lower, yhat_upper (origins x horizon) of one series: see forecast_many."""
        f = self.forecast_many(
            measure, [(entity_id, np.asarray(origins), grid_start, observed)], context=context
        )[0]
        return f.yhat, f.lower, f.upper

    def predict(
        self,
        entity_id: str,
        measure: str,
        history: pd.DataFrame,
        origin: pd.Timestamp,
        horizon_hours: int | None = None,
    ) -> pd.DataFrame:
        """One origin's forecast from a `ds`/`y` history: ds, horizon_h, yhat, yhat_lower,
        yhat_upper, method; the first `horizon_hours` (all the config's by default)."""
        grid_start, y = to_grid(history)
        origin_hour = hours_since_epoch(pd.Timestamp(origin))
        f = self.forecast_many(measure, [(entity_id, np.array([origin_hour]), grid_start, y)])[0]
        horizon = self.config.horizon_hours if horizon_hours is None else horizon_hours
        if not 1 <= horizon <= self.config.horizon_hours:
            raise ValueError(f"horizon_hours must be in 1..{self.config.horizon_hours}")
        ahead = np.arange(1, horizon + 1)
        return pd.DataFrame(
            {
                "ds": pd.Timestamp(origin) + pd.to_timedelta(ahead, unit="h"),
                "horizon_h": ahead,
                "yhat": f.yhat[0, :horizon],
                "yhat_lower": f.lower[0, :horizon],
                "yhat_upper": f.upper[0, :horizon],
                "method": [METHOD_NAMES[c] for c in f.method[0, :horizon]],
            }
        )

    def warm(self, entities: Iterable[str], hours: np.ndarray) -> int:
        """Compute Prophet's cached hours for these entities' series (what gold does when a
        model is loaded, so the first rounds do not pay for it); returns the series warmed."""
        wanted = set(entities)
        served = {m for m, plan in self.plans.items() if "prophet" in plan.served}
        warmed = 0
        for (entity_id, measure), prophet in self.prophets.items():
            if entity_id in wanted and measure in served:
                prophet.yhat(hours)
                warmed += 1
        return warmed

    # --- evaluation ---------------------------------------------------------------------
    def evaluate(
        self,
        frames: dict[tuple[str, str], pd.DataFrame],
        start: pd.Timestamp,
        end: pd.Timestamp,
        *,
        every_hours: int | None = None,
    ) -> pd.DataFrame:
        """Forecasts from origins in [start - 1h, end - 1h - horizon] (every `every_hours`,
        the config's by default) of every series both here and in `frames`, with their
        actuals: one row per (series, origin, horizon) with an actual; ERROR_COLUMNS."""
        every = every_hours or self.config.origin_every_hours
        horizon = self.config.horizon_hours
        first = hours_since_epoch(pd.Timestamp(start)) - 1
        last = hours_since_epoch(pd.Timestamp(end)) - 1 - horizon
        origins = np.arange(first, last + 1, every)
        parts = []
        for measure in self.measures():
            keys = [k for k in sorted(frames) if k in self.means and k[1] == measure]
            if not keys or len(origins) == 0:
                continue
            requests = [
                (entity, origins, *to_grid(frames[(entity, measure)])) for entity, _ in keys
            ]
            served = self.forecast_many(measure, requests)
            raw = {m: self.candidate(m, measure, requests) for m in METHOD_NAMES[:4]}
            for i, (entity, _, grid_start, y) in enumerate(requests):
                target = origins[:, None] + np.arange(1, horizon + 1) - grid_start
                actual = (
                    np.where(
                        (target >= 0) & (target < len(y)),
                        y[np.clip(target, 0, max(len(y) - 1, 0))],
                        np.nan,
                    )
                    if len(y)
                    else np.full(target.shape, np.nan)
                )
                frame = pd.DataFrame(
                    {
                        "entity_id": entity,
                        "measure": measure,
                        "origin": np.repeat(origins, horizon),
                        "horizon_h": np.tile(np.arange(1, horizon + 1), len(origins)),
                        "actual": actual.ravel(),
                        "served": served[i].yhat.ravel(),
                        "method": np.array(METHOD_NAMES)[served[i].method.ravel()],
                        "yhat_lower": served[i].lower.ravel(),
                        "yhat_upper": served[i].upper.ravel(),
                        "recent_change": np.repeat(served[i].recent_change, horizon),
                        **{m: raw[m][i].ravel() for m in METHOD_NAMES[:4]},
                    }
                )
                parts.append(frame[frame["actual"].notna()])
        if not parts:
            return pd.DataFrame(columns=ERROR_COLUMNS)
        errors = pd.concat(parts, ignore_index=True)
        errors["origin"] = pd.to_datetime(errors["origin"] * 3_600_000_000, unit="us")
        errors["ds"] = errors["origin"] + pd.to_timedelta(errors["horizon_h"], unit="h")
        return errors[ERROR_COLUMNS]

    # --- fitting ------------------------------------------------------------------------
    @classmethod
    def assemble(
        cls,
        *,
        source: str,
        config: ForecastConfig,
        split: Split,
        frames: dict[tuple[str, str], pd.DataFrame],
        prophets: dict[tuple[str, str], ProphetSeries],
        globals_: dict[str, GlobalModel],
        ranges: dict[str, tuple[float, float]],
    ) -> ForecastBundle:
        """Choose the served method per (measure, bucket) and the band offsets on the
        validation part of `frames`, from the fitted candidates."""
        train_start, train_end = split.train_start, split.train_end
        means = {}
        for key, frame in frames.items():
            train = frame[(frame["ds"] >= train_start) & (frame["ds"] < train_end)]["y"]
            if train.notna().sum() >= config.min_train_points:
                means[key] = float(train.mean())
        bundle = cls(
            source=source,
            config=config,
            split=split,
            means=means,
            prophets={k: v for k, v in prophets.items() if k in means},
            globals_=globals_,
        )
        horizon = config.horizon_hours
        for measure in bundle.measures():
            lo, hi = ranges.get(measure, (-math.inf, math.inf))
            # Provisional plan (seasonal-naive everywhere) so validation can run forecast_many.
            bundle.plans[measure] = MeasurePlan(
                lo,
                hi,
                ["seasonal_naive"] * horizon,
                {m: (np.zeros(horizon),) * 2 for m in METHOD_NAMES},
                {},
            )
        validation = bundle.evaluate(frames, split.train_end, split.validation_end, every_hours=1)
        for measure in bundle.measures():
            bundle.plans[measure] = plan_measure(
                validation[validation["measure"] == measure],
                config,
                means={e: v for (e, m), v in means.items() if m == measure},
                valid_range=ranges.get(measure, (-math.inf, math.inf)),
            )
        return bundle

    # --- persistence --------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """manifest.json, series/<entity>__<measure>.json (Prophet) and global/<measure>.pkl."""
        directory = Path(directory)
        (directory / "series").mkdir(parents=True, exist_ok=True)
        (directory / "global").mkdir(parents=True, exist_ok=True)
        listed = []
        for entity_id, measure in self.series():
            entry: dict[str, Any] = {
                "entity_id": entity_id,
                "measure": measure,
                "mean": self.means[(entity_id, measure)],
            }
            prophet = self.prophets.get((entity_id, measure))
            if prophet is not None:
                name = f"series/{entity_id}__{measure}.json"
                (directory / name).write_text(json.dumps(prophet.to_json()))
                entry["prophet"] = name
            listed.append(entry)
        global_files = {}
        for measure, model in self.globals.items():
            name = f"global/{measure}.pkl"
            (directory / name).write_bytes(model.to_bytes())
            global_files[measure] = name
        manifest = {
            "format": BUNDLE_FORMAT,
            "source": self.source,
            "config": self.config.to_dict(),
            "split": self.split.to_dict(),
            "plans": {m: plan.to_json() for m, plan in self.plans.items()},
            "global": global_files,
            "series": listed,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))

    @staticmethod
    def is_current(directory: Path) -> bool:
        """Whether the bundle saved in `directory` is of the format `load` reads."""
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        return bool(manifest.get("format") == BUNDLE_FORMAT)

    @classmethod
    def load(cls, directory: Path) -> ForecastBundle:
        directory = Path(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ForecastError(
                f"the {manifest.get('source', '?')} forecast bundle in {directory} was saved by an"
                f" older Periscope (format {manifest.get('format', 1)}, this one reads"
                f" {BUNDLE_FORMAT}): retrain it with `periscope train --source"
                f" {manifest.get('source', '<source>')}`"
            )
        means, prophets = {}, {}
        for entry in manifest["series"]:
            key = (entry["entity_id"], entry["measure"])
            means[key] = float(entry["mean"])
            if "prophet" in entry:
                data = json.loads((directory / entry["prophet"]).read_text())
                prophets[key] = ProphetSeries.from_json(data)
        globals_ = {
            measure: GlobalModel.from_bytes((directory / name).read_bytes())
            for measure, name in manifest["global"].items()
        }
        return cls(
            source=manifest["source"],
            config=ForecastConfig.from_dict(manifest["config"]),
            split=Split.from_dict(manifest["split"]),
            means=means,
            prophets=prophets,
            globals_=globals_,
            plans={m: MeasurePlan.from_json(p) for m, p in manifest["plans"].items()},
        )


def plan_measure(
    validation: pd.DataFrame,
    config: ForecastConfig,
    *,
    means: dict[str, float],
    valid_range: tuple[float, float],
) -> MeasurePlan:
    """One measure's served method per horizon bucket (`choose_method` on validation MAE) and
    band offsets per method and horizon, from its validation rows: ERROR_COLUMNS as
    `ForecastBundle.evaluate` gives them (every candidate's raw forecast, the actual).
    `means`: each entity's training mean, the last-resort forecast."""
    horizon = config.horizon_hours
    lo, hi = valid_range
    rows = validation[validation["seasonal_naive"].notna()]
    filled = {}
    for method in (*config.candidates, "mean"):
        values = rows[method] if method in rows else pd.Series(np.nan, index=rows.index)
        if method == "mean":
            values = rows["entity_id"].map(means).astype(float)
        # Scored as served: gaps filled by the fallbacks, then clipped to the valid range.
        for fallback in ("seasonal_naive", "persistence"):
            values = values.fillna(rows[fallback])
        filled[method] = values.clip(lo, hi)
    served: list[str] = []
    table: dict[str, dict[str, float]] = {}
    for bucket in BUCKETS[: _buckets_within(horizon)]:
        inside = rows["horizon_h"].between(*bucket).to_numpy()
        actual = rows["actual"].to_numpy()[inside]
        maes = {
            m: float(np.mean(np.abs(filled[m].to_numpy()[inside] - actual)))
            if inside.any()
            else math.nan
            for m in config.candidates
        }
        table[_bucket_label(bucket)] = maes
        chosen = choose_method(maes)
        served += [chosen] * (min(bucket[1], horizon) - bucket[0] + 1)
    # Residuals in units of each origin's band scale, as they will be served.
    recent = rows["recent_change"].to_numpy(dtype="float64")
    typical = float(np.nanmedian(recent)) if np.isfinite(recent).any() else math.nan
    typical = typical if typical > 0 else 1.0  # a flat validation: plain offsets
    scale = band_scale(recent, typical)
    offsets = {}
    for method in METHOD_NAMES:
        source = filled.get(method, filled["seasonal_naive"])
        residual = np.full((len(rows), horizon), np.nan)
        h = rows["horizon_h"].to_numpy() - 1
        residual[np.arange(len(rows)), h] = (rows["actual"].to_numpy() - source.to_numpy()) / scale
        offsets[method] = conformal_offsets(residual, config.interval_width)
    return MeasurePlan(lo, hi, served, offsets, table, typical)


def _buckets_within(horizon: int) -> int:
    return sum(1 for first, _ in BUCKETS if first <= horizon)


@dataclass
class ProphetResult:
    """What fitting one Prophet series returns; picklable, so Ray can ship it."""

    entity_id: str
    measure: str
    model_json: dict[str, Any] | None
    skipped: str | None
    seconds: float


def fit_prophets(
    tasks: list[tuple[str, str, pd.DataFrame]], split: Split, config: ForecastConfig
) -> list[ProphetResult]:
    """Fit Prophet for many series one after another (the body of one Ray task); a series
    that cannot be fitted comes back with a `skipped` reason, not an error."""
    results = []
    for entity_id, measure, frame in tasks:
        started = time.perf_counter()
        try:
            model = fit_prophet(*to_grid(frame), split, config)
        # ValueError and RuntimeError are how Prophet and Stan report a series they cannot fit.
        except (ValueError, RuntimeError) as exc:
            results.append(
                ProphetResult(
                    entity_id,
                    measure,
                    None,
                    f"{type(exc).__name__}: {exc}",
                    time.perf_counter() - started,
                )
            )
            continue
        results.append(
            ProphetResult(entity_id, measure, model.to_json(), None, time.perf_counter() - started)
        )
    return results


def fit_globals(
    measure: str,
    frames: dict[tuple[str, str], pd.DataFrame],
    split: Split,
    config: ForecastConfig,
) -> GlobalModel | None:
    """The global model of one measure over every entity of `frames`; None without data."""
    series = {entity: to_grid(frame) for (entity, m), frame in frames.items() if m == measure}
    try:
        return fit_global(measure, series, split, config)
    except ValueError:
        return None


def fit_every_global(
    frames: dict[tuple[str, str], pd.DataFrame], split: Split, config: ForecastConfig
) -> dict[str, GlobalModel]:
    """The global model of each measure of `frames` that has data, in this process."""
    models = {}
    for measure in sorted({m for _, m in frames}):
        model = fit_globals(measure, frames, split, config)
        if model is not None:
            models[measure] = model
    return models


def fit_bundle(
    frames: dict[tuple[str, str], pd.DataFrame],
    split: Split,
    config: ForecastConfig | None = None,
    *,
    source: str,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> ForecastBundle:
    """Fit every candidate in this process and assemble the bundle (no Ray): the models see
    the train part of `frames`, the selection and bands its validation part; nothing after
    `split.validation_end` is read. `frames` maps (entity_id, measure) to a `ds`/`y` hourly frame."""
    config = config or ForecastConfig()
    prophets: dict[tuple[str, str], ProphetSeries] = {}
    if "prophet" in config.candidates:
        for result in fit_prophets(
            [(e, m, f) for (e, m), f in sorted(frames.items())], split, config
        ):
            if result.model_json is not None:
                prophets[(result.entity_id, result.measure)] = ProphetSeries.from_json(
                    result.model_json
                )
    globals_ = fit_every_global(frames, split, config) if "gbm" in config.candidates else {}
    return ForecastBundle.assemble(
        source=source,
        config=config,
        split=split,
        frames={k: f[f["ds"] < split.validation_end] for k, f in frames.items()},
        prophets=prophets,
        globals_=globals_,
        ranges=ranges or {},
    )


def source_config(config: ForecastConfig, contract: SourceContract) -> ForecastConfig:
    """`config` as the source's contract adjusts it: the week cycle where its series follow
    the day of the week (`weekly_cycle`). Saved with the bundle, so gold serves it alike."""
    if contract.weekly_cycle and not config.gbm_week_cycle:
        return replace(config, gbm_week_cycle=True)
    return config


def valid_ranges(contract: SourceContract) -> dict[str, tuple[float, float]]:
    """(lo, hi) a forecast of each of the contract's targets must lie in: a measure's valid
    range for its hourly mean; counts and sums of non-negative fields cannot go below 0."""
    measures = {f.name: f for f in contract.fields if isinstance(f, Measure)}
    ranges: dict[str, tuple[float, float]] = {}
    for target in contract.forecast_targets:
        field = measures.get(target.field or "")
        if target.aggregate == "mean" and field is not None:
            ranges[target.name] = (field.valid_min, field.valid_max)
        elif target.aggregate == "count" or field is None or field.valid_min >= 0:
            ranges[target.name] = (0.0, math.inf)
        else:
            ranges[target.name] = (-math.inf, math.inf)
    return ranges
