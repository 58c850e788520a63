"""Sensor anomalies on silver feature windows: seven detectors, injected anomalies, honest metrics.

Each window is scored by seven detectors, and flagged with the first one that fires:
- `forest`: an IsolationForest on the window's statistics, standardised per station with
  statistics from training, so a station's normal level (Denver's ~830 hPa) is not an anomaly;
- `spike`: a reading far from the reading before, the one after and the one 2 hours before
  it, all the same way (judged only where the one after lies in the window), unless the
  measures that move with it in training spike with it (a pollution peak shows in every gas;
  a failing sensor only in its own reading);
- `residual`: a reading far from its recent level (the median of the 3 hours before it);
- `drift`: the level moved further over the last 2-12 hours than it does at that hour;
- `stuck`: a reading repeats the ones before it, a run of repeats rare for that station's
  measure in training;
- `dropout`: a reading at the contract's valid_min, where training rarely saw one;
- `learned`: a gradient-boosted classifier of the window's hourly signals (those the rules
  judge, signed, per hour and measure), trained on faults injected into the training span:
  it weighs the weak signs of a drift or a frozen sensor together, which no single rule does.
All but the forest read the entity's recent hourly readings (gold's `hourly` frame, the
history `ml.gold.scoring.history_window` names): per-station statistics by hour of day turn
each into a score, and per-detector thresholds chosen on validation make the scores
comparable (`anomaly_score` = the largest score / its threshold; flagged from 1).
Real history has no anomaly labels, so evaluation injects known ones (`inject_anomalies`)
into real observations and recomputes their windows (`ml.windows`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from periscope.contracts import Aggregation, Measure, SourceContract
from periscope.errors import PeriscopeError
from periscope.predictions import ANOMALY_DETECTORS
from periscope.time import naive_utc
from periscope.windows import FEATURE_STATS, feature_columns

__all__ = [
    "ANOMALY_KINDS",
    "DETECTORS",
    "LEARNED_SIGNALS",
    "LOOKBACK_HOURS",
    "NEIGHBOUR_SIGNALS",
    "AnomalyModel",
    "HourlyGrid",
    "HourlyStats",
    "StationStats",
    "choose_thresholds",
    "detection_metrics",
    "episode_recall",
    "evaluate_by_kind",
    "fit_anomaly_model",
    "inject_anomalies",
    "label_windows",
    "label_windows_by_kind",
]

ANOMALY_KINDS = ("spike", "stuck", "drift", "dropout")
# The most specific first (periscope.predictions, which the warehouse reads too).
DETECTORS = ANOMALY_DETECTORS
# Saved models carry this; one without it predates the detectors (IsolationForest only).
MODEL_FORMAT = 2

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
    magnitudes: Sequence[float] = (1.0,),
    measures: Sequence[str] | None = None,
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
    Each episode draws a magnitude from `magnitudes`, which scales the size of spikes and drifts
    and the length of stuck and dropout episodes (0.5: 2-4 sigma spikes, 2-4 stuck readings).
    `measures` limits the measures altered (default: every anomaly measure with data).
    Values stay within the contract's valid range. Episodes never overlap; they are added
    until about `rate` of the rows carry an altered reading, about equally many per kind.
    Only readings whose value actually changed are labelled (a stuck sensor during a calm hour
    changes nothing), so the labels are exactly the altered readings. Labels: the key, event_time,
    measure, kind, magnitude and episode (a number shared by the readings of one episode).
    The returned observations are sorted by station and event_time, with a fresh index.
    """
    unknown = sorted(set(kinds) - set(ANOMALY_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {ANOMALY_KINDS}, got {list(kinds)}")
    if not 0 < rate < 0.5:
        raise ValueError(f"rate must be in (0, 0.5), got {rate}")
    if not magnitudes or min(magnitudes) <= 0:
        raise ValueError(f"magnitudes must be positive, got {list(magnitudes)}")

    key = contract.key_field
    rng = np.random.default_rng(seed)
    altered = observations.sort_values([key, "event_time"], kind="stable").reset_index(drop=True)
    chosen = contract.anomaly_measures if measures is None else measures
    measures = [m for m in chosen if altered[m].notna().any()]
    stations = altered[key].to_numpy()
    station_rows = {
        station: np.flatnonzero(stations == station) for station in sorted(set(stations))
    }
    sigma = altered.groupby(key)[measures].std()
    values = {m: altered[m].to_numpy(dtype="float64", copy=True) for m in measures}
    taken = np.zeros(len(altered), dtype=bool)

    target = int(round(rate * len(altered)))
    labels: list[tuple[int, str, str, float, int]] = []
    episodes = 0
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
        # One magnitude keeps the random stream (and earlier evaluations) as it was.
        magnitude = float(
            magnitudes[int(rng.integers(len(magnitudes)))] if len(magnitudes) > 1 else magnitudes[0]
        )
        low, high = _EPISODE_LENGTH[kind]
        if kind in ("stuck", "dropout"):
            low, high = max(1, round(low * magnitude)), max(1, round(high * magnitude))
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
            magnitude=magnitude,
        )
        changed = ~np.isnan(column[episode]) & ~np.isnan(new) & (new != column[episode])
        if not changed.any():
            continue
        column[episode[changed]] = new[changed]
        taken[episode] = True
        labels += [(int(row), measure, kind, magnitude, episodes) for row in episode[changed]]
        per_kind[kind] += int(changed.sum())
        episodes += 1

    for m in measures:
        altered[m] = values[m]
    label_rows = [label[0] for label in labels]
    label_frame = pd.DataFrame(
        {
            key: altered[key].iloc[label_rows].to_numpy(),
            "event_time": altered["event_time"].iloc[label_rows].to_numpy(),
            "measure": [label[1] for label in labels],
            "kind": [label[2] for label in labels],
            "magnitude": np.array([label[3] for label in labels], dtype="float64"),
            "episode": np.array([label[4] for label in labels], dtype="int64"),
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
    magnitude: float = 1.0,
) -> np.ndarray:
    """The readings one episode of `kind` replaces `current` with, within the valid range."""
    if not np.isfinite(sigma) or sigma == 0:
        sigma = 1.0
    lo, hi = measure.valid_min, measure.valid_max
    if kind == "spike":
        jump = rng.uniform(4, 8) * magnitude * sigma * rng.choice([-1.0, 1.0])
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
        size = rng.uniform(2, 5) * magnitude * sigma * rng.choice([-1.0, 1.0])
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
        # Looked up once per station, not per window (a pandas reindex of every row was a
        # twentieth of gold scoring's time).
        codes, stations = pd.factorize(features[key].to_numpy(), use_na_sentinel=False)
        mean = self.mean.reindex(stations)[columns].fillna(self.global_mean).to_numpy()[codes]
        std = self.std.reindex(stations)[columns].fillna(self.global_std).to_numpy()[codes]
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


# --- the detectors on hourly readings ----------------------------------------------------------

_HOUR_NS = 3_600_000_000_000
_LEVEL_HOURS = 3  # a reading's recent level: the median of the hours just before it
_BASE_HOURS = 12  # and its level before that: the median of the 12 hours before it
# The level before a recent episode, to tell a drift from the way back after one: the
# median of hours t-20 .. t-9.
_BEFORE_HOURS = (9, 20)
_DRIFT_SPANS = (2, 4, 8, 12)  # hours over which a level change is measured
_MAX_RUN = 12  # stuck runs are counted up to this many repeats
# A station's own rate of runs of repeats leans on all stations' rate of the measure as if
# that had been seen for this many hours: a station with no 6-hour run in training is not
# thereby sure never to have one (real data has repeats: 18 % of hourly temperatures).
_PRIOR_HOURS = 200.0
HOURLY_DETECTORS = ("dropout", "stuck", "spike", "residual", "drift")
# Detectors whose score of an hour reads the hour after it: a window takes them only for its
# hours before its last, so its score depends only on its own readings and those before.
# (At the last hour, "far from the 2 readings before" fired on real fronts and pressure steps
# as often as on spikes: test F1 0.603 -> 0.585.)
LOOK_AHEAD_DETECTORS = ("spike",)
# What the learned detector reads of each hour and measure (HourlyStats.signed), in order.
LEARNED_SIGNALS = (
    *(f"residual_{name}" for name in ("level", "base", "before")),
    *(f"drift_{span}h" for span in _DRIFT_SPANS),
    "step_from_previous",
    "step_to_next",
    "step_from_2h_before",
    "run",
    "run_surprise",
    "at_floor",
)
# And, in models fitted with neighbours, the level changes and the step from the reading before
# against the median of the entity's neighbours' (appended in this order).
NEIGHBOUR_SIGNALS = (
    *(f"drift_{span}h_vs_neighbours" for span in _DRIFT_SPANS),
    "step_from_previous_vs_neighbours",
)
# An entity's neighbours: the entities whose 4-hour level changes (as z for their hour of day)
# move most with its own in training. A front moves its neighbours' readings too; a failing
# sensor only its own (earlier span: drift episodes caught 0.47 -> 0.54, stuck 0.28 -> 0.34).
_NEIGHBOURS = 3  # 5 caught no more
_NEIGHBOUR_SPAN = _DRIFT_SPANS.index(4)
# "Lately", for how far apart an entity and its neighbours have been and how much a series has
# moved (`_activity`): the hours t-72 .. t-13, before an episode of up to 12 hours.
_LATELY_HOURS = (13, 72)
_NEIGHBOUR_MIN_SCALE = 0.25  # the scale of the gap from the neighbours: at least a quarter of a z
# Scores are z for the entity and hour of day in training's weather. Where training is shorter
# than a year, a season it never saw can move a series far more (air quality's first winter:
# heating and traffic; earlier span, 6.4 % of clean windows flagged), so every hour looks odd.
# Such a model divides each z by how much more than in training the series has moved lately:
# its mean |step z| over the hours t-72 .. t-13, against training's, never by less than 1.
# (Weather trains on two years; scaling it anyway cost F1 0.662 -> 0.645 on the earlier span.)
_ACTIVITY_BELOW_HOURS = 365 * 24
# A measure's partners: the other measures of the same entity whose step z correlates with its
# own at least this much in training (pooled over entities). Air quality's gases and their
# sensors correlate 0.54-0.97; weather's measures at most 0.30 (temperature and humidity), so
# weather has none.
_PARTNER_MIN_R = 0.5
# Every signal looks at most this far back (gold's history reaches a week before a window).
LOOKBACK_HOURS = max(
    _BEFORE_HOURS[1],
    _LATELY_HOURS[1] + max(_DRIFT_SPANS) + _LEVEL_HOURS - 1,
    _MAX_RUN,
)
_STEP_TO_NEXT = LEARNED_SIGNALS.index("step_to_next")  # reads the hour after
# The 99th percentile, not the 99.9th: a station with three glitches in training would have
# its scale set by them.
_TAIL_QUANTILE = 0.99


@dataclass
class HourlyGrid:
    """Hourly means on a regular grid: entities x hours x measures, NaN where nothing was seen.
    The first hour is a multiple of 24, so column h is hour of day h % 24."""

    entities: np.ndarray  # entity ids (str)
    first_hour: int  # hours since the epoch
    values: np.ndarray

    @classmethod
    def of(cls, hourly: pd.DataFrame | None, key: str, measures: list[str]) -> HourlyGrid:
        """From rows of key, `ds` (or `event_time`) and the measures; averaged per hour."""
        if hourly is None or len(hourly) == 0:
            return cls(np.array([], dtype=object), 0, np.zeros((0, 0, len(measures))))
        time_column = "ds" if "ds" in hourly.columns else "event_time"
        hours = _epoch_hours(hourly[time_column])
        codes, entities = pd.factorize(hourly[key].astype(str).to_numpy())
        first = int(hours.min()) // 24 * 24
        span = (int(hours.max()) - first) // 24 * 24 + 24
        sums = np.zeros((len(entities), span, len(measures)))
        counts = np.zeros_like(sums)
        at = hours - first
        for j, m in enumerate(measures):
            if m not in hourly.columns:
                continue
            column = pd.to_numeric(hourly[m], errors="coerce").to_numpy("float64", na_value=np.nan)
            seen = np.isfinite(column)
            np.add.at(sums[:, :, j], (codes[seen], at[seen]), column[seen])
            np.add.at(counts[:, :, j], (codes[seen], at[seen]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return cls(np.asarray(entities, dtype=object), first, sums / counts)

    @functools.cached_property
    def signals(self) -> dict[str, np.ndarray]:
        """`_hourly_signals` of the values, once: the rules and the learned detector read them."""
        return _hourly_signals(self.values, self.changes)

    @functools.cached_property
    def changes(self) -> dict[str, np.ndarray]:
        """`_level_changes` of the values, once: all a neighbour's hours are read for."""
        return _level_changes(self.values)

    def subset(self, entities: Sequence[str]) -> HourlyGrid:
        """The grid of these entities alone (those it has), on the same hours."""
        rows = np.flatnonzero(pd.Index(self.entities.astype(str)).isin(list(entities)))
        return HourlyGrid(self.entities[rows], self.first_hour, self.values[rows])


def _shift(values: np.ndarray, hours: int) -> np.ndarray:
    """values[:, h - hours] at h along the hour axis, NaN outside the grid (hours < 0: later)."""
    shifted = np.full_like(values, np.nan)
    if hours >= 0:
        shifted[:, hours:] = values[:, : values.shape[1] - hours]
    else:
        shifted[:, :hours] = values[:, -hours:]
    return shifted


def _level_changes(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per entity, hour and measure: the level changes over _DRIFT_SPANS and the step from
    the reading before."""
    # Levels as medians of 3 hours, so that one odd reading (a spike) some hours ago does
    # not read as a level change now.
    level3 = _nanmedian([values, *(_shift(values, k) for k in range(1, _LEVEL_HOURS))])
    return {
        "drift": np.stack([level3 - _shift(level3, k) for k in _DRIFT_SPANS], axis=-1),
        "step": values - _shift(values, 1),
    }


def _hourly_signals(values: np.ndarray, changes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per entity, hour and measure: the quantities the hourly detectors judge (`changes`:
    the values' `_level_changes`)."""
    shifted = [values, *(_shift(values, k) for k in range(1, _BEFORE_HOURS[1] + 1))]
    level = _nanmedian(shifted[1 : _LEVEL_HOURS + 1])
    base = _nanmedian(shifted[1 : _BASE_HOURS + 1])
    before = _nanmedian(shifted[_BEFORE_HOURS[0] :])
    repeat = values == _shift(values, 1)  # False where either is NaN
    positions = np.arange(values.shape[1])[None, :, None]
    last_change = np.maximum.accumulate(np.where(repeat, 0, positions), axis=1)
    run = np.minimum(positions - last_change, _MAX_RUN)
    return {
        # Far from both: a reading returning to normal after an episode is far from the
        # recent (anomalous) level only, and must not read as an anomaly of its own.
        # (The third, against the level before, is the drift detector's gate.)
        "residual": np.stack([values - level, values - base, values - before], axis=-1),
        "drift": changes["drift"],
        "run": run,
        # The steps from the reading before, to the one after and from the one 2 hours before:
        # a spike is far from all three, the same way. An hour or two apart, so the daily ramp
        # (judged by hour of day) hides less than against a 3-hour median (11 am at Charlotte:
        # a scale of 3.8 degC against ~1).
        "steps": np.stack(
            [changes["step"], values - _shift(values, -1), values - _shift(values, 2)],
            axis=-1,
        ),
    }


def _nanmedian(arrays: list[np.ndarray]) -> np.ndarray:
    """The elementwise median of equally shaped arrays, ignoring NaN (NaN where all are).
    np.nanmedian takes a slow path when NaNs are present; a sort puts them last."""
    ordered = np.sort(np.stack(arrays), axis=0)
    count = np.isfinite(ordered).sum(axis=0)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0)[None], axis=0)[0]
    return np.where(count > 0, (low + high) / 2, np.nan)


def _center_scale(values: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust scale (1.4826 MAD, at least half the std: integer readings such as
    hPa often have a MAD of 0) over `axis`, ignoring NaN."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are NaN, as meant
        center = np.nanmedian(values, axis=axis, keepdims=True)
        mad = 1.4826 * np.nanmedian(np.abs(values - center), axis=axis, keepdims=True)
        std = np.nanstd(values, axis=axis, keepdims=True)
    scale = np.fmax(mad, 0.5 * std)
    return np.squeeze(center, axis), np.squeeze(np.where(scale > 0, scale, np.nan), axis)


@dataclass
class HourlyStats:
    """What training says of each entity's hourly readings, by hour of day; the last row of
    every array holds all entities pooled, for entities training never saw."""

    entities: list[str]
    measures: list[str]
    floors: np.ndarray  # (M,) the contract's valid_min
    residual: tuple[np.ndarray, np.ndarray]  # center, scale: (E+1, 24, M, 3)
    drift: tuple[np.ndarray, np.ndarray]  # (E+1, 24, M, spans)
    run_surprise: np.ndarray  # (E+1, 24, M, MAX_RUN + 1): -log10 P(run >= r), all hours alike
    floor_surprise: np.ndarray  # (E+1, M): -log10 P(reading at the floor)
    # The 99th percentile of each measure's residual and drift z in training: real series
    # have tails of their own (pressure's glitches reach z ~ 36), so scores are in its units.
    residual_tail: np.ndarray = field(default_factory=lambda: np.ones((1, 1, 3)))  # (E+1, M, 3)
    drift_tail: np.ndarray = field(default_factory=lambda: np.ones((1, 1, 1)))  # (E+1, M, spans)
    # center, scale of the three steps (E+1, 24, M, 3), and the tail of the spike z (E+1, M).
    # None in models saved before the spike detector (an unpickled old model reads the class
    # default): it then says 0.
    steps: tuple[np.ndarray, np.ndarray] | None = None
    spike_tail: np.ndarray | None = None
    # Per entity and measure, up to _NEIGHBOURS other entities, best first ("" for none). None
    # in models saved before the neighbour signals: `signed` then gives the signals it gave.
    neighbours: np.ndarray | None = None  # (E, M, _NEIGHBOURS) str
    # Per entity (and pooled) and measure, training's mean |step z| (E+1, M): what `_activity`
    # compares the recent steps with. None in models saved before it: no scaling.
    activity: np.ndarray | None = None
    # (M, M): +1 or -1 where the column's measure is a partner of the row's (the sign of their
    # steps' correlation), else 0. None in models saved before it: spikes are not corroborated.
    partners: np.ndarray | None = None

    @classmethod
    def fit(cls, grid: HourlyGrid, floors: np.ndarray, measures: list[str]) -> HourlyStats:
        values = grid.values
        signals = grid.signals
        entities, hours = values.shape[:2]
        by_day = (entities, hours // 24, 24)  # hour of day on its own axis

        def per_entity_and_pooled(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            days = array.reshape(by_day + array.shape[2:])
            one = _center_scale(days, (1,))
            pooled = _center_scale(days.reshape((1, -1) + days.shape[2:]), (1,))
            center = np.concatenate([one[0], pooled[0]])
            # Where an hour of day has no spread of its own, the entity's all-day one stands in.
            return center, np.concatenate([one[1], pooled[1]])

        observed = np.isfinite(values)
        runs = np.arange(_MAX_RUN + 1)
        counts = np.stack([((signals["run"] >= r) & observed).sum(axis=1) for r in runs], -1)
        seen = observed.sum(axis=1)  # (E, M)
        pooled = counts.sum(axis=0) / np.maximum(seen.sum(axis=0), 1)[:, None]  # (M, R+1)
        rate = (counts + _PRIOR_HOURS * pooled) / (seen[..., None] + _PRIOR_HOURS)
        rate = np.concatenate([rate, pooled[None]])  # (E+1, M, R+1): P(run >= r)
        # A run never seen is rare, not impossible; each repeat more than training ever saw
        # halves its chance again.
        rate = np.clip(rate, 0.5 / (seen.sum() + 1.0), 1.0)
        for r in runs[2:]:
            rate[..., r] = np.minimum(rate[..., r], 0.5 * rate[..., r - 1])
        run_surprise = np.repeat(-np.log10(rate)[:, None], 24, axis=1)
        at_floor = (values <= floors) & np.isfinite(values)
        floor_counts = np.concatenate([at_floor.sum(axis=1), at_floor.sum(axis=(0, 1))[None]])
        observed_hours = np.concatenate(
            [np.isfinite(values).sum(axis=1), np.isfinite(values).sum(axis=(0, 1))[None]]
        )
        stats = cls(
            entities=[str(e) for e in grid.entities],
            measures=measures,
            floors=floors,
            residual=_fill_scale(*per_entity_and_pooled(signals["residual"])),
            drift=_fill_scale(*per_entity_and_pooled(signals["drift"])),
            steps=_fill_scale(*per_entity_and_pooled(signals["steps"])),
            run_surprise=run_surprise,
            floor_surprise=-np.log10((floor_counts + 0.5) / (observed_hours + 1.0)),
        )
        stats.neighbours = _choose_neighbours(stats._drift_z(grid)[..., _NEIGHBOUR_SPAN], grid)
        step_z = stats._step_z(grid)
        seen_hours = np.flatnonzero(np.isfinite(values).any(axis=(0, 2)))
        if len(seen_hours) and seen_hours[-1] - seen_hours[0] + 1 < _ACTIVITY_BELOW_HOURS:
            step = np.abs(step_z)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a measure never seen: NaN
                own = np.nanmean(step, axis=1)
                pooled = np.nanmean(step.reshape(-1, step.shape[-1]), axis=0)
            stats.activity = np.concatenate([own, pooled[None]])
        stats.partners = _choose_partners(step_z)
        z = stats._z(grid)
        stats.residual_tail = _tail(z["residual"])
        stats.drift_tail = _tail(z["drift"])
        stats.spike_tail = _tail(z["spike"])
        return stats

    @property
    def short_training(self) -> bool:
        """Training spanned less than a year (`activity` is set on exactly that; models saved
        before it say False)."""
        return self.activity is not None

    def _rows_and_hours(self, grid: HourlyGrid) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Each grid entity's row in these statistics (unknown: the pooled last row), and the
        index that picks an (E, H, ...) array of per-row, per-hour-of-day statistics."""
        index = {e: i for i, e in enumerate(self.entities)}
        rows = np.array([index.get(str(e), len(self.entities)) for e in grid.entities])
        return rows, (rows[:, None], (np.arange(grid.values.shape[1]) % 24)[None, :])

    def _z(self, grid: HourlyGrid) -> dict[str, np.ndarray]:
        """Per entity, hour and measure (and span): each reading's residual and drift as
        robust z-scores for its entity and hour of day, and its run of repeats."""
        rows, at = self._rows_and_hours(grid)
        signals = grid.signals
        activity = self._activity(grid)
        spike = np.zeros(grid.values.shape)
        if self.steps is not None:  # None: a model saved before the spike detector
            z = (signals["steps"] - self.steps[0][at]) / self.steps[1][at] / activity
            # Far from all three the same way (up from one and down to the other is a ramp;
            # the 2 hours before keep the way back after a spike quiet): the nearest.
            sign = np.sign(z)
            same_way = (sign[..., 0] == sign[..., 1]) & (sign[..., 0] == sign[..., 2])
            signed = np.where(same_way, sign[..., 0] * np.abs(z).min(axis=-1), 0.0)
            spike = np.abs(signed) / np.maximum(1.0, self._corroboration(signed))
        return {
            "rows": rows,
            "spike": spike,
            "residual": np.abs(signals["residual"] - self.residual[0][at])
            / self.residual[1][at]
            / activity,
            "drift": np.abs(signals["drift"] - self.drift[0][at]) / self.drift[1][at] / activity,
            "run": signals["run"],
            "stuck": np.take_along_axis(
                self.run_surprise[at], signals["run"].astype(int)[..., None], axis=-1
            )[..., 0],
        }

    def _corroboration(self, signed: np.ndarray) -> np.ndarray:
        """(E, H, M): the largest spike among each measure's partners at the same hour, the way
        the measure's own spike would have them move (0 without partners). A spike is divided
        by it: a real event moves the partners too. (Air quality held out: the spike rule's
        false alarms were two pollution peaks in every gas, 76 windows -> 0; F1 0.758 -> 0.793,
        false alarms 0.81 -> 0.53 %.)"""
        if self.partners is None or not self.partners.any():
            return np.zeros(signed.shape)
        # [e, h, m, p]: partner p's spike, turned to m's sense, times the sign of m's own.
        implied = signed[..., None, :] * self.partners * np.sign(signed)[..., None]
        return np.max(implied, axis=-1, initial=0.0)

    def scores(self, grid: HourlyGrid) -> dict[str, np.ndarray]:
        """Per detector, an (entities x hours) score of each hour on the grid: its largest
        over the measures, 0 where nothing was observed."""
        if grid.values.size == 0:
            return {d: np.zeros(grid.values.shape[:2]) for d in HOURLY_DETECTORS}
        z = self._z(grid)
        rows = z["rows"]
        values = grid.values
        dropout = np.where(values <= self.floors, self.floor_surprise[rows][:, None, :], 0.0)
        residual = z["residual"] / self.residual_tail[rows][:, None]
        drift = z["drift"] / self.drift_tail[rows][:, None]
        per_measure = {
            "dropout": dropout,
            "stuck": z["stuck"],
            "spike": z["spike"]
            / (1.0 if self.spike_tail is None else self.spike_tail[rows][:, None]),
            "residual": np.fmin(residual[..., 0], residual[..., 1]),
            # The largest level change over 2-12 hours, if the reading is still off the level
            # before: the way back after an episode is no drift of its own.
            "drift": np.fmin(np.nanmax(np.nan_to_num(drift, nan=0.0), axis=-1), residual[..., 2]),
        }
        with np.errstate(invalid="ignore"):
            return {
                d: np.nan_to_num(np.nanmax(np.nan_to_num(s, nan=0.0), axis=-1, initial=0.0))
                for d, s in per_measure.items()
            }

    def read_by(self, entities: Sequence[str]) -> set[str]:
        """The entities whose hours the signals of these entities read: theirs and their
        neighbours'."""
        read = set(entities)
        if self.neighbours is not None:
            index = {e: i for i, e in enumerate(self.entities)}
            for entity in entities:
                if entity in index:
                    read.update(str(n) for n in self.neighbours[index[entity]].ravel() if n)
        return read

    def _drift_z(self, grid: HourlyGrid) -> np.ndarray:
        """The level changes as signed z-scores for the entity and hour of day (E, H, M, spans)."""
        _, at = self._rows_and_hours(grid)
        return (grid.changes["drift"] - self.drift[0][at]) / self.drift[1][at]

    def _changes_z(self, grid: HourlyGrid) -> np.ndarray:
        """The level changes and the step from the reading before as signed z-scores for the
        entity and hour of day (E, H, M, spans + 1): what is compared with the neighbours'."""
        return np.concatenate([self._drift_z(grid), self._step_z(grid)[..., None]], axis=-1)

    def _step_z(self, grid: HourlyGrid) -> np.ndarray:
        """The step from the reading before as a signed z for the entity and hour (E, H, M)."""
        assert self.steps is not None  # fitted with neighbours or activity, so with the steps
        _, at = self._rows_and_hours(grid)
        return (grid.changes["step"] - self.steps[0][at][..., 0]) / self.steps[1][at][..., 0]

    def _activity(self, grid: HourlyGrid) -> np.ndarray:
        """(E, H, M, 1): how many times more than in training each series has stepped over
        the hours t-72 .. t-13, at least 1; 1 where unknown or in models without it."""
        ones = np.ones(grid.values.shape + (1,))
        if self.activity is None or self.steps is None or grid.values.size == 0:
            return ones
        rows, _ = self._rows_and_hours(grid)
        recent = _recent_mean_abs(self._step_z(grid), _LATELY_HOURS)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = recent / self.activity[rows][:, None, :]
        return np.where(np.isfinite(ratio), np.maximum(ratio, 1.0), 1.0)[..., None]

    def signed(self, grid: HourlyGrid, context: HourlyGrid | None = None) -> np.ndarray:
        """Per entity, hour and measure, the LEARNED_SIGNALS: the residuals, level changes and
        steps as signed z-scores for the entity and hour of day, the run of repeats, its
        surprise, and whether the reading is at the floor; with neighbours, the
        NEIGHBOUR_SIGNALS after them, read from `context` (a grid on the same hours holding
        the neighbours; default `grid`). (E, H, M, signals)"""
        _, at = self._rows_and_hours(grid)
        signals = grid.signals
        zeros = np.zeros(grid.values.shape + (3,))
        steps = (
            zeros
            if self.steps is None
            else (signals["steps"] - self.steps[0][at]) / self.steps[1][at]
        )
        run = signals["run"]
        drift = self._drift_z(grid)
        activity = self._activity(grid)
        parts = [
            (signals["residual"] - self.residual[0][at]) / self.residual[1][at] / activity,
            drift / activity,
            steps / activity,
            run[..., None].astype("float64"),
            np.take_along_axis(self.run_surprise[at], run.astype(int)[..., None], axis=-1),
            ((grid.values <= self.floors) & np.isfinite(grid.values))[..., None].astype("float64"),
        ]
        if self.neighbours is not None:
            context = grid if context is None else context
            own = np.concatenate([drift, steps[..., :1]], axis=-1)
            around = own if context is grid else self._changes_z(context)
            apart = own - _neighbours_median(around, self._neighbour_rows(grid, context))
            # In units of how far apart they have been lately: winter's fronts part neighbours
            # more than the weather the classifier learnt from (test false alarms 0.50 % ->
            # 0.36 % at the same validation rate, bench/anomaly_eval.py's earlier span).
            scale = _recent_mean_abs(apart, _LATELY_HOURS)
            parts.append(apart / np.fmax(scale, _NEIGHBOUR_MIN_SCALE))
        return np.concatenate(parts, axis=-1)

    def _neighbour_rows(self, grid: HourlyGrid, context: HourlyGrid) -> np.ndarray:
        """(E, M, _NEIGHBOURS): each grid entity's neighbours as rows of `context` (-1: not
        there)."""
        assert self.neighbours is not None
        on_grid = {str(e): i for i, e in enumerate(context.entities)}
        mine = {e: i for i, e in enumerate(self.entities)}
        out = np.full((len(grid.entities), len(self.measures), _NEIGHBOURS), -1)
        for i, entity in enumerate(grid.entities):
            row = mine.get(str(entity))
            if row is None:
                continue
            for j in range(len(self.measures)):
                for k, other in enumerate(self.neighbours[row, j]):
                    out[i, j, k] = on_grid.get(str(other), -1) if other else -1
        return out

    def window_signals(
        self,
        grid: HourlyGrid,
        windows: pd.DataFrame,
        key: str,
        hours: int,
        context: HourlyGrid | None = None,
    ) -> np.ndarray:
        """Per window, the `signed` signals of its first `hours` hours, flattened (NaN where
        unknown). The step to the reading after the window's last hour is never read."""
        signals = self.signed(grid, context)
        entities, span, measures, count = signals.shape
        out = np.full((len(windows), hours, measures, count), np.nan)
        if len(windows) and entities:
            rows = pd.Index(grid.entities).get_indexer(windows[key].astype(str).to_numpy())
            first, last = _window_hours(windows)
            for k in range(hours):
                hour = first + k - grid.first_hour
                inside = (rows >= 0) & (hour >= 0) & (hour < span) & (first + k <= last)
                out[inside, k] = signals[rows[inside], hour[inside]]
                out[inside & (first + k == last), k, :, _STEP_TO_NEXT] = np.nan
        flat = out.reshape(len(windows), -1)
        return np.where(np.isfinite(flat), flat, np.nan)


def _choose_partners(step_z: np.ndarray) -> np.ndarray:
    """(M, M): the sign of each pair of measures' step correlation (pooled over entities and
    hours both have) where its size reaches _PARTNER_MIN_R, else 0; 0 on the diagonal."""
    flat = pd.DataFrame(step_z.reshape(-1, step_z.shape[-1]))
    r = np.nan_to_num(flat.corr(min_periods=7 * 24).to_numpy())
    np.fill_diagonal(r, 0.0)
    return np.where(np.abs(r) >= _PARTNER_MIN_R, np.sign(r), 0.0)


def _choose_neighbours(z: np.ndarray, grid: HourlyGrid) -> np.ndarray:
    """Per entity and measure, the _NEIGHBOURS entities whose z (E, H, M) correlates best (and
    positively) with the entity's own over the hours both have, best first ("" for none)."""
    entities, _, measures = z.shape
    out = np.full((entities, measures, _NEIGHBOURS), "", dtype=object)
    for j in range(measures):
        x = z[..., j]
        seen = np.isfinite(x)
        filled = np.where(seen, x, 0.0)
        both = seen.astype("float64") @ seen.T.astype("float64")
        with np.errstate(all="ignore"):
            # Pearson's r over the hours both entities have (sums restricted to those hours).
            sx = filled @ seen.T
            sxx = (filled**2) @ seen.T
            sxy = filled @ filled.T
            mean_x, mean_y = sx / both, sx.T / both
            cov = sxy / both - mean_x * mean_y
            r = cov / np.sqrt((sxx / both - mean_x**2) * (sxx.T / both - mean_y**2))
        r = np.where((both >= 7 * 24) & np.isfinite(r) & (r > 0), r, -np.inf)
        np.fill_diagonal(r, -np.inf)
        for i in range(entities):
            best = [k for k in np.argsort(-r[i])[:_NEIGHBOURS] if np.isfinite(r[i, k])]
            out[i, j, : len(best)] = [str(grid.entities[k]) for k in best]
    return out


def _recent_mean_abs(values: np.ndarray, hours: tuple[int, int]) -> np.ndarray:
    """Per entity, hour and the rest: the mean |value| over hours t - hours[1] .. t - hours[0]
    along axis 1, ignoring NaN (NaN where fewer than a day of them were seen)."""
    seen = np.isfinite(values)
    zero = np.zeros_like(values[:, :1])
    total = np.concatenate([zero, np.cumsum(np.where(seen, np.abs(values), 0.0), axis=1)], axis=1)
    count = np.concatenate([zero, np.cumsum(seen, axis=1, dtype="float64")], axis=1)
    span = values.shape[1]
    end = np.clip(np.arange(span) - hours[0] + 1, 0, span)  # exclusive, in the cumsum's index
    start = np.clip(np.arange(span) - hours[1], 0, span)
    n = count[:, end] - count[:, start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 24, (total[:, end] - total[:, start]) / n, np.nan)


def _neighbours_median(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values (E, H, M, S): per entity, the median over its neighbours `rows` (E, M, K; -1 for
    none) of theirs, ignoring NaN (NaN where no neighbour has one)."""
    padded = np.concatenate([values, np.full((1,) + values.shape[1:], np.nan)])
    rows = np.where(rows < 0, len(values), rows)
    measure = np.arange(values.shape[2])
    # (E, M, H, S) per neighbour k: padded[rows[e, m, k], :, m, :]
    chosen = [
        np.moveaxis(padded[rows[:, :, k], :, measure[None, :], :], 1, 2)
        for k in range(rows.shape[2])
    ]
    return _median_of_three(*chosen) if len(chosen) == 3 else _nanmedian(chosen)


def _median_of_three(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """_nanmedian of three arrays without its sort (a tenth of the time, in gold's hot path)."""
    low = np.fmin(np.fmin(a, b), c)  # fmin and fmax skip a NaN
    high = np.fmax(np.fmax(a, b), c)
    middle = np.fmax(np.fmin(a, b), np.fmin(np.fmax(a, b), c))  # exact where all three are
    count = np.isfinite(a).astype("int8") + np.isfinite(b) + np.isfinite(c)
    return np.where(count == 3, middle, np.where(count == 2, (low + high) / 2, low))


def _tail(z: np.ndarray) -> np.ndarray:
    """Per entity (and pooled, last) the _TAIL_QUANTILE of z over hours; 1 where unknown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one = np.nanquantile(z, _TAIL_QUANTILE, axis=1)
        pooled = np.nanquantile(z.reshape((-1,) + z.shape[2:]), _TAIL_QUANTILE, axis=0)
    tail = np.concatenate([one, pooled[None]])
    tail = np.where(np.isnan(tail), pooled[None], tail)
    return np.where(np.isfinite(tail) & (tail > 0), tail, 1.0)


def _fill_scale(center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN centers become 0 and NaN scales the entity's typical scale (or the pooled one):
    an hour of day training never saw still gets judged."""
    center = np.nan_to_num(center, nan=0.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are NaN, as meant
        typical = np.nanmedian(scale, axis=1, keepdims=True)
        typical = np.where(np.isnan(typical), typical[-1:], typical)
    scale = np.where(np.isnan(scale), typical, scale)
    return center, np.nan_to_num(scale, nan=1.0)


def _window_hours(windows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each window's first and last hour (hours since the epoch)."""
    end = _epoch_hours(windows["window_end"], nanoseconds=True)
    return _epoch_hours(windows["window_start"]), (end - 1) // _HOUR_NS


def _epoch_hours(times: pd.Series, *, nanoseconds: bool = False) -> np.ndarray:
    """Whole hours since the epoch (or nanoseconds), of naive-UTC or tz-aware times, without
    the copy to microseconds periscope.time.naive_utc makes."""
    if not pd.api.types.is_datetime64_any_dtype(times):
        times = pd.to_datetime(times, utc=True)
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = times.to_numpy("datetime64[ns]").view("int64")
    return ns if nanoseconds else ns // _HOUR_NS


def _per_window(
    hour_scores: np.ndarray,
    grid: HourlyGrid,
    windows: pd.DataFrame,
    key: str,
    look_ahead: np.ndarray | None = None,
) -> np.ndarray:
    """Each window's largest hourly score over the hours it covers (0 without history);
    `hour_scores` is (detectors x entities x hours), the result (windows x detectors).
    The detectors marked in `look_ahead` read the hour after: a window's last hour is left
    out for them."""
    out = np.zeros((len(windows), hour_scores.shape[0]))
    if grid.values.size == 0 or len(windows) == 0:
        return out
    rows = pd.Index(grid.entities).get_indexer(windows[key].astype(str).to_numpy())
    first, last = _window_hours(windows)
    known = rows >= 0
    ahead = np.zeros(hour_scores.shape[0], dtype=bool) if look_ahead is None else look_ahead
    for k in range(int((last - first).max()) + 1):
        hour = np.minimum(first + k, last) - grid.first_hour
        inside = known & (hour >= 0) & (hour < hour_scores.shape[2])
        at = hour_scores[:, rows[inside], hour[inside]].T
        # Hour k is the last of windows of k + 1 hours (and is repeated for shorter ones).
        at[np.ix_((first + k >= last)[inside], ahead)] = 0.0
        out[inside] = np.maximum(out[inside], at)
    return out


@dataclass
class AnomalyModel:
    """One registered model version: the forest with its per-station scaling, the hourly
    statistics of the other detectors, and a threshold per detector.

    `anomaly_score` is the largest detector score over its threshold, so `threshold` is 1.
    """

    source: str
    key_field: str
    feature_columns: list[str]  # the silver feature columns it reads
    measures: list[str]
    station_stats: StationStats
    forest: Pipeline  # median imputation of NaN features, then IsolationForest
    hourly_stats: HourlyStats | None  # None: fitted without hourly history (forest only)
    thresholds: dict[str, float]  # per detector; inf: the detector never fires
    training_rows: int
    threshold: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT
    # The learned detector (`fit_learned`): None until fitted, and in models saved before it.
    learned: HistGradientBoostingClassifier | None = None
    learned_columns: np.ndarray | None = None  # which window_signals columns it reads
    learned_hours: int = 0  # the window hours it reads

    def design(self, features: pd.DataFrame) -> np.ndarray:
        """What the forest sees for each feature window."""
        frame = _with_flat(features, self.feature_columns, self.key_field)
        return _design(self.station_stats.standardise(frame, self.key_field), self.measures)

    def detector_scores(
        self, features: pd.DataFrame, hourly: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Each detector's raw score of each window (columns DETECTORS, rows as `features`).

        `hourly`: the entities' hourly readings (key, `ds` or `event_time`, the measures)
        covering each window and the LOOKBACK_HOURS before it, and their neighbours' (any
        other entities' are left out); without them only the forest scores (the hourly
        detectors say 0).
        """
        scores = pd.DataFrame(0.0, index=features.index, columns=list(DETECTORS))
        if len(features) == 0:
            return scores
        scores["forest"] = -self.forest.score_samples(self.design(features))
        if self.hourly_stats is not None and hourly is not None and len(hourly):
            # The windows' entities' signals in full; their neighbours' level changes only.
            own = features[self.key_field].astype(str).unique()
            read = self.hourly_stats.read_by(own)
            context = HourlyGrid.of(
                hourly[hourly[self.key_field].astype(str).isin(read)],
                self.key_field,
                self.hourly_stats.measures,
            )
            grid = context.subset(own)
            hour_scores = self.hourly_stats.scores(grid)
            per_window = _per_window(
                np.stack(list(hour_scores.values())),
                grid,
                features,
                self.key_field,
                np.isin(list(hour_scores), LOOK_AHEAD_DETECTORS),
            )
            scores[list(hour_scores)] = per_window
            if self.learned is not None:
                signals = self.hourly_stats.window_signals(
                    grid, features, self.key_field, self.learned_hours, context
                )
                scores["learned"] = self.learned.predict_proba(signals[:, self.learned_columns])[
                    :, 1
                ]
        return scores

    def fit_learned(
        self,
        windows: Sequence[pd.DataFrame],
        hourly: Sequence[pd.DataFrame],
        truth: Sequence[np.ndarray],
        *,
        seed: int = 0,
    ) -> None:
        """Fit the learned detector on labelled windows (each with the hourly readings it
        reads, as `detector_scores` takes them): windows with faults injected into the
        training span, so it never sees validation or test. Its threshold stays off until
        `choose_thresholds` sets it."""
        if self.hourly_stats is None:
            raise ValueError("the learned detector reads the hourly signals: fit them first")
        stats = self.hourly_stats
        hours = max(int(np.max(np.subtract(*_window_hours(w)[::-1]))) + 1 for w in windows)
        signals = np.concatenate(
            [
                stats.window_signals(
                    HourlyGrid.of(h, self.key_field, stats.measures), w, self.key_field, hours
                )
                for w, h in zip(windows, hourly, strict=True)
            ]
        )
        labels = np.concatenate([np.asarray(t, dtype=bool) for t in truth])
        if labels.all() or not labels.any():
            raise ValueError("the learned detector needs both clean and anomalous windows")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: dropped here
            columns = np.isfinite(signals).any(axis=0) & (np.nanstd(signals, axis=0) > 0)
        classifier = HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.1, max_leaf_nodes=63, random_state=seed
        )
        classifier.fit(signals[:, columns], labels)
        self.learned, self.learned_columns, self.learned_hours = classifier, columns, hours
        self.thresholds["learned"] = float("inf")

    def candidate_detectors(self) -> list[str]:
        """The detectors validation may switch on: all but the forest where training spans less
        than a year. The hourly detectors then scale by recent activity; the forest judges a
        window's statistics against training's with no such scale, so a season it never saw
        reads as isolated. (Air quality held out, first winter: the forest caught 2 of 309
        validation episodes no other detector caught, and 3 of the test's 8 false-alarm events
        were its own; without it F1 0.726 -> 0.758, false alarms 1.15 -> 0.81 %; earlier span,
        0.684 -> 0.795 and 1.95 -> 0.73 %.)"""
        short = self.hourly_stats is not None and self.hourly_stats.short_training
        return [d for d in DETECTORS if not (short and d == "forest")]

    def set_thresholds(
        self, scores: pd.DataFrame, is_anomaly: Any, *, max_false_alarm: float
    ) -> None:
        """`choose_thresholds` over the candidate detectors' scores; the others stay off."""
        chosen = choose_thresholds(
            scores[self.candidate_detectors()], is_anomaly, max_false_alarm=max_false_alarm
        )
        self.thresholds = {d: chosen.get(d, float("inf")) for d in DETECTORS}

    def combine(self, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The anomaly score (largest score / threshold) and, where it reaches 1, the first
        detector in DETECTORS that fired (else None)."""
        ratios = np.column_stack(
            [scores[d].to_numpy() / self.thresholds.get(d, np.inf) for d in DETECTORS]
        )
        fired = ratios >= self.threshold
        # dropout and stuck name what they saw; otherwise the detector furthest past its
        # threshold (a steep drift also trips the residual one, by less).
        specific = fired[:, :2].any(axis=1)
        names = np.asarray(DETECTORS, dtype=object)[
            np.where(specific, fired.argmax(axis=1), ratios.argmax(axis=1))
        ]
        kind = np.asarray(np.where(fired.any(axis=1), names, None), dtype=object)
        return ratios.max(axis=1), kind

    def detect(
        self, features: pd.DataFrame, hourly: pd.DataFrame | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each window's anomaly score and the detector that flagged it (None: not flagged)."""
        return self.combine(self.detector_scores(features, hourly))

    def score(self, features: pd.DataFrame, hourly: pd.DataFrame | None = None) -> np.ndarray:
        """Higher is more anomalous; flagged from `threshold` (1) on."""
        return self.detect(features, hourly)[0]

    def flag(self, features: pd.DataFrame, hourly: pd.DataFrame | None = None) -> np.ndarray:
        return self.score(features, hourly) >= self.threshold

    def save(self, directory: Path) -> None:
        """The model as `model.joblib` plus a `manifest.json` a human (or the registry) can read."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, directory / MODEL_FILE)
        manifest = {
            "source": self.source,
            "format_version": self.format_version,
            "threshold": self.threshold,
            "thresholds": {d: _json_number(t) for d, t in self.thresholds.items()},
            "feature_columns": self.feature_columns,
            "training_rows": self.training_rows,
            "learned_detector": self.learned is not None,
            "stations": sorted(map(str, self.station_stats.mean.index)),
            **self.metadata,
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AnomalyModel:
        """A saved model. One saved before the detectors (format 1, no format_version in its
        manifest) loads as the forest alone with its own threshold: it flags what it always
        flagged, names "forest", and a retrain adds the hourly detectors. A newer format
        than this code knows raises."""
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        version = manifest.get("format_version", 1)
        if version not in (1, MODEL_FORMAT):
            raise PeriscopeError(
                f"{directory} holds a {manifest.get('source')} anomaly model of format {version}; "
                f"this Periscope reads formats 1 and {MODEL_FORMAT}: upgrade it, or retrain with "
                f"`periscope train --source {manifest.get('source')} --kind anomaly`"
            )
        model = joblib.load(directory / MODEL_FILE)
        if not isinstance(model, cls):
            raise TypeError(f"{directory / MODEL_FILE} holds a {type(model).__name__}, not a model")
        if (manifest["source"], manifest["threshold"]) != (model.source, model.threshold):
            raise ValueError(f"{directory}: manifest and model disagree; save them together")
        if version == 1:  # its threshold was the forest's; scores are now over thresholds
            model.thresholds = {
                d: model.threshold if d == "forest" else float("inf") for d in DETECTORS
            }
            model.hourly_stats = None
            model.threshold = 1.0
            model.format_version = MODEL_FORMAT
            model.metadata = {**model.metadata, "loaded_from_format": 1}
        return model


def _json_number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


# Before validation chooses them: the forest fires on 1 in 100 training windows (as it always
# did), the hourly detectors on none (just above their largest score), and never below these (a floor reading seen once in 100
# hours is no news).
_TRAIN_QUANTILE = {"forest": 0.99}
_MIN_THRESHOLD = {
    "dropout": 2.0,
    "stuck": 2.0,
    "spike": 1.0,
    "residual": 1.0,
    "drift": 1.0,
    "learned": float("inf"),  # off until it is fitted and validation chooses its threshold
    "forest": 0.0,
}


def fit_anomaly_model(
    train_features: pd.DataFrame,
    contract: SourceContract,
    *,
    hourly: pd.DataFrame | None = None,
    n_estimators: int = 200,
    seed: int = 0,
) -> AnomalyModel:
    """The forest on clean training windows, and the hourly detectors' statistics of the
    training hours (`hourly`: key, `ds` or `event_time`, the measures; None: forest only).

    Each threshold starts at the 99.9th percentile of its detector's training scores;
    `choose_thresholds` on injected validation windows is what training runs do next.
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
    hourly_stats = None
    if hourly is not None and len(hourly):
        watched = list(contract.anomaly_measures)
        floors = np.array([contract.measure(m).valid_min for m in watched])
        hourly_stats = HourlyStats.fit(HourlyGrid.of(hourly, key, watched), floors, watched)
    model = AnomalyModel(
        source=contract.name,
        key_field=key,
        feature_columns=columns,
        measures=measures,
        station_stats=stats,
        forest=forest,
        hourly_stats=hourly_stats,
        thresholds={},
        training_rows=len(train_features),
        metadata={"window_size": contract.window.size, "window_slide": contract.window.slide},
    )
    forest.fit(model.design(train_features))
    scores = model.detector_scores(train_features, hourly)
    model.thresholds = {
        d: max(_above(scores[d].to_numpy(), _TRAIN_QUANTILE.get(d, 1.0)), _MIN_THRESHOLD[d])
        if d == "forest" or hourly_stats is not None
        else float("inf")
        for d in DETECTORS
    }
    return model


# --- evaluation ------------------------------------------------------------------------------


def choose_thresholds(
    scores: pd.DataFrame,
    is_anomaly: Any,
    *,
    max_false_alarm: float = 0.005,
    candidates: int = 200,
    max_steps: int = 30,
) -> dict[str, float]:
    """Per-detector thresholds with the best F1 of the combined flag on labelled (validation)
    windows, flagging at most `max_false_alarm` of the clean ones.

    Starts from the best of a budget shared equally (each detector at the same false-alarm
    rate on clean windows), then best-improvement ascent: each step moves the one threshold
    (to a quantile of its detector's scores, or off) that raises F1 most given the others'.
    Ascent from every detector off let the first detector spend the false-alarm budget on a
    sliver of recall that the others would have bought many times over.
    """
    truth = np.asarray(is_anomaly, dtype=bool)
    if not truth.any():
        raise ValueError("choosing thresholds needs at least one anomalous window")
    clean_total = max(int((~truth).sum()), 1)
    detectors = list(scores.columns)
    values = {d: scores[d].to_numpy(dtype="float64") for d in detectors}
    options = {d: _threshold_options(values[d], candidates) for d in detectors}
    thresholds = dict.fromkeys(detectors, float("inf"))
    best_f1 = 0.0
    clean = ~truth
    for rate in np.geomspace(max_false_alarm / 100, max_false_alarm, 20):
        shared = {d: _above(values[d][clean], 1 - rate) for d in detectors}
        flags = np.column_stack([values[d] >= shared[d] for d in detectors]).any(axis=1)
        shared_f1 = detection_metrics(truth, flags)["f1"]
        if (flags & clean).sum() / clean_total <= max_false_alarm and shared_f1 > best_f1:
            thresholds, best_f1 = shared, shared_f1
    for _ in range(max_steps):
        step: tuple[float, str, float] | None = None
        for d in detectors:
            f1 = _f1_by_threshold(
                values, thresholds, d, options[d], truth, clean_total, max_false_alarm
            )
            i = int(np.argmax(f1))
            if f1[i] > best_f1 + 1e-9 and (step is None or f1[i] > step[0]):
                step = (float(f1[i]), d, float(options[d][i]))
        if step is None:
            break
        best_f1, d, thresholds[d] = step
    # Midway between the scores each threshold separates: the same flags, some margin for
    # unseen windows, and a flagged window's anomaly_score a readable multiple (not 1e300
    # where every clean score is 0 and the threshold was the smallest float above it).
    for d, threshold in thresholds.items():
        passed, stopped = values[d] >= threshold, values[d] < threshold
        if passed.any():
            below = values[d][stopped].max() if stopped.any() else 0.0
            thresholds[d] = float((below + values[d][passed].min()) / 2)
    return thresholds


def _above(clean_scores: np.ndarray, quantile: float) -> float:
    """A threshold just above the given quantile of clean scores (and above 0)."""
    if len(clean_scores) == 0:
        return float("inf")
    return float(np.nextafter(max(float(np.quantile(clean_scores, quantile)), 0.0), np.inf))


def _threshold_options(values: np.ndarray, candidates: int) -> np.ndarray:
    """Quantiles of a detector's scores above 0 (a threshold divides scores), and off."""
    grid = (
        np.unique(np.quantile(values, np.linspace(0.5, 1.0, candidates))) if len(values) else values
    )
    return np.r_[grid[grid > 0], np.inf]


def _f1_by_threshold(
    values: dict[str, np.ndarray],
    thresholds: dict[str, float],
    detector: str,
    options: np.ndarray,
    truth: np.ndarray,
    clean_total: int,
    max_false_alarm: float,
) -> np.ndarray:
    """F1 of the combined flag for each option of one detector's threshold, the others kept;
    -1 where the false alarms exceed the budget."""
    others = np.zeros(len(truth), dtype=bool)
    for o, t in thresholds.items():
        if o != detector:
            others |= values[o] >= t
    open_ = ~others  # windows only this detector can still flag
    s = values[detector][open_]
    positives = np.sort(s[truth[open_]])
    negatives = np.sort(s[~truth[open_]])
    tp = int((others & truth).sum()) + len(positives) - np.searchsorted(positives, options)
    fp = int((others & ~truth).sum()) + len(negatives) - np.searchsorted(negatives, options)
    fn = int(truth.sum()) - tp
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return np.where(fp / clean_total <= max_false_alarm, f1, -1.0)


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


def evaluate_by_kind(flagged: Any, labels_per_window_kind: pd.DataFrame) -> pd.DataFrame:
    """Recall per anomaly kind, plus the flag rate on clean windows (the false-positive rate).

    `labels_per_window_kind` has one boolean column per kind aligned with the flags
    (see `label_windows_by_kind`). A window holding two kinds counts for both.
    """
    flags = np.asarray(flagged, dtype=bool)
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


def episode_recall(
    features: pd.DataFrame, flagged: Any, labels: pd.DataFrame, contract: SourceContract
) -> pd.DataFrame:
    """Per injected episode (`inject_anomalies` labels): its kind, magnitude, and whether any
    window holding one of its readings was flagged (what an operator sees as "caught")."""
    key = contract.key_field
    flags = np.asarray(flagged, dtype=bool)
    episodes = labels.groupby("episode").agg(
        entity=(key, "first"),
        first=("event_time", "min"),
        last=("event_time", "max"),
        kind=("kind", "first"),
        magnitude=("magnitude", "first"),
    )
    caught = np.zeros(len(episodes), dtype=bool)
    starts = naive_utc(features["window_start"]).to_numpy()
    ends = naive_utc(features["window_end"]).to_numpy()
    entities = features[key].astype(str).to_numpy()
    first = naive_utc(episodes["first"]).to_numpy()
    last = naive_utc(episodes["last"]).to_numpy()
    for entity in np.unique(episodes["entity"].astype(str)):
        mine = np.flatnonzero(episodes["entity"].astype(str).to_numpy() == entity)
        hit = flags & (entities == entity)
        hit_starts, hit_ends = starts[hit], ends[hit]
        for i in mine:  # few episodes per entity; each a vectorised test over its flags
            caught[i] = bool(((hit_starts <= last[i]) & (hit_ends > first[i])).any())
    return episodes.assign(caught=caught).reset_index()
