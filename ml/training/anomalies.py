"""Anomaly training: one IsolationForest per source on silver feature windows.

Its threshold is chosen on validation windows with injected anomalies, and it is judged on
test windows with other injections.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from ml import anomaly, forecast
from ml.data import observations_between
from ml.training.config import TrainConfig
from ml.windows import window_features
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError

__all__ = ["AnomalyOutcome", "anomaly_test_set", "compare_anomaly", "train_anomaly"]


@dataclass
class AnomalyOutcome:
    model: anomaly.AnomalyModel
    metrics: dict[str, float]
    by_kind: pd.DataFrame
    seconds: float


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
    features = window_features(injected, anomaly.anomaly_contract(contract))
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
