"""Promotion: whether a newly registered version becomes the champion.

The rule (the same for `retrain` and `models promote`): the challenger and the champion are
scored on the challenger's test window, on the same observations, and the challenger is
promoted only when it is strictly better: a lower relative MAE for forecasts (mean over the
series both know of Prophet's MAE / the seasonal-naive MAE), a higher F1 for anomalies (on
the same injected test set, each at its own threshold) and a lower duration MAE for the taxi
trip regressor (on the same trips, `ml.training.trips`). Ties keep the champion.
"""

from __future__ import annotations

import math

import pandas as pd

from ml import anomaly, forecast
from ml.data import LakeSlice, hourly_observations, series_frames
from ml.registry import ModelInfo, ModelKind, Registry
from ml.training.anomalies import compare_anomaly, injected_test_sets
from ml.training.config import PromotionPolicy, TrainConfig
from ml.training.forecasts import compare_forecast
from periscope.contracts import get_contract
from periscope.settings import Settings

__all__ = ["apply_policy", "promote_if_better", "promote_version"]


def apply_policy(
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
    if kind == "forecast" and registry.stale_forecast_champion(source):
        registry.set_champion(source, kind, info.version)
        return (
            f"version {info.version} promoted: champion v{champion_info.version} was saved in an"
            " older format and cannot serve"
        )
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
        frames = series_frames(lake_hourly, get_contract(source))
        try:
            champion = forecast.ForecastBundle.load(champion_dir)
        except forecast.ForecastError:
            # Saved in a format this code cannot serve: any challenger is better than none.
            ours, theirs = compare_forecast(challenger, challenger, frames)[0], math.inf
        else:
            ours, theirs = compare_forecast(challenger, champion, frames)
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
    test = injected_test_sets(lake_hourly, get_contract(source), split, anomaly_rate, anomaly_seed)
    ours, theirs = compare_anomaly(challenger, anomaly.AnomalyModel.load(champion_dir), test)
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
    if kind == "trip":
        # Imported here: ml.training.trips applies this module's rule (promote_if_better).
        from ml.training.trips import promote_trip_version

        return promote_trip_version(settings, source, info, champion_info)
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
