"""Train, evaluate, register and promote models: the work behind `periscope train` and `retrain`.

Forecasting: one Prophet model per (station, target measure), trained in parallel on Ray
(several series per task, so process start-up is paid once per task, not per series).
Anomalies: one IsolationForest per source on silver feature windows, its threshold chosen on
validation windows with injected anomalies, judged on test windows with other injections.

The split is temporal and shared by every series of a source (see `ml.forecast.temporal_split`):
models see only the train part; the residual decay and the anomaly threshold are chosen on
validation; every reported metric comes from the test part, the latest data.

Promotion rule (the same for `retrain` and `models promote`): the challenger and the champion
are scored on the challenger's test window, on the same observations, and the challenger is
promoted only when it is strictly better: a lower relative MAE for forecasts (mean over the
series both know of Prophet's MAE / the seasonal-naive MAE) and a higher F1 for anomalies (on
the same injected test set, each at its own threshold). Ties keep the champion.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ml import anomaly, forecast
from ml.data import (
    FORECAST_TARGETS,
    LakeSlice,
    feature_windows,
    hourly_observations,
    observations_between,
    series_frames,
)
from ml.ray_session import ray_session
from ml.registry import ModelInfo, ModelKind, Registry
from ml.windows import window_features
from periscope.contracts import SourceContract, get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings

__all__ = [
    "AnomalyOutcome",
    "ForecastOutcome",
    "PromotionPolicy",
    "TrainConfig",
    "TrainReport",
    "anomaly_test_set",
    "compare_anomaly",
    "compare_forecast",
    "promote_if_better",
    "promote_version",
    "run_training",
    "train_anomaly",
    "train_forecasts",
]

log = logging.getLogger(__name__)

PromotionPolicy = Literal["if-none", "if-better", "never"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TrainConfig:
    """How much data, which split, and the model settings of one training run."""

    test_days: float = 7.0
    validation_days: float = 7.0
    max_train_days: float | None = 120.0
    series_per_task: int = 4
    anomaly_rate: float = 0.02
    anomaly_seed: int = 7
    anomaly_estimators: int = 200
    forecast: forecast.ForecastConfig = field(default_factory=forecast.ForecastConfig)

    def params(self) -> dict[str, object]:
        flat = {k: v for k, v in asdict(self).items() if k != "forecast"}
        flat.update({f"forecast_{k}": v for k, v in asdict(self.forecast).items()})
        return flat


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
        return forecast.error_metrics(self.errors, by=["station_id", "measure"])

    @cached_property
    def score(self) -> float:
        return forecast.relative_mae(self.errors)


@dataclass
class AnomalyOutcome:
    model: anomaly.AnomalyModel
    metrics: dict[str, float]
    by_kind: pd.DataFrame
    seconds: float


@dataclass
class TrainReport:
    """What one `train`/`retrain` did for one source."""

    source: str
    split: forecast.Split
    forecast: ForecastOutcome | None = None
    anomaly: AnomalyOutcome | None = None
    registered: dict[str, ModelInfo] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)


def _metrics_dict(frame: pd.DataFrame) -> dict[str, float]:
    row = frame.iloc[0]
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float | np.number)}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- forecasting ---------------------------------------------------------------------------
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
    skipped = {f"{r.station_id}/{r.measure}": r.skipped for r in results if r.skipped}
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


# --- anomalies -----------------------------------------------------------------------------
def anomaly_test_set(
    hourly: pd.DataFrame,
    contract: SourceContract,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    rate: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Feature windows of real observations in [start, end) with injected anomalies, labelled."""
    observations = observations_between(hourly, start, end)
    if observations.empty:
        raise PeriscopeError(f"no {contract.name} observations between {start} and {end}")
    injected, labels = anomaly.inject_anomalies(observations, contract, rate=rate, seed=seed)
    features = window_features(injected, contract)
    # Windows hanging over the edges hold readings from outside the period: leave them out.
    inside = (features["window_start"] >= start) & (features["window_end"] <= end)
    features = features[inside].reset_index(drop=True)
    return features, anomaly.label_windows(features, labels, contract), labels


