"""Forecast training on Ray: Prophet per (entity, measure) in tasks of several series, one
global gradient-boosted model per measure, then the selection and bands on validation and the
scores on test (`ml.forecast.ForecastBundle.assemble`, `evaluate`).

Several series go in one Ray task, so process start-up is paid once per task, not per series.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from ml import forecast
from ml.training.config import Progress, TrainConfig
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError

__all__ = [
    "ForecastOutcome",
    "compare_forecast",
    "fit_until",
    "train_forecasts",
]


@dataclass
class ForecastOutcome:
    bundle: forecast.ForecastBundle
    errors: pd.DataFrame  # bundle.evaluate on the test part
    skipped: dict[str, str]
    seconds: float

    @cached_property  # read by the CLI and the registry: compute once
    def overall(self) -> dict[str, float]:
        return _metrics_dict(forecast.error_metrics(self.errors))

    @cached_property
    def per_series(self) -> pd.DataFrame:
        return forecast.error_metrics(self.errors, by=["entity_id", "measure"])

    @cached_property
    def score(self) -> float:
        return forecast.relative_mae(self.errors)


def _metrics_dict(frame: pd.DataFrame) -> dict[str, float]:
    row = frame.iloc[0]
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float | np.number)}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ranges(source: str) -> dict[str, tuple[float, float]]:
    try:
        return forecast.valid_ranges(get_contract(source))
    except KeyError:  # a bundle of a source registered elsewhere: no range to clip to
        return {}


def train_forecasts(
    frames: dict[tuple[str, str], pd.DataFrame],
    split: forecast.Split,
    config: TrainConfig,
    *,
    source: str,
    on_progress: Progress | None = None,
) -> ForecastOutcome:
    """Fit every candidate on Ray, assemble the bundle and test it; needs a running Ray
    (see `ray_session`). `frames` may reach to split.test_end; models see only train."""
    import ray

    started = time.perf_counter()
    settings = config.for_source(get_contract(source)).forecast
    before_test = {k: f[f["ds"] < split.validation_end] for k, f in frames.items()}
    pending: dict[ray.ObjectRef, tuple[str, int]] = {}
    if "prophet" in settings.candidates:
        fit_prophets = ray.remote(num_cpus=1)(forecast.fit_prophets)
        tasks = [(e, m, frame) for (e, m), frame in sorted(before_test.items())]
        for chunk in _chunks(tasks, config.series_per_task):
            pending[fit_prophets.remote(chunk, split, settings)] = ("prophet", len(chunk))
    if "gbm" in settings.candidates:
        fit_globals = ray.remote(num_cpus=1)(forecast.fit_globals)
        for measure in sorted({m for _, m in before_test}):
            of_measure = {k: f for k, f in before_test.items() if k[1] == measure}
            pending[fit_globals.remote(measure, of_measure, split, settings)] = ("gbm", 0)
    prophets, globals_, skipped = {}, {}, {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            kind, series = pending.pop(ref)
            result = ray.get(ref)
            if kind == "gbm":
                if result is not None:
                    globals_[result.measure] = result
                continue
            for r in result:
                if r.model_json is None:
                    skipped[f"{r.entity_id}/{r.measure}"] = r.skipped
                else:
                    prophets[(r.entity_id, r.measure)] = forecast.ProphetSeries.from_json(
                        r.model_json
                    )
            if on_progress:
                on_progress(series)
    bundle = forecast.ForecastBundle.assemble(
        source=source,
        config=settings,
        split=split,
        frames=before_test,
        prophets=prophets,
        globals_=globals_,
        ranges=_ranges(source),
    )
    if not bundle.series():
        raise PeriscopeError(f"no {source} series could be trained: {json.dumps(skipped)[:500]}")
    for key in set(frames) - set(bundle.series()):
        skipped.setdefault(f"{key[0]}/{key[1]}", "too few observed training hours")
    errors = bundle.evaluate(frames, split.validation_end, split.test_end)
    return ForecastOutcome(bundle, errors, skipped, time.perf_counter() - started)


def fit_until(
    frames: dict[tuple[str, str], pd.DataFrame],
    cutoff: pd.Timestamp,
    *,
    source: str,
    config: TrainConfig | None = None,
) -> forecast.ForecastBundle:
    """The bundle `periscope train` would register if its data ended at `cutoff` (exclusive),
    fitted in this process with the production defaults (TrainConfig's validation days and
    train window; no test part: every hour before the cutoff is train or validation).

    For walk-forward evaluation: forecast later hours with `bundle.forecast_many` or
    `bundle.evaluate(frames, start, end)`.
    """
    config = config or TrainConfig()
    cutoff = pd.Timestamp(cutoff)
    known = {k: f[f["ds"] < cutoff] for k, f in frames.items()}
    known = {k: f for k, f in known.items() if f["y"].notna().any()}
    if not known:
        raise PeriscopeError(f"no {source} observations before {cutoff}")
    first = min(f["ds"].min() for f in known.values())
    split = replace(config, test_days=0.0).split(first, cutoff)
    settings = config.for_source(get_contract(source)).forecast
    return forecast.fit_bundle(known, split, settings, source=source, ranges=_ranges(source))


def compare_forecast(
    challenger: forecast.ForecastBundle,
    champion: forecast.ForecastBundle,
    frames: dict[tuple[str, str], pd.DataFrame],
) -> tuple[float, float]:
    """(challenger, champion) relative MAE on the challenger's test window, common series only."""
    split = challenger.split
    common = sorted(set(challenger.series()) & set(champion.series()) & set(frames))
    if not common:
        raise PeriscopeError("the challenger and the champion share no series to compare on")
    subset = {key: frames[key] for key in common}
    ours = challenger.evaluate(subset, split.validation_end, split.test_end)
    theirs = champion.evaluate(subset, split.validation_end, split.test_end)
    return forecast.relative_mae(ours), forecast.relative_mae(theirs)
