"""The trip regressor (the speed layer's model): a taxi trip's duration (min) and fare (USD)
from what is known at pickup.

Features: pickup and dropoff zones and their boroughs (from the TLC zone lookup), trip
distance, hour of day and weekday (New York time), passenger count and rate code. Trips are
split by time: the last `test_days` of the data are the test week, the `validation_days`
before it choose the tree ensemble, and every model is fitted on the days before the test
week only. Two baselines frame the figures: the median per (pickup, dropoff) zone pair
(falling back to the pickup zone's, then the global median) and a distance-only linear
regression.

Pure pandas/numpy/scikit-learn: training on Ray and the registry live in `ml.training.trips`.
Only trips silver would accept are learnt from (`silver_accepts` runs the contract's checks
with DuckDB on their SQL, as silver's validation states them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import joblib
import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from periscope.contracts import TAXI, Count, Measure, SourceContract
from periscope.errors import PeriscopeError

__all__ = [
    "CATEGORICAL",
    "FEATURES",
    "NUMERIC",
    "TARGETS",
    "TripModel",
    "TripSplit",
    "TripTraining",
    "ZonePairMedian",
    "busiest_zone_series",
    "distance_linear",
    "evaluate_model",
    "fit_trip_models",
    "regression_metrics",
    "silver_accepts",
    "split_by_week",
    "tree_candidates",
    "trip_features",
]

TARGETS = ("duration_min", "fare_amount")
CATEGORICAL = ("pu_location_id", "do_location_id", "pu_borough", "do_borough", "rate_code")
NUMERIC = ("trip_distance", "hour", "weekday", "passenger_count")
FEATURES = CATEGORICAL + NUMERIC
# Hours and weekdays are New York's: demand and traffic follow the city's clock, not UTC.
LOCAL_TZ = "America/New_York"
MODEL_FORMAT = 1
MODEL_FILE = "model.joblib"
MANIFEST_FILE = "manifest.json"
_MISSING = "missing"


# --- which trips to learn from -----------------------------------------------------------------
def _check_sql(contract: SourceContract) -> list[str]:
    """The SQL conditions under which silver quarantines a well-formed record: a required
    measure outside its valid range (or NaN), a negative count, a missing required text or
    category, and each cross-field rule (a null rule passes, as in silver)."""
    conditions = []
    for f in contract.value_fields:
        if isinstance(f, Measure) and f.required:
            conditions.append(
                f'(isnan("{f.name}") or "{f.name}" not between {f.valid_min} and {f.valid_max})'
            )
        elif isinstance(f, Count):
            top = f' or "{f.name}" > {f.valid_max}' if f.valid_max is not None else ""
            conditions.append(f'("{f.name}" < 0{top})')
        elif f.required and not isinstance(f, Measure):
            conditions.append(f'("{f.name}" is null)')
    conditions += [f"({rule.condition})" for rule in contract.rules]
    return [f"coalesce({c}, false)" for c in conditions]


def silver_accepts(trips: pd.DataFrame, contract: SourceContract = TAXI) -> np.ndarray:
    """Whether silver would keep each trip (a boolean array in row order): none of the
    contract's value checks or cross-field rules fails.

    Silver itself evaluates the same rule SQL with Spark; DuckDB speaks the same dialect.
    """
    if trips.empty:
        return np.zeros(0, dtype=bool)
    rejected = " or ".join(_check_sql(contract)) or "false"
    con = duckdb.connect()
    try:
        con.register("trips", trips)
        flags = con.sql(f"select not ({rejected}) as ok from trips").fetchnumpy()["ok"]
    finally:
        con.close()
    return np.asarray(flags, dtype=bool)


# --- features -------------------------------------------------------------------------------
def _pickup_times(trips: pd.DataFrame) -> pd.Series:
    """Pickup times in New York: the reader's `pickup_time` (UTC) or silver's `event_time`
    (naive UTC)."""
    column = "pickup_time" if "pickup_time" in trips.columns else "event_time"
    times = pd.to_datetime(trips[column])
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return times.dt.tz_convert(LOCAL_TZ)


def trip_features(trips: pd.DataFrame, boroughs: Mapping[str, str]) -> pd.DataFrame:
    """The model's input: FEATURES, one row per trip; zones as strings, missing categories
    as "missing", missing numbers NaN. `boroughs` maps a zone id to its borough."""
    local = _pickup_times(trips)
    pu = trips["pu_location_id"].astype(str)
    do = trips["do_location_id"].astype(str)
    borough = pd.Series(boroughs, dtype=object)
    return pd.DataFrame(
        {
            "pu_location_id": pu.to_numpy(),
            "do_location_id": do.to_numpy(),
            "pu_borough": pu.map(borough).fillna(_MISSING).to_numpy(),
            "do_borough": do.map(borough).fillna(_MISSING).to_numpy(),
            "rate_code": trips["rate_code"].astype(object).fillna(_MISSING).to_numpy(),
            "trip_distance": pd.to_numeric(trips["trip_distance"]).to_numpy(dtype=float),
            "hour": local.dt.hour.to_numpy(dtype=float),
            "weekday": local.dt.weekday.to_numpy(dtype=float),
            "passenger_count": pd.to_numeric(trips["passenger_count"]).to_numpy(dtype=float),
        }
    )


# --- the time-based split -------------------------------------------------------------------
@dataclass(frozen=True)
class TripSplit:
    """Half-open boundaries in New York time: fit [.., validation_start), validation
    [validation_start, test_start), test [test_start, ..). The final models are fitted on
    everything before `test_start`."""

    validation_start: pd.Timestamp
    test_start: pd.Timestamp

    def to_dict(self) -> dict[str, str]:
        return {
            "validation_start": self.validation_start.isoformat(),
            "test_start": self.test_start.isoformat(),
        }


def split_by_week(
    trips: pd.DataFrame, *, test_days: int = 7, validation_days: int = 3
) -> TripSplit:
    """The test part is the last `test_days` whole local days of the data (January 2023:
    the 25th to the 31st), validation the `validation_days` before it."""
    if trips.empty:
        raise PeriscopeError("no trips to split")
    local = _pickup_times(trips)
    end = local.max().normalize() + pd.Timedelta(days=1)
    test_start = end - pd.Timedelta(days=test_days)
    validation_start = test_start - pd.Timedelta(days=validation_days)
    if local.min() >= validation_start:
        raise PeriscopeError(
            f"the trips span {local.min():%Y-%m-%d %H:%M} .. {local.max():%Y-%m-%d %H:%M}: no "
            f"room for training before {validation_days} validation and {test_days} test days"
        )
    return TripSplit(validation_start, test_start)


def _parts(trips: pd.DataFrame, split: TripSplit) -> dict[str, np.ndarray]:
    local = _pickup_times(trips)
    before_test = (local < split.test_start).to_numpy()
    return {
        "fit": (local < split.validation_start).to_numpy(),
        "validation": before_test & (local >= split.validation_start).to_numpy(),
        "train": before_test,
        "test": ~before_test,
    }


# --- baselines ------------------------------------------------------------------------------
class ZonePairMedian(RegressorMixin):
    """The median per (pickup, dropoff) zone pair seen in training; a pair not seen falls
    back to the pickup zone's median, then the median of every trip."""

    def fit(self, features: pd.DataFrame, y: np.ndarray) -> ZonePairMedian:
        frame = features[["pu_location_id", "do_location_id"]].assign(y=np.asarray(y))
        self.pairs_ = frame.groupby(["pu_location_id", "do_location_id"])["y"].median()
        self.pickups_ = frame.groupby("pu_location_id")["y"].median()
        self.global_ = float(np.median(frame["y"]))
        return self

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        index = pd.MultiIndex.from_frame(features[["pu_location_id", "do_location_id"]])
        by_pair = self.pairs_.reindex(index).to_numpy()
        by_pickup = self.pickups_.reindex(features["pu_location_id"]).to_numpy()
        return np.where(
            np.isnan(by_pair), np.where(np.isnan(by_pickup), self.global_, by_pickup), by_pair
        )