def train_anomaly(
    train_features: pd.DataFrame,
    hourly: pd.DataFrame,
    split: forecast.Split,
    contract: SourceContract,
    config: TrainConfig,
) -> AnomalyOutcome:
    """Fit on clean train windows (on Ray), threshold on injected validation, metrics on test."""
    import ray

    started = time.perf_counter()
    fit = ray.remote(num_cpus=1)(_fit_anomaly_model)
    model = ray.get(fit.remote(train_features, contract, config.anomaly_estimators))
    val_features, val_truth, _ = anomaly_test_set(
        hourly,
        contract,
        split.train_end,
        split.validation_end,
        rate=config.anomaly_rate,
        seed=config.anomaly_seed,
    )
    model.threshold = anomaly.choose_threshold(model, val_features, val_truth)
    test_features, test_truth, test_labels = anomaly_test_set(
        hourly,
        contract,
        split.validation_end,
        split.test_end,
        rate=config.anomaly_rate,
        seed=config.anomaly_seed + 1,
    )
    metrics = anomaly.detection_metrics(test_truth, model.flag(test_features))
    by_kind = anomaly.evaluate_by_kind(
        model, test_features, anomaly.label_windows_by_kind(test_features, test_labels, contract)
    )
    return AnomalyOutcome(model, metrics, by_kind, time.perf_counter() - started)


def _fit_anomaly_model(
    features: pd.DataFrame, contract: SourceContract, estimators: int
) -> anomaly.AnomalyModel:
    return anomaly.fit_anomaly_model(features, contract, n_estimators=estimators, seed=0)


def compare_anomaly(
    challenger: anomaly.AnomalyModel,
    champion: anomaly.AnomalyModel,
    test_features: pd.DataFrame,
    truth: pd.Series,
) -> tuple[float, float]:
    """(challenger, champion) F1 on the same labelled test windows, each at its own threshold."""
    ours = anomaly.detection_metrics(truth, challenger.flag(test_features))["f1"]
    theirs = anomaly.detection_metrics(truth, champion.flag(test_features))["f1"]
    return float(ours), float(theirs)


# --- the whole run -------------------------------------------------------------------------
def make_split(hourly: pd.DataFrame, config: TrainConfig) -> forecast.Split:
    if hourly.empty:
        raise PeriscopeError("no silver observations to train on")
    return forecast.temporal_split(
        hourly["ds"].min(),
        hourly["ds"].max() + pd.Timedelta(hours=1),
        test_days=config.test_days,
        validation_days=config.validation_days,
        max_train_days=config.max_train_days,
    )


