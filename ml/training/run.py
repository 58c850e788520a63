"""One training run, the work behind `periscope train` and `retrain`: read the lake, split it,
train the requested models on Ray, register them, and apply the promotion policy.

The split is temporal and shared by every series of a source (see `ml.forecast.temporal_split`):
models see only the train part; the served forecast method, its bands and the anomaly
threshold are chosen on validation; every reported metric comes from the test part, the latest
data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ml import anomaly, forecast
from ml.data import (
    LakeSlice,
    feature_windows,
    hourly_observations,
    observations_between,
    series_frames,
)
from ml.ray_session import ray_session
from ml.registry import ModelInfo, ModelKind, Registry
from ml.training.anomalies import AnomalyOutcome, train_anomaly
from ml.training.config import Progress, PromotionPolicy, TrainConfig
from ml.training.forecasts import ForecastOutcome, train_forecasts
from ml.training.promotion import apply_policy
from ml.training.trips import TripOutcome, train_trip_kind
from ml.windows import window_features
from periscope.contracts import SourceContract, get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings

__all__ = ["TrainReport", "make_split", "run_training"]

log = logging.getLogger(__name__)

_DEFAULT_CONFIG = TrainConfig()  # frozen: one shared default is safe


@dataclass
class TrainReport:
    """What one `train`/`retrain` did for one source."""

    source: str
    split: forecast.Split
    forecast: ForecastOutcome | None = None
    anomaly: AnomalyOutcome | None = None
    trip: TripOutcome | None = None
    registered: dict[str, ModelInfo] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)


def make_split(hourly: pd.DataFrame, config: TrainConfig) -> forecast.Split:
    if hourly.empty:
        raise PeriscopeError("no silver observations to train on")
    # test_end is the hour after the last observation.
    return config.split(hourly["ds"].min(), hourly["ds"].max() + pd.Timedelta(hours=1))


def run_training(
    settings: Settings,
    source: str,
    *,
    lake_slice: LakeSlice | None = None,
    kinds: tuple[str, ...] = ("forecast", "anomaly"),
    config: TrainConfig = _DEFAULT_CONFIG,
    policy: PromotionPolicy = "if-none",
    workers: int | None = None,
    on_progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    hourly: pd.DataFrame | None = None,
) -> TrainReport:
    """Read the lake, train the requested models, register them and apply the promotion policy.

    `hourly` replaces the lake's observations (a test feeds deliberately bad data this way);
    comparisons with the champion always use the lake's real observations.
    """
    contract = get_contract(source)
    config = config.for_source(contract)  # what is fitted is what the registry records
    lake_slice = lake_slice or LakeSlice()
    lake_hourly = hourly_observations(settings, contract, lake_slice)
    training_hourly = lake_hourly if hourly is None else hourly
    split = make_split(training_hourly, config)
    report = TrainReport(source, split)
    registry = Registry(settings)
    data_range = {
        "data_from": str(split.train_start),
        "data_until": str(split.test_end),
        "stations": ",".join(sorted(training_hourly[contract.key_field].unique())),
    }
    log.info(
        "%s: train %s .. %s, validation .. %s, test .. %s",
        source,
        split.train_start,
        split.train_end,
        split.validation_end,
        split.test_end,
    )
    frames = series_frames(training_hourly[training_hourly["ds"] < split.test_end], contract)
    if on_total:
        on_total(len(frames) * ("forecast" in kinds) + ("anomaly" in kinds) + ("trip" in kinds))
    with ray_session(settings, workers):
        if "forecast" in kinds:
            _train_forecast_kind(
                registry,
                report,
                frames,
                lake_hourly,
                config,
                policy,
                tags=data_range,
                on_progress=on_progress,
            )
        if "anomaly" in kinds:
            train_features = _anomaly_train_features(settings, contract, lake_slice, split, hourly)
            _train_anomaly_kind(
                registry,
                report,
                train_features,
                training_hourly,
                lake_hourly,
                contract,
                config,
                policy,
                tags=data_range,
            )
        if on_progress and "anomaly" in kinds:
            on_progress(1)
        if "trip" in kinds:  # the taxi trip regressor: per trip, from silver's observations
            report.trip = train_trip_kind(settings, source=source, policy=policy, workers=workers)
            report.registered["trip"] = report.trip.info
            report.decisions["trip"] = report.trip.decision
            if on_progress:
                on_progress(1)
    return report


def _train_forecast_kind(
    registry: Registry,
    report: TrainReport,
    frames: dict[tuple[str, str], pd.DataFrame],
    lake_hourly: pd.DataFrame,
    config: TrainConfig,
    policy: PromotionPolicy,
    *,
    tags: dict[str, str],
    on_progress: Progress | None,
) -> None:
    """Train the forecast bundle, register it and apply the promotion policy (into `report`)."""
    source, split = report.source, report.split
    outcome = train_forecasts(frames, split, config, source=source, on_progress=on_progress)
    report.forecast = outcome
    info = _register(
        registry,
        source,
        "forecast",
        outcome.bundle.save,
        params={
            **config.params(),
            **split.to_dict(),
            "series": len(outcome.bundle.series()),
        },
        metrics={
            **outcome.overall,
            "relative_mae": outcome.score,
            "seconds": outcome.seconds,
            "series_skipped": len(outcome.skipped),
        },
        tags=tags,
        extra_files={
            "metrics_per_series.csv": outcome.per_series.to_csv(index=False),
            "skipped.json": json.dumps(outcome.skipped, indent=2),
        },
    )
    report.registered["forecast"] = info
    report.decisions["forecast"] = apply_policy(
        registry,
        source,
        "forecast",
        info,
        outcome.bundle,
        lake_hourly,
        split,
        config,
        policy,
    )


def _anomaly_train_features(
    settings: Settings,
    contract: SourceContract,
    lake_slice: LakeSlice,
    split: forecast.Split,
    hourly: pd.DataFrame | None,
) -> pd.DataFrame:
    """The clean windows the anomaly model fits on: silver's own features of the train part,
    or windows of the given `hourly` observations; raises when there are none."""
    if hourly is None:
        train_features = feature_windows(
            settings,
            contract,
            replace(
                lake_slice,
                since=split.train_start.to_pydatetime(),
                until=split.train_end.to_pydatetime(),
            ),
        )
        train_features = train_features[train_features["window_end"] <= split.train_end]
    else:
        train_features = window_features(
            observations_between(hourly, split.train_start, split.train_end),
            anomaly.anomaly_contract(contract),
        )
    if train_features.empty:
        raise PeriscopeError(
            f"no {contract.name} feature windows in the train part {split.train_start}..{split.train_end}"
        )
    return train_features


def _train_anomaly_kind(
    registry: Registry,
    report: TrainReport,
    train_features: pd.DataFrame,
    training_hourly: pd.DataFrame,
    lake_hourly: pd.DataFrame,
    contract: SourceContract,
    config: TrainConfig,
    policy: PromotionPolicy,
    *,
    tags: dict[str, str],
) -> None:
    """Train the anomaly model, register it and apply the promotion policy (into `report`)."""
    source, split = report.source, report.split
    a_outcome = train_anomaly(train_features, training_hourly, split, contract, config)
    report.anomaly = a_outcome
    info = _register(
        registry,
        source,
        "anomaly",
        a_outcome.model.save,
        params={
            **config.params(),
            **split.to_dict(),
            "train_windows": len(train_features),
        },
        metrics={
            **a_outcome.metrics,
            "threshold": a_outcome.model.threshold,
            "seconds": a_outcome.seconds,
        },
        tags=tags,
        extra_files={"recall_by_kind.csv": a_outcome.by_kind.to_csv()},
    )
    report.registered["anomaly"] = info
    report.decisions["anomaly"] = apply_policy(
        registry,
        source,
        "anomaly",
        info,
        a_outcome.model,
        lake_hourly,
        split,
        config,
        policy,
    )


def _register(
    registry: Registry,
    source: str,
    kind: ModelKind,
    save: Callable[[Path], None],
    **log_args,
) -> ModelInfo:
    """Save a model into a temporary directory and log it as a new registered version."""
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        return registry.log_model(source=source, kind=kind, directory=Path(tmp), **log_args)