def distance_linear() -> Pipeline:
    """y = a + b * trip distance (a missing distance: the training median)."""
    distance = ColumnTransformer(
        [("distance", SimpleImputer(strategy="median"), ["trip_distance"])]
    )
    return Pipeline([("features", distance), ("model", LinearRegression())])


# --- the models -----------------------------------------------------------------------------
def _linear() -> Pipeline:
    """Ridge on one-hot zones, boroughs, rate code, hour and weekday, plus scaled distance and
    passengers: the linear baseline of the issue."""
    columns = ColumnTransformer(
        [
            (
                "onehot",
                OneHotEncoder(handle_unknown="ignore", min_frequency=5, sparse_output=True),
                [*CATEGORICAL, "hour", "weekday"],
            ),
            (
                "scaled",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                ["trip_distance", "passenger_count"],
            ),
        ]
    )
    return Pipeline([("features", columns), ("model", Ridge(alpha=1.0))])


def _ordinal() -> ColumnTransformer:
    # Zones by training frequency; an unseen or rare zone is -1, which the gradient-boosted
    # trees read as missing (their categories must stay below 255 levels: 265 zones exist).
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=-1,
        encoded_missing_value=-1,
        max_categories=250,
        dtype=np.float64,
    )
    return ColumnTransformer(
        [("categories", encoder, list(CATEGORICAL)), ("numbers", "passthrough", list(NUMERIC))]
    )


