"""Sensor anomalies on silver feature windows: IsolationForest, injected anomalies, honest metrics.

The model sees one feature window at a time (what silver publishes), standardised per station
with statistics from training, so a station's normal level (Denver's ~830 hPa) is not an
anomaly in itself. Real history has no anomaly labels, so evaluation injects known ones
(`inject_anomalies`) into real observations and recomputes their windows (`ml.windows`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.metrics import precision_recall_curve
from sklearn.pipeline import Pipeline

from periscope.contracts import Aggregation, Measure, SourceContract
from periscope.time import naive_utc
from periscope.windows import FEATURE_STATS, feature_columns

__all__ = [
    "ANOMALY_KINDS",
    "AnomalyModel",
    "StationStats",
    "choose_threshold",
    "detection_metrics",
    "evaluate_by_kind",
    "fit_anomaly_model",
    "inject_anomalies",
    "label_windows",
    "label_windows_by_kind",
]

ANOMALY_KINDS = ("spike", "stuck", "drift", "dropout")

MODEL_FILE = "model.joblib"
MANIFEST_FILE = "manifest.json"

# Episode lengths in readings (hourly sources: hours), inclusive ranges.
_EPISODE_LENGTH = {"spike": (1, 1), "stuck": (4, 8), "drift": (6, 12), "dropout": (3, 6)}


# --- injected anomalies ----------------------------------------------------------------------


def inject_anomalies(
    observations: pd.DataFrame,
    contract: SourceContract,
    *,
    rate: float = 0.02,
    seed: int = 0,
    kinds: Sequence[str] = ANOMALY_KINDS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real observations with anomaly episodes injected, and one label row per altered reading.

    Each episode alters one measure of one station over consecutive readings:
    - spike: one reading moves by 4-8 sigma (sigma = the station's std of that measure here);
    - stuck: 4-8 readings repeat the reading before them (a frozen sensor);
    - drift: an offset grows linearly to 2-5 sigma over 6-12 readings;
    - dropout: 3-6 readings report the contract's valid_min, as a dead sensor reports its floor
      (0 % humidity, 0 m/s wind). Missing readings would be the other choice, but silver keeps
      no trace of a missing measure beyond slightly different window stats, so no model of
      feature windows could see it.
    Values stay within the contract's valid range. Episodes never overlap; they are added
    until about `rate` of the rows carry an altered reading, about equally many per kind.
    Only readings whose value actually changed are labelled (a stuck sensor during a calm hour
    changes nothing), so the labels are exactly the altered readings. Labels: the key, event_time, measure, kind.
    The returned observations are sorted by station and event_time, with a fresh index.
    """
    unknown = sorted(set(kinds) - set(ANOMALY_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {ANOMALY_KINDS}, got {list(kinds)}")
    if not 0 < rate < 0.5:
        raise ValueError(f"rate must be in (0, 0.5), got {rate}")

    key = contract.key_field
    rng = np.random.default_rng(seed)
    altered = observations.sort_values([key, "event_time"], kind="stable").reset_index(drop=True)
    measures = [m for m in contract.measure_names if altered[m].notna().any()]
    stations = altered[key].to_numpy()
    station_rows = {
        station: np.flatnonzero(stations == station) for station in sorted(set(stations))
    }
    sigma = altered.groupby(key)[measures].std()
    values = {m: altered[m].to_numpy(dtype="float64", copy=True) for m in measures}
    taken = np.zeros(len(altered), dtype=bool)

    target = int(round(rate * len(altered)))
    labels: list[tuple[int, str, str]] = []
    per_kind = dict.fromkeys(kinds, 0)
    attempts = 0
    # Episodes never overlap, so each label is a row of its own.
    while len(labels) < target and attempts < 100 * max(target, 1):
        # The kind with the fewest altered readings so far: each kind gets its share of `rate`,
        # so one-reading spikes come many times as often as 6-12 reading drifts.
        kind = min(kinds, key=lambda k: (per_kind[k], kinds.index(k)))
        attempts += 1
        station = list(station_rows)[rng.integers(len(station_rows))]
        measure = measures[rng.integers(len(measures))]
        low, high = _EPISODE_LENGTH[kind]
        length = int(rng.integers(low, high + 1))
        rows = station_rows[station]
        if len(rows) < length + 1:
            continue
        # Start at 1 so a stuck sensor has a reading before it to repeat.
        first = int(rng.integers(1, len(rows) - length + 1))
        episode = rows[first : first + length]
        column = values[measure]
        if taken[episode].any() or np.isnan(column[episode]).all():
            continue
        new = _episode_values(
            kind,
            column[episode],
            previous=column[rows[first - 1]],
            sigma=float(sigma.loc[station, measure]),
            measure=contract.measure(measure),
            rng=rng,
        )
        changed = ~np.isnan(column[episode]) & ~np.isnan(new) & (new != column[episode])
        if not changed.any():
            continue
        column[episode[changed]] = new[changed]
        taken[episode] = True
        labels += [(int(row), measure, kind) for row in episode[changed]]
        per_kind[kind] += int(changed.sum())

    for m in measures:
        altered[m] = values[m]
    label_rows = [row for row, _, _ in labels]
    label_frame = pd.DataFrame(
        {
            key: altered[key].iloc[label_rows].to_numpy(),
            "event_time": altered["event_time"].iloc[label_rows].to_numpy(),
            "measure": [m for _, m, _ in labels],
            "kind": [k for _, _, k in labels],
        }
    )
    return altered, label_frame.sort_values([key, "event_time", "measure"], ignore_index=True)


def _episode_values(
    kind: str,
    current: np.ndarray,
    *,
    previous: float,
    sigma: float,
    measure: Measure,
    rng: np.random.Generator,
) -> np.ndarray:
    """The readings one episode of `kind` replaces `current` with, within the valid range."""
    if not np.isfinite(sigma) or sigma == 0:
        sigma = 1.0
    lo, hi = measure.valid_min, measure.valid_max
    if kind == "spike":
        jump = rng.uniform(4, 8) * sigma * rng.choice([-1.0, 1.0])
        spiked = np.clip(current + jump, lo, hi)
        # Against a bound (100 % humidity) a spike goes the other way rather than hardly at all.
        if np.nansum(np.abs(spiked - current)) < abs(jump) / 2:
            spiked = np.clip(current - jump, lo, hi)
        return spiked
    if kind == "stuck":
        if np.isnan(previous):
            return np.full_like(current, np.nan)
        return np.full_like(current, previous)
    if kind == "drift":
        size = rng.uniform(2, 5) * sigma * rng.choice([-1.0, 1.0])
        ramp = np.arange(1, len(current) + 1) / len(current)
        return np.clip(current + size * ramp, lo, hi)
    if kind == "dropout":
        return np.full_like(current, lo)
    raise ValueError(f"unknown anomaly kind {kind!r}")


def label_windows(
    features: pd.DataFrame, labels: pd.DataFrame, contract: SourceContract
) -> pd.Series:
    """True for each feature window holding at least one altered reading (start <= t < end)."""
    key = contract.key_field
    flags = np.zeros(len(features), dtype=bool)
    starts = naive_utc(features["window_start"]).to_numpy()
    ends = naive_utc(features["window_end"]).to_numpy()
    stations = features[key].to_numpy()
    times = naive_utc(labels["event_time"])
    for station, station_times in times.groupby(labels[key].to_numpy()):
        at = np.sort(station_times.to_numpy())
        rows = np.flatnonzero(stations == station)
        inside = np.searchsorted(at, ends[rows], side="left") - np.searchsorted(
            at, starts[rows], side="left"
        )
        flags[rows] = inside > 0
    return pd.Series(flags, index=features.index, name="is_anomaly")


def label_windows_by_kind(
    features: pd.DataFrame, labels: pd.DataFrame, contract: SourceContract
) -> pd.DataFrame:
    """One boolean column per anomaly kind: does the window hold a reading altered that way."""
    return pd.DataFrame(
        {
            kind: label_windows(features, labels[labels["kind"] == kind], contract)
            for kind in ANOMALY_KINDS
        },
        index=features.index,
    )


# --- the model -------------------------------------------------------------------------------


# A flat window (stddev exactly 0) is a binary feature; one never seen in training would get
# std 0. Flooring its std at 0.1 (as if seen once in ~100 windows) keeps a frozen sensor on a
# measure that always moves far out (z ~ 10), while flat pressure, common in hPa, stays ordinary.
_FLAT_MIN_STD = 0.1


@dataclass
class StationStats:
    """Per-station mean and std of each feature in training, and global ones for new stations."""

    mean: pd.DataFrame  # index: station id; columns: features
    std: pd.DataFrame
    global_mean: pd.Series
    global_std: pd.Series

    @classmethod
    def fit(cls, features: pd.DataFrame, key: str) -> StationStats:
        values = features.drop(columns=[key]).astype("float64")
        floor = pd.Series(
            [_FLAT_MIN_STD if c.endswith("_flat") else 0.0 for c in values.columns],
            index=values.columns,
        )
        global_mean = values.mean()
        # A constant feature has no spread to scale by; 1 keeps its deviations as they are.
        global_std = _usable_std(values.std(), pd.Series(1.0, index=values.columns), floor)
        by_station = values.groupby(features[key].to_numpy())
        mean = by_station.mean().fillna(global_mean)
        std = by_station.std().apply(lambda row: _usable_std(row, global_std, floor), axis=1)
        return cls(mean=mean, std=std, global_mean=global_mean, global_std=global_std)

    def standardise(self, features: pd.DataFrame, key: str) -> pd.DataFrame:
        """Each feature as standard deviations from its station's (or the global) training mean."""
        columns = list(self.global_mean.index)
        stations = features[key].to_numpy()
        mean = self.mean.reindex(stations)[columns].fillna(self.global_mean).to_numpy()
        std = self.std.reindex(stations)[columns].fillna(self.global_std).to_numpy()
        values = features[columns].to_numpy(dtype="float64")
        return pd.DataFrame((values - mean) / std, columns=columns, index=features.index)


def _usable_std(std: pd.Series, fallback: pd.Series, floor: pd.Series) -> pd.Series:
    return std.where(std > 0, fallback).clip(lower=floor)


def _with_flat(features: pd.DataFrame, columns: list[str], key: str) -> pd.DataFrame:
    """The model's input columns plus `<measure>_flat`: 1 where a measure did not move at all."""
    frame = features[[key, *columns]].copy()
    for column in columns:
        if column.endswith("_stddev"):
            stddev = features[column]
            flat = (stddev == 0).astype("float64").where(stddev.notna())
            frame[column.removesuffix("_stddev") + "_flat"] = flat
    return frame


def _design(scaled: pd.DataFrame, measures: list[str]) -> np.ndarray:
    """What the forest sees: per measure, its largest deviation over all its stats; and overall.

    IsolationForest splits on one random feature at a time, so fed every standardised stat
    (31 for weather, 79 for air quality) a window far out on one of them (a spike: stddev at
    20 sigma) looked less odd than a stormy window a little out on many; spike ROC AUC on
    real weather went from ~0.93 with every stat to ~0.98 with these maxima alone.
    """
    magnitude = scaled.abs()
    per_measure = [
        magnitude[[c for c in _measure_columns(m) if c in scaled.columns]].max(axis=1)
        for m in measures
    ]
    return np.column_stack([*per_measure, magnitude.max(axis=1)])


def anomaly_contract(contract: SourceContract) -> SourceContract:
    """The contract as the anomaly model sees it: windows of the statistics of its anomaly
    measures only (what injected-anomaly evaluation can rebuild from hourly readings)."""
    aggregations = tuple(Aggregation(m, "stats") for m in contract.anomaly_measures)
    window = dataclasses.replace(contract.window, aggregations=aggregations)
    return dataclasses.replace(contract, window=window, forecast_targets=(), anomaly_fields=None)


def anomaly_columns(contract: SourceContract) -> list[str]:
    """The feature columns the model may read: reading_count and its measures' statistics.
    Without reading_count where the contract has an event id: there many events share an
    instant, and hourly means (which evaluation injects anomalies into) cannot count them."""
    columns = feature_columns(anomaly_contract(contract))[3:]
    return columns[1:] if contract.event_id_field else columns


def _measure_columns(measure: str) -> list[str]:
    return [f"{measure}_{stat}" for stat in (*FEATURE_STATS, "flat")]


@dataclass
class AnomalyModel:
    """One registered model version: per-station scaling, the forest and its threshold."""

    source: str
    key_field: str
    feature_columns: list[str]  # the silver feature columns it reads
    measures: list[str]
    station_stats: StationStats
    forest: Pipeline  # median imputation of NaN features, then IsolationForest
    threshold: float
    training_rows: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def design(self, features: pd.DataFrame) -> np.ndarray:
        """What the forest sees for each feature window."""
        frame = _with_flat(features, self.feature_columns, self.key_field)
        return _design(self.station_stats.standardise(frame, self.key_field), self.measures)

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Higher is more anomalous."""
        if len(features) == 0:
            return np.zeros(0)
        return -self.forest.score_samples(self.design(features))

    def flag(self, features: pd.DataFrame) -> np.ndarray:
        return self.score(features) >= self.threshold

    def save(self, directory: Path) -> None:
        """The model as `model.joblib` plus a `manifest.json` a human (or the registry) can read."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, directory / MODEL_FILE)
        manifest = {
            "source": self.source,
            "threshold": self.threshold,
            "feature_columns": self.feature_columns,
            "training_rows": self.training_rows,
            "stations": sorted(map(str, self.station_stats.mean.index)),
            **self.metadata,
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AnomalyModel:
        directory = Path(directory)
        model = joblib.load(directory / MODEL_FILE)
        if not isinstance(model, cls):
            raise TypeError(f"{directory / MODEL_FILE} holds a {type(model).__name__}, not a model")
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if (manifest["source"], manifest["threshold"]) != (model.source, model.threshold):
            raise ValueError(f"{directory}: manifest and model disagree; save them together")
        return model


def fit_anomaly_model(
    train_features: pd.DataFrame,
    contract: SourceContract,
    *,
    n_estimators: int = 200,
    seed: int = 0,
) -> AnomalyModel:
    """An IsolationForest on clean training windows; threshold at the 99th training percentile.

    Uses reading_count and every per-measure stat that training ever saw (a column entirely
    NaN in training, e.g. wind_direction before 2016, says nothing).
    """
    if len(train_features) == 0:
        raise ValueError("no training windows")
    key = contract.key_field
    columns = [c for c in anomaly_columns(contract) if train_features[c].notna().any()]
    measures = [m for m in contract.measure_names if set(_measure_columns(m)) & set(columns)]
    stats = StationStats.fit(_with_flat(train_features, columns, key), key)
    forest = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("forest", IsolationForest(n_estimators=n_estimators, random_state=seed)),
        ]
    )
    model = AnomalyModel(
        source=contract.name,
        key_field=key,
        feature_columns=columns,
        measures=measures,
        station_stats=stats,
        forest=forest,
        threshold=float("inf"),
        training_rows=len(train_features),
        metadata={"window_size": contract.window.size, "window_slide": contract.window.slide},
    )
    forest.fit(model.design(train_features))
    model.threshold = float(np.quantile(model.score(train_features), 0.99))
    return model


# --- evaluation ------------------------------------------------------------------------------


def choose_threshold(model: AnomalyModel, features: pd.DataFrame, is_anomaly: Any) -> float:
    """The score threshold with the best F1 on labelled (validation) windows."""
    truth = np.asarray(is_anomaly, dtype=bool)
    if not truth.any():
        raise ValueError("choosing a threshold needs at least one anomalous window")
    precision, recall, thresholds = precision_recall_curve(truth, model.score(features))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def detection_metrics(is_anomaly: Any, flagged: Any) -> dict[str, float]:
    """Precision, recall and F1 of flags against truth, with the counts behind them."""
    truth = np.asarray(is_anomaly, dtype=bool)
    flags = np.asarray(flagged, dtype=bool)
    tp = int((truth & flags).sum())
    fp = int((~truth & flags).sum())
    fn = int((truth & ~flags).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "support": tp + fn,
    }


def evaluate_by_kind(
    model: AnomalyModel, features: pd.DataFrame, labels_per_window_kind: pd.DataFrame
) -> pd.DataFrame:
    """Recall per anomaly kind, plus the flag rate on clean windows (the false-positive rate).

    `labels_per_window_kind` has one boolean column per kind aligned with `features`
    (see `label_windows_by_kind`). A window holding two kinds counts for both.
    """
    flags = model.flag(features)
    kinds = labels_per_window_kind.to_numpy(dtype=bool)
    rows = []
    for i, kind in enumerate(labels_per_window_kind.columns):
        windows = int(kinds[:, i].sum())
        detected = int((flags & kinds[:, i]).sum())
        rows.append((kind, windows, detected, detected / windows if windows else float("nan")))
    clean = ~kinds.any(axis=1)
    false_alarms = int((flags & clean).sum())
    rows.append(("clean", int(clean.sum()), false_alarms, false_alarms / max(int(clean.sum()), 1)))
    return pd.DataFrame(rows, columns=["kind", "windows", "flagged", "flag_rate"]).set_index("kind")
