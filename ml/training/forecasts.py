"""Forecast training: one Prophet model per (station, target measure), in parallel on Ray.

Several series go in one Ray task, so process start-up is paid once per task, not per series.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ml import forecast
from ml.training.config import Progress, TrainConfig
from periscope.errors import PeriscopeError

__all__ = ["ForecastOutcome", "compare_forecast", "train_forecasts"]


@dataclass
class ForecastOutcome:
    bundle: forecast.ForecastBundle
    errors: pd.DataFrame
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


def train_forecasts(
    frames: dict[tuple[str, str], pd.DataFrame],
    split: forecast.Split,
    config: TrainConfig,
    *,
    source: str,
    on_progress: Progress | None = None,
) -> ForecastOutcome:
    """Fit and test every series on Ray; needs a running Ray (see `ray_session`)."""
    import ray

    started = time.perf_counter()
    train_many = ray.remote(num_cpus=1)(forecast.train_many)
    tasks = [(station, measure, frame) for (station, measure), frame in sorted(frames.items())]
    pending = {
        train_many.remote(chunk, split, config.forecast): len(chunk)
        for chunk in _chunks(tasks, config.series_per_task)
    }
    results: list[forecast.SeriesResult] = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results.extend(ray.get(ref))
            if on_progress:
                on_progress(pending[ref])
            del pending[ref]
    skipped = {f"{r.entity_id}/{r.measure}": r.skipped for r in results if r.skipped}
    trained = [r for r in results if r.model_json is not None and r.errors is not None]
    if not trained:
        raise PeriscopeError(f"no {source} series could be trained: {json.dumps(skipped)[:500]}")
    bundle = forecast.ForecastBundle.from_results(results, config.forecast, split, source)
    errors = pd.concat([r.errors for r in trained if r.errors is not None], ignore_index=True)
    return ForecastOutcome(bundle, errors, skipped, time.perf_counter() - started)


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
