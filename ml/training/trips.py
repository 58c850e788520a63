"""The taxi trip regressor's training run: silver's taxi observations -> `ml.trips` on Ray ->
MLflow (`taxi_trip`) -> champion if better.

The challenger is promoted when there is no champion yet, or (policy `if-better`, and
`periscope models promote <source> trip <version>`) when its duration MAE on its own test
window (from its `test_start`, New York time, through the last trip it was trained with) is
strictly lower than the champion's on the same trips of the lake; ties keep the champion.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from ml import trips
from ml.ray_session import ray_session
from ml.registry import ModelInfo, Registry
from ml.training.config import PromotionPolicy
from ml.training.promotion import promote_if_better
from periscope.contracts import TAXI, SourceContract, get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings
from periscope.time import naive_utc_columns

__all__ = [
    "TripOutcome",
    "compare_trip_models",
    "promote_trip_version",
    "read_silver_trips",
    "read_zone_lookup",
    "train_trip_kind",
    "trip_test_window",
]

# The TLC zone lookup (location_id -> borough) beside the trip file in the shared data folder.
ZONE_LOOKUP = Path("nyc_tlc") / "taxi_zone_lookup.csv"
# What the regressor reads of each trip, beside the targets.
_COLUMNS = (
    "event_time",
    "pu_location_id",
    "do_location_id",
    "trip_distance",
    "passenger_count",
    "rate_code",
    *trips.TARGETS,
)


@dataclass
class TripOutcome:
    """One trip-model training: the fitted model and its test-week comparison."""

    training: trips.TripTraining
    info: ModelInfo
    decision: str


def read_silver_trips(settings: Settings, contract: SourceContract = TAXI) -> pd.DataFrame:
    """Silver's taxi observations (the columns the regressor reads; naive-UTC `event_time`);
    a clear error when the lake holds none yet."""
    path = settings.lake_path(contract.table("silver", "observations"))
    advice = (
        f"replay the taxi history (`periscope ingest replay --source {contract.name}`) and run "
        f"silver (`periscope silver run --source {contract.name} --available-now`) first"
    )
    try:
        table = DeltaTable(path)
    except TableNotFoundError as exc:
        raise PeriscopeError(
            f"no {contract.name} observations in the lake at {path}: {advice}"
        ) from exc
    # Single-threaded like ml.data's reads (delta-io/delta-rs#2184).
    # Every field too, not only the features: training re-checks the contract's rules on them.
    present = set(table.schema().to_arrow().names)
    columns = [c for c in dict.fromkeys([*_COLUMNS, *contract.field_names]) if c in present]
    rows = table.to_pyarrow_dataset().to_table(columns=columns, use_threads=False)
    if rows.num_rows == 0:
        raise PeriscopeError(f"the {contract.name} observations at {path} are empty: {advice}")
    return naive_utc_columns(rows.to_pandas())


def read_zone_lookup(settings: Settings) -> pd.DataFrame:
    """The TLC zone lookup: location_id (string), borough."""
    path = Path(settings.data_dir) / ZONE_LOOKUP
    zones = pd.read_csv(path, dtype={"LocationID": str})
    return zones.rename(columns={"LocationID": "location_id", "Borough": "borough"})[
        ["location_id", "borough"]
    ]


def _fit_remote(
    observed: pd.DataFrame, zones: pd.DataFrame, test_days: int, validation_days: int
) -> trips.TripTraining:
    return trips.fit_trip_models(
        observed, zones, test_days=test_days, validation_days=validation_days
    )


def train_trip_kind(
    settings: Settings,
    *,
    source: str = TAXI.name,
    policy: PromotionPolicy = "if-none",
    workers: int | None = None,
    test_days: int = 7,
    validation_days: int = 3,
    observed: pd.DataFrame | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TripOutcome:
    """Train the trip regressor on Ray from silver's observations (or `observed`), register
    it as `<source>_trip` and apply the promotion policy."""
    import ray

    step = on_step or (lambda _: None)
    step("reading silver's trips")
    observed = read_silver_trips(settings) if observed is None else observed
    zones = read_zone_lookup(settings)
    step(f"fitting on {len(observed):,} trips")
    with ray_session(settings, workers):
        fit = ray.remote(num_cpus=1)(_fit_remote)
        training = ray.get(fit.remote(observed, zones, test_days, validation_days))
    step("registering")
    registry = Registry(settings)
    split = training.model.split
    metrics = {
        f"{row.target}_{row.model}_{metric}": float(getattr(row, metric))
        for row in training.table.itertuples()
        for metric in ("mae", "rmse", "r2")
    }
    # The promotion metric under a short name, as `models list` shows a key metric.
    metrics["duration_mae"] = training.metric("duration_min", "tree")
    with tempfile.TemporaryDirectory() as tmp:
        training.model.save(Path(tmp))
        info = registry.log_model(
            source=source,
            kind="trip",
            directory=Path(tmp),
            params={
                "chosen_duration": training.model.chosen["duration_min"],
                "chosen_fare": training.model.chosen["fare_amount"],
                "test_days": test_days,
                "validation_days": validation_days,
                **(split.to_dict() if split else {}),
                **{f"rows_{k}": v for k, v in training.counts.items()},
            },
            metrics=metrics,
            tags={
                "data_from": str(observed["event_time"].min()),
                "data_until": str(observed["event_time"].max()),
            },
            extra_files={
                "test_week.csv": training.table.to_csv(index=False),
                "validation.csv": training.validation.to_csv(index=False),
            },
        )
    decision = _decide(registry, source, info, training, observed, policy)
    return TripOutcome(training, info, decision)


def _decide(
    registry: Registry,
    source: str,
    info: ModelInfo,
    training: trips.TripTraining,
    observed: pd.DataFrame,
    policy: PromotionPolicy,
) -> str:
    """Apply the promotion policy to the freshly registered version; say what happened."""
    if policy == "never":
        return f"registered version {info.version}; champion unchanged (--no-promote)"
    champion_info = registry.resolve(source, "trip")
    if champion_info is None:
        registry.set_champion(source, "trip", info.version)
        return f"version {info.version} is the first trip model: promoted to champion"
    if policy == "if-none":
        return (
            f"registered version {info.version}; a champion exists, so it stays "
            "(use `periscope retrain` or `periscope models promote` to compare)"
        )
    return _compare_and_decide(registry, source, info, training.model, champion_info, observed)


def trip_test_window(observed: pd.DataFrame, info: ModelInfo) -> pd.DataFrame:
    """The trips of a registered trip model's own test window: pickups from its `test_start`
    (New York time, a run param) through the last trip it was trained with (`data_until`)."""
    if "test_start" not in info.params:
        raise PeriscopeError(f"{info.name} version {info.version} records no test window")
    times = pd.to_datetime(observed["event_time"])  # naive UTC, as silver's reads give them
    local = times.dt.tz_localize("UTC").dt.tz_convert(trips.LOCAL_TZ)
    keep = local >= pd.Timestamp(info.params["test_start"])
    if info.tags.get("data_until"):
        keep &= times <= pd.Timestamp(info.tags["data_until"])
    return observed[keep.to_numpy()]


def compare_trip_models(
    challenger: trips.TripModel, champion: trips.TripModel, test_window: pd.DataFrame
) -> tuple[float, float]:
    """(challenger, champion) duration MAE on the same trips (those silver accepts)."""
    if test_window.empty:
        raise PeriscopeError("no trips in the test window to compare the trip models on")
    return (
        trips.evaluate_model(challenger, test_window)["duration_min_mae"],
        trips.evaluate_model(champion, test_window)["duration_min_mae"],
    )


def _compare_and_decide(
    registry: Registry,
    source: str,
    info: ModelInfo,
    challenger: trips.TripModel,
    champion_info: ModelInfo,
    observed: pd.DataFrame,
) -> str:
    ours, theirs = compare_trip_models(
        challenger, registry.load(champion_info), trip_test_window(observed, info)
    )
    return promote_if_better(
        registry,
        source,
        "trip",
        info,
        champion_info,
        ours,
        theirs,
        "duration MAE",
        lower_is_better=True,
    )


def promote_trip_version(
    settings: Settings, source: str, info: ModelInfo, champion_info: ModelInfo
) -> str:
    """`periscope models promote <source> trip <version>`: the retrain rule on the lake's
    trips of the chosen version's own test window."""
    registry = Registry(settings)
    observed = read_silver_trips(settings, get_contract(source))
    return _compare_and_decide(registry, source, info, registry.load(info), champion_info, observed)