def _boosted(loss: str, seed: int) -> Pipeline:
    # 100 trees of 31 leaves: the speed layer scores every trip, and predicting costs about
    # one tree walk per tree (400 trees of 63 leaves were 0.05 min of validation MAE better
    # and 4x slower, below the 50,000 trips/s gold needs from two actors).
    model = HistGradientBoostingRegressor(
        loss=loss,  # type: ignore[arg-type]
        max_iter=100,
        learning_rate=0.2,
        max_leaf_nodes=31,
        min_samples_leaf=20,
        categorical_features=list(range(len(CATEGORICAL))),
        early_stopping=False,
        random_state=seed,
    )
    return Pipeline([("features", _ordinal()), ("model", model)])


def _forest(seed: int) -> Pipeline:
    model = RandomForestRegressor(
        n_estimators=60, min_samples_leaf=5, max_features=0.5, n_jobs=1, random_state=seed
    )
    return Pipeline([("features", _ordinal()), ("model", model)])


def tree_candidates(seed: int = 0) -> dict[str, Callable[[], Any]]:
    """The tree ensembles validation chooses between, per target."""
    return {
        "hgb_absolute": lambda: _boosted("absolute_error", seed),
        "hgb_squared": lambda: _boosted("squared_error", seed),
        "random_forest": lambda: _forest(seed),
    }


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of one model on one target."""
    return {
        "mae": float(mean_absolute_error(actual, predicted)),
        "rmse": float(np.sqrt(mean_squared_error(actual, predicted))),
        "r2": float(r2_score(actual, predicted)),
    }


@dataclass
class TripModel:
    """A fitted regressor per target and the zone lookup its features need; `predict` takes
    trips as the reader or silver gives them (zones, pickup time, distance, passengers,
    rate code) and returns (duration_min, fare_amount) arrays."""

    boroughs: dict[str, str]
    estimators: dict[str, Any]
    chosen: dict[str, str]
    split: TripSplit | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT

    def predict_target(self, target: str, trips: pd.DataFrame) -> np.ndarray:
        return self._predict(target, trip_features(trips, self.boroughs))

    def _predict(self, target: str, features: pd.DataFrame) -> np.ndarray:
        # Neither a trip's duration nor its fare goes below zero.
        return np.maximum(np.asarray(self.estimators[target].predict(features), dtype=float), 0.0)

    def predict(self, trips: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (duration in minutes, fare in USD), one value per trip, in row order."""
        features = trip_features(trips, self.boroughs)
        duration, fare = (self._predict(t, features) for t in TARGETS)
        return duration, fare

    def save(self, directory: Path) -> None:
        """`model.joblib` and a readable `manifest.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, directory / MODEL_FILE)
        manifest = {
            "kind": "trip",
            "format_version": self.format_version,
            "targets": list(TARGETS),
            "features": list(FEATURES),
            "chosen": self.chosen,
            "split": self.split.to_dict() if self.split else None,
            **self.metadata,
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> TripModel:
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("format_version") != MODEL_FORMAT:
            raise PeriscopeError(
                f"{directory} holds a trip model of format {manifest.get('format_version')}; "
                f"this Periscope reads format {MODEL_FORMAT}: retrain it with "
                "`periscope train --source taxi --kind trip`"
            )
        model = joblib.load(directory / MODEL_FILE)
        if not isinstance(model, cls):
            raise TypeError(f"{directory / MODEL_FILE} holds a {type(model).__name__}")
        return model


# --- fitting and the comparison -------------------------------------------------------------
@dataclass
class TripTraining:
    """What `fit_trip_models` returns: the served model, the test-week table (target, model,
    mae, rmse, r2, seconds), the validation MAE of each tree candidate, and the row counts."""

    model: TripModel
    table: pd.DataFrame
    validation: pd.DataFrame
    counts: dict[str, int]

    def metric(self, target: str, model: str, metric: str = "mae") -> float:
        rows = self.table[(self.table["target"] == target) & (self.table["model"] == model)]
        return float(rows[metric].iloc[0])

    def better_baseline(self, target: str) -> str:
        baselines = ["zone_pair_median", "distance_linear"]
        return min(baselines, key=lambda m: self.metric(target, m))


def fit_trip_models(
    trips: pd.DataFrame,
    zones: pd.DataFrame,
    *,
    test_days: int = 7,
    validation_days: int = 3,
    seed: int = 0,
    candidates: Mapping[str, Callable[[], Any]] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TripTraining:
    """Fit the baselines, the linear model and the tree ensemble per target on the trips
    before the test week (only those silver accepts), choose the tree by validation MAE,
    and score everything on the test week's accepted trips.

    `zones` is the TLC lookup (location_id, borough); `candidates` replaces the tree
    ensembles (`tree_candidates`); `on_step` is told each step's name.
    """
    candidates = candidates or tree_candidates(seed)
    trips = trips.reset_index(drop=True)
    accepted = silver_accepts(trips)
    # Silver keeps a trip whose required measure is missing; a model cannot learn from it.
    known = trips[list(TARGETS)].notna().all(axis=1).to_numpy()
    kept = trips[accepted & known].reset_index(drop=True)
    split = split_by_week(kept, test_days=test_days, validation_days=validation_days)
    boroughs = dict(zip(zones["location_id"].astype(str), zones["borough"], strict=True))
    features = trip_features(kept, boroughs)
    parts = _parts(kept, split)
    for name in ("fit", "validation", "test"):
        if not parts[name].any():
            raise PeriscopeError(f"the {name} part of the trips is empty ({split.to_dict()})")
    counts = {
        "trips": len(trips),
        "rejected": int((~accepted).sum()),
        "without_target": int((accepted & ~known).sum()),
    }
    counts |= {name: int(mask.sum()) for name, mask in parts.items()}
    rows, validation_rows = [], []
    estimators, chosen = {}, {}
    step = on_step or (lambda _: None)
    for target in TARGETS:
        y = kept[target].to_numpy(dtype=float)
        choices = {}
        for name, make in candidates.items():
            step(f"{target}: {name} on the fit part")
            candidate = make().fit(features[parts["fit"]], y[parts["fit"]])
            score = mean_absolute_error(
                y[parts["validation"]], candidate.predict(features[parts["validation"]])
            )
            choices[name] = score
            validation_rows.append({"target": target, "model": name, "validation_mae": score})
        chosen[target] = min(choices, key=lambda n: choices[n])
        makers: dict[str, Callable[[], Any]] = {
            "zone_pair_median": ZonePairMedian,
            "distance_linear": distance_linear,
            "linear": _linear,
            "tree": candidates[chosen[target]],
        }
        for name, make in makers.items():
            step(f"{target}: {name}")
            started = time.perf_counter()
            fitted = make().fit(features[parts["train"]], y[parts["train"]])
            seconds = time.perf_counter() - started
            predicted = np.maximum(fitted.predict(features[parts["test"]]), 0.0)
            rows.append(
                {
                    "target": target,
                    "model": name,
                    **regression_metrics(y[parts["test"]], predicted),
                    "seconds": seconds,
                }
            )
            if name == "tree":
                estimators[target] = fitted
    model = TripModel(
        boroughs=boroughs,
        estimators=estimators,
        chosen=chosen,
        split=split,
        metadata={"counts": counts},
    )
    return TripTraining(model, pd.DataFrame(rows), pd.DataFrame(validation_rows), counts)


def evaluate_model(model: TripModel, trips: pd.DataFrame) -> dict[str, float]:
    """A model's MAE/RMSE/R² per target on trips (those silver accepts): `<target>_<metric>`."""
    trips = trips.reset_index(drop=True)
    known = trips[list(TARGETS)].notna().all(axis=1).to_numpy()
    kept = trips[silver_accepts(trips) & known]
    duration, fare = model.predict(kept)
    out = {}
    for target, predicted in zip(TARGETS, (duration, fare), strict=True):
        for metric, value in regression_metrics(kept[target].to_numpy(float), predicted).items():
            out[f"{target}_{metric}"] = value
    return out


# --- zone demand ----------------------------------------------------------------------------
def busiest_zone_series(
    trips: pd.DataFrame, *, top: int = 20, key: str = "pu_location_id"
) -> dict[str, pd.DataFrame]:
    """Hourly trip counts (naive UTC `ds`, `y`) of the `top` zones with the most pickups, on
    one complete hourly grid over the data's span: an hour without a pickup counts 0."""
    column = "pickup_time" if "pickup_time" in trips.columns else "event_time"
    times = pd.to_datetime(trips[column])
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    hours = times.dt.floor("h")
    zones = trips[key].astype(str)
    busiest = zones.value_counts().sort_index().sort_values(ascending=False, kind="stable")
    grid = pd.date_range(hours.min(), hours.max(), freq="h")
    counts = pd.crosstab(hours, zones).reindex(grid, fill_value=0)
    return {
        zone: pd.DataFrame({"ds": grid, "y": counts[zone].to_numpy(dtype=float)})
        for zone in busiest.index[:top]
    }