def run_training(
    settings: Settings,
    source: str,
    *,
    lake_slice: LakeSlice | None = None,
    kinds: tuple[str, ...] = ("forecast", "anomaly"),
    config: TrainConfig = TrainConfig(),
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
    lake_slice = lake_slice or LakeSlice()
    lake_hourly = hourly_observations(settings, contract, lake_slice)
    training_hourly = lake_hourly if hourly is None else hourly
    split = make_split(training_hourly, config)
    report = TrainReport(source, split)
    registry = Registry(settings)
    data_range = {
        "data_from": str(split.train_start),
        "data_until": str(split.test_end),
        "stations": ",".join(sorted(training_hourly["station_id"].unique())),
    }
    log.info(
        "%s: train %s .. %s, validation .. %s, test .. %s",
        source,
        split.train_start,
        split.train_end,
        split.validation_end,
        split.test_end,
    )
    frames = series_frames(
        training_hourly[training_hourly["ds"] < split.test_end], FORECAST_TARGETS[source]
    )
    if on_total:
        on_total(len(frames) * ("forecast" in kinds) + ("anomaly" in kinds))
    with ray_session(settings, workers):
        if "forecast" in kinds:
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
                tags=data_range,
                extra_files={
                    "metrics_per_series.csv": outcome.per_series.to_csv(index=False),
                    "skipped.json": json.dumps(outcome.skipped, indent=2),
                },
            )
            report.registered["forecast"] = info
            report.decisions["forecast"] = _decide(
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
        if "anomaly" in kinds:
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
                    observations_between(hourly, split.train_start, split.train_end), contract
                )
            if train_features.empty:
                raise PeriscopeError(
                    f"no {source} feature windows in the train part {split.train_start}..{split.train_end}"
                )
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
                tags=data_range,
                extra_files={"recall_by_kind.csv": a_outcome.by_kind.to_csv()},
            )
            report.registered["anomaly"] = info
            report.decisions["anomaly"] = _decide(
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
        if on_progress and "anomaly" in kinds:
            on_progress(1)
    return report


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


def _decide(
    registry: Registry,
    source: str,
    kind: ModelKind,
    info: ModelInfo,
    challenger: forecast.ForecastBundle | anomaly.AnomalyModel,
    lake_hourly: pd.DataFrame,
    split: forecast.Split,
    config: TrainConfig,
    policy: PromotionPolicy,
) -> str:
    """Apply the promotion policy to a freshly registered version; say what happened."""
    if policy == "never":
        return f"registered version {info.version}; champion unchanged (--no-promote)"
    champion_info = registry.resolve(source, kind)
    if champion_info is None:
        registry.set_champion(source, kind, info.version)
        return f"version {info.version} is the first {kind} model: promoted to champion"
    if policy == "if-none":
        return (
            f"registered version {info.version}; a champion exists, so it stays "
            "(use `periscope retrain` or `periscope models promote` to compare)"
        )
    return _compare_and_decide(
        registry,
        source,
        kind,
        info,
        challenger,
        champion_info,
        lake_hourly,
        split,
        anomaly_rate=config.anomaly_rate,
        anomaly_seed=config.anomaly_seed,
    )


def _compare_and_decide(
    registry: Registry,
    source: str,
    kind: ModelKind,
    info: ModelInfo,
    challenger: forecast.ForecastBundle | anomaly.AnomalyModel,
    champion_info: ModelInfo,
    lake_hourly: pd.DataFrame,
    split: forecast.Split,
    *,
    anomaly_rate: float,
    anomaly_seed: int,
) -> str:
    """Score challenger and champion on the challenger's test window; promote if better."""
    champion_dir = registry.download(champion_info)
    if isinstance(challenger, forecast.ForecastBundle):
        ours, theirs = compare_forecast(
            challenger,
            forecast.ForecastBundle.load(champion_dir),
            series_frames(lake_hourly, FORECAST_TARGETS[source]),
        )
        return promote_if_better(
            registry,
            source,
            kind,
            info,
            champion_info,
            ours,
            theirs,
            "relative MAE",
            lower_is_better=True,
        )
    features, truth, _ = anomaly_test_set(
        lake_hourly,
        get_contract(source),
        split.validation_end,
        split.test_end,
        rate=anomaly_rate,
        seed=anomaly_seed + 1,
    )
    ours, theirs = compare_anomaly(
        challenger, anomaly.AnomalyModel.load(champion_dir), features, truth
    )
    return promote_if_better(
        registry, source, kind, info, champion_info, ours, theirs, "F1", lower_is_better=False
    )


def promote_if_better(
    registry: Registry,
    source: str,
    kind,
    challenger: ModelInfo,
    champion: ModelInfo,
    challenger_score: float,
    champion_score: float,
    metric: str,
    *,
    lower_is_better: bool,
) -> str:
    """Apply the promotion rule and say what happened and why."""
    better = (
        (challenger_score < champion_score)
        if lower_is_better
        else (challenger_score > champion_score)
    )
    verdict = (
        f"{metric}: challenger v{challenger.version} {challenger_score:.4f} vs "
        f"champion v{champion.version} {champion_score:.4f}"
    )
    registry.client.set_model_version_tag(
        challenger.name, str(challenger.version), "compared_with_champion", verdict
    )
    if better:
        registry.set_champion(source, kind, challenger.version)
        return f"promoted: {verdict}"
    return f"kept the champion: {verdict}"


def promote_version(
    settings: Settings, source: str, kind, version: int, *, force: bool = False
) -> str:
    """`periscope models promote`: the promotion rule for a chosen version (or `force` it)."""
    registry = Registry(settings)
    info = registry.resolve(source, kind, str(version))
    assert info is not None  # resolve raises for a missing version number
    champion_info = registry.resolve(source, kind)
    if champion_info is not None and champion_info.version == info.version:
        return f"version {version} already is the champion"
    if force or champion_info is None:
        registry.set_champion(source, kind, info.version)
        return f"promoted version {version}" + (
            " (forced, no comparison)" if force and champion_info else ""
        )
    split = forecast.Split.from_dict(
        {k: info.params[k] for k in ("train_start", "train_end", "validation_end", "test_end")}
    )
    stations = tuple(s for s in info.tags.get("stations", "").split(",") if s) or None
    lake_hourly = hourly_observations(
        settings,
        get_contract(source),
        LakeSlice(stations=stations, until=split.test_end.to_pydatetime()),
    )
    challenger: forecast.ForecastBundle | anomaly.AnomalyModel = registry.load(info)
    return _compare_and_decide(
        registry,
        source,
        kind,
        info,
        challenger,
        champion_info,
        lake_hourly,
        split,
        anomaly_rate=float(info.params["anomaly_rate"]),
        anomaly_seed=int(info.params["anomaly_seed"]),
    )
