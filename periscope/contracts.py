"""Source contracts: each stream described once, declaratively, whatever its shape.

A contract names a stream's Kafka topics, its entity key (a station, a taxi zone, a customer),
its event-time field, an optional event id, and its typed fields: numeric measures (unit, valid
range, sentinels), integer counts, categories (with their levels), strings and booleans. Its
window spec names the aggregations per field (the measure statistics, counts, sums, distinct
counts, category counts); it names the series the forecasters predict and the fields the
anomaly model watches, and where the replay reader lives. Every stage reads the contract
instead of naming columns. The wire format on `<source>-raw` is one JSON object per record:
`{<key_field>: ..., <event_time_field>: "<ISO-8601 UTC>", <field>: <value or null>, ...}`.

An inconsistent contract fails when it is built, naming the contract and the field:

>>> SourceContract("toy", "a toy", fields=(Measure("x", "m", 0, 1),), key_field="device")
Traceback (most recent call last):
...
periscope.contracts.ContractError: contract 'toy': key field 'device' is not one of its fields (x)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "AGGREGATIONS",
    "CONTRACTS",
    "TOPIC_ROLES",
    "Aggregation",
    "Category",
    "ContractError",
    "Count",
    "DatasetReader",
    "Field",
    "Flag",
    "ForecastTarget",
    "Measure",
    "Rule",
    "SourceContract",
    "Text",
    "TopicRole",
    "WindowSpec",
    "category_column",
    "get_contract",
    "register",
]

TopicRole = Literal["raw", "dlq", "features", "predictions"]
TOPIC_ROLES: tuple[TopicRole, ...] = ("raw", "dlq", "features", "predictions")

# The statistics `stats` gives each measure per window (see periscope.windows).
MEASURE_STATS = ("mean", "stddev", "min", "max", "rate_per_min", "trend")


class ContractError(ValueError):
    """A contract contradicts itself (a key that is no field, a sum over a string...)."""


# --- fields ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """A field of a record on the wire. `source` is its column in the original dataset."""

    name: str
    description: str = ""
    source: str | None = None
    required: bool = False

    kind: Literal["measure", "count", "category", "text", "flag"] = field(
        default="text", init=False, repr=False
    )

    @property
    def numeric(self) -> bool:
        return self.kind in ("measure", "count")


@dataclass(frozen=True)
class Measure(Field):
    """One numeric reading: unit, valid range and sentinels.

    `sentinels` are values the source uses for "missing" (UCI's -200), which become nulls,
    never readings. A required measure out of range quarantines the record; an optional one
    is dropped to null and counted.
    """

    # Positional order kept from the first contracts: Measure(name, unit, lo, hi, description).
    unit: str = ""
    valid_min: float = float("-inf")
    valid_max: float = float("inf")
    sentinels: tuple[float, ...] = ()

    def __init__(
        self,
        name: str,
        unit: str,
        valid_min: float,
        valid_max: float,
        description: str = "",
        *,
        source: str | None = None,
        required: bool = True,
        sentinels: tuple[float, ...] = (),
    ) -> None:
        for attribute, value in (
            ("name", name),
            ("unit", unit),
            ("valid_min", float(valid_min)),
            ("valid_max", float(valid_max)),
            ("description", description),
            ("source", source),
            ("required", required),
            ("sentinels", tuple(sentinels)),
            ("kind", "measure"),
        ):
            object.__setattr__(self, attribute, value)

    def in_range(self, value: float) -> bool:
        return self.valid_min <= value <= self.valid_max


@dataclass(frozen=True)
class Count(Field):
    """A whole number >= 0 (passengers, items); above `valid_max` it is out of range."""

    valid_max: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "count")


@dataclass(frozen=True)
class Category(Field):
    """A string from a known set of `levels`; any other value is out of range."""

    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "category")


@dataclass(frozen=True)
class Text(Field):
    """A free string: an id, a name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "text")


@dataclass(frozen=True)
class Flag(Field):
    """A JSON boolean."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "flag")


# --- windows -----------------------------------------------------------------------------------
AggregationKind = Literal["stats", "count", "sum", "distinct_count", "category_counts"]
AGGREGATIONS: dict[str, tuple[str, ...]] = {
    # aggregation -> the field kinds it applies to
    "stats": ("measure",),
    "count": ("measure", "count", "category", "text", "flag"),
    "sum": ("measure", "count", "flag"),
    "distinct_count": ("text", "category", "count"),
    "category_counts": ("category",),
}


@dataclass(frozen=True)
class Aggregation:
    """What a window keeps of one field: `stats` (mean, stddev, min, max, rate, trend of a
    measure), `count` (non-null values), `sum`, `distinct_count`, or `category_counts` (one
    count per level)."""

    field: str
    how: AggregationKind = "stats"


@dataclass(frozen=True)
class WindowSpec:
    """Sliding event-time windows (Spark interval strings) and what they aggregate.

    `aggregations` None means `stats` of every measure, the sensor default. Every window also
    counts its events (`reading_count`).
    """

    size: str = "5 minutes"
    slide: str = "1 minute"
    watermark: str = "10 minutes"
    aggregations: tuple[Aggregation, ...] | None = None


@dataclass(frozen=True)
class ForecastTarget:
    """An hourly series the forecasters predict per entity: the hourly `mean` (or `sum`) of a
    field, or the hourly `count` of events (`field` None) or of a field's values."""

    field: str | None
    aggregate: Literal["mean", "sum", "count"] = "mean"

    @property
    def name(self) -> str:
        """The series' name: the measure itself for a mean (`temperature`), else
        `<field>_<aggregate>`, `event_count` for events."""
        if self.field is None:
            return "event_count"
        return self.field if self.aggregate == "mean" else f"{self.field}_{self.aggregate}"

    @property
    def zero_when_empty(self) -> bool:
        """Whether an hour without events is 0 on the series' hourly grid: a count (or sum) of
        nothing is 0, while a mean of nothing stays missing.

        >>> ForecastTarget(None, "count").zero_when_empty, ForecastTarget("temperature").zero_when_empty
        (True, False)
        """
        return self.aggregate in ("count", "sum")


@runtime_checkable
class DatasetReader(Protocol):
    """Reads a source's recorded history for replay (implemented in ingest/)."""

    def read(self, data_dir: Path, *, entities: Sequence[str] | None = None) -> pl.DataFrame:
        """One row per record: the contract's key, event time (UTC) and fields, in time order."""
        ...

    def entities(self, data_dir: Path) -> list[str]:
        """The entity ids the history holds (chaos stamps its damaged records with them)."""
        ...


# --- cross-field rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A check that spans fields: a record for which `condition` holds is quarantined with
    `reason` (checked after every field's own checks; the first failing rule wins).

    `condition` is a SQL boolean expression over the contract's fields (the key as a string)
    in the dialect Spark and DuckDB share: comparisons, `and`/`or`/`not`, `between`,
    `try_cast`. A condition that is null (a value it reads is missing) passes. `fields` are
    the fields it reads: the quarantine's `reason_detail` shows their values. `violation`
    holds field values that break it (chaos sends records damaged that way).
    """

    reason: str
    condition: str
    description: str
    fields: tuple[str, ...]
    violation: tuple[tuple[str, object], ...] = ()


# --- the contract ------------------------------------------------------------------------------
def category_column(field: str, level: str) -> str:
    """The window column counting one level of a category.

    >>> category_column("payment_type", "Credit card")
    'payment_type_credit_card_count'
    """
    slug = re.sub(r"[^a-z0-9]+", "_", level.lower()).strip("_")
    return f"{field}_{slug}_count"


@dataclass(frozen=True)
class SourceContract:
    """What a stream is: name, key, event time, optional event id, typed fields, windowing,
    forecast targets, anomaly fields and where its history is read from."""

    name: str
    description: str
    fields: tuple[Field, ...]
    key_field: str = "station_id"
    event_time_field: str = "timestamp"
    event_id_field: str | None = None
    # What one entity is called where people read it ("station", "zone", "customer").
    entity_label: str = "station"
    # What one event is called ("trip", "order"): it names the speed layer's table and marts.
    event_label: str = "event"
    window: WindowSpec = field(default_factory=WindowSpec)
    forecast_targets: tuple[ForecastTarget, ...] = ()
    # The forecast series follow the day of the week (people's activity: traffic, trips):
    # the global model also reads the target hour a week before and its weekday.
    weekly_cycle: bool = False
    # Fields whose window statistics the anomaly model reads; None = every measure with stats.
    anomaly_fields: tuple[str, ...] | None = None
    # "module:attribute" of a DatasetReader (resolved when a replay needs it), or the reader.
    reader: str | DatasetReader | None = None
    # A record larger than this is quarantined as oversize (Kafka itself accepts up to 1 MiB).
    max_record_bytes: int = 16 * 1024
    # Cross-field checks with their own reason codes (a trip that ends before it starts).
    rules: tuple[Rule, ...] = ()
    # Measures a model predicts for every event as it arrives (the speed layer: a trip's
    # duration and fare at pickup). Needs an event id; gold writes `event_predictions_entity`.
    event_predictions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self)

    # --- topics and tables ---
    def topic(self, role: TopicRole) -> str:
        """The Kafka topic for one role, e.g. `weather-raw`."""
        return f"{self.name}-{role}"

    @property
    def topics(self) -> dict[TopicRole, str]:
        return {role: self.topic(role) for role in TOPIC_ROLES}

    def table(self, layer: Literal["bronze", "silver", "gold"], entity: str) -> str:
        """A lake table name relative to the lake root, e.g. `silver/weather_features`."""
        return f"{layer}/{self.name}_{entity}"

    @property
    def event_predictions_entity(self) -> str:
        """The speed layer's table entity, named by the event: `gold/<source>_<entity>`, the
        lake and dbt tables after it, and the kind of its messages.

        >>> get_contract("taxi").event_predictions_entity, get_contract("weather").event_predictions_entity
        ('trip_predictions', 'event_predictions')
        """
        return f"{self.event_label}_predictions"

    # --- fields ---
    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}; it has {', '.join(self.field_names)}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def value_fields(self) -> tuple[Field, ...]:
        """Every field but the key: what an observation carries besides key and time."""
        return tuple(f for f in self.fields if f.name != self.key_field)

    @property
    def measures(self) -> tuple[Measure, ...]:
        return tuple(f for f in self.fields if isinstance(f, Measure))

    @property
    def measure_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.measures)

    def measure(self, name: str) -> Measure:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(
            f"{self.name} has no measure {name!r}; it has {', '.join(self.measure_names)}"
        )

    @property
    def wire_fields(self) -> tuple[str, ...]:
        """Every field of a record on the wire, in order (key, event time, the rest)."""
        return (self.key_field, self.event_time_field, *(f.name for f in self.value_fields))

    # --- windows ---
    @property
    def aggregations(self) -> tuple[Aggregation, ...]:
        if self.window.aggregations is not None:
            return self.window.aggregations
        return tuple(Aggregation(m, "stats") for m in self.measure_names)

    def feature_columns(self) -> list[tuple[str, Literal["double", "long"]]]:
        """(column, type) of a window's features after key, window_start, window_end,
        reading_count, in order."""
        columns: list[tuple[str, Literal["double", "long"]]] = []
        for agg in self.aggregations:
            if agg.how == "stats":
                columns += [(f"{agg.field}_{stat}", "double") for stat in MEASURE_STATS]
            elif agg.how == "sum":
                columns.append((f"{agg.field}_sum", "double"))
            elif agg.how == "category_counts":
                f = self.field(agg.field)
                assert isinstance(f, Category)
                columns += [(category_column(agg.field, level), "long") for level in f.levels]
            else:  # count, distinct_count
                columns.append((f"{agg.field}_{agg.how}", "long"))
        return columns

    @property
    def stats_measures(self) -> tuple[str, ...]:
        """The measures whose windows keep the full statistics."""
        return tuple(a.field for a in self.aggregations if a.how == "stats")

    @property
    def forecast_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.forecast_targets)

    @property
    def anomaly_measures(self) -> tuple[str, ...]:
        return self.stats_measures if self.anomaly_fields is None else self.anomaly_fields

    def dataset_reader(self) -> DatasetReader:
        """The replay reader, imported on first use (contracts import no stage)."""
        if self.reader is None:
            raise ContractError(f"contract {self.name!r} names no dataset reader: it cannot replay")
        if not isinstance(self.reader, str):
            return self.reader
        module, _, attribute = self.reader.partition(":")
        return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def _check(contract: SourceContract) -> None:
    """Raise ContractError naming the contract and the field for any inconsistency."""

    def fail(message: str) -> None:
        raise ContractError(f"contract {contract.name!r}: {message}")

    names = [f.name for f in contract.fields]
    listed = ", ".join(names)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", contract.name):
        fail("a source name is lowercase letters, digits and _ (it names topics and tables)")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", contract.event_label):
        fail(
            f"event label {contract.event_label!r} is not a lowercase identifier (it names tables)"
        )
    for name in contract.event_predictions:
        if name not in contract.measure_names:
            fail(
                f"event prediction {name!r} is not a measure; measures: {', '.join(contract.measure_names)}"
            )
    if contract.event_predictions and contract.event_id_field is None:
        fail("event predictions need an event_id_field (a prediction is keyed by its event)")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        fail(f"field(s) {', '.join(duplicated)} declared twice")
    reserved = {contract.event_time_field, "event_time", "window_start", "window_end"}
    for f in contract.fields:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", f.name):
            fail(f"field {f.name!r} is not a lowercase identifier")
        if f.name in reserved:
            fail(f"field {f.name!r} is a reserved column name")
        if isinstance(f, Measure) and not f.valid_min <= f.valid_max:
            fail(f"measure {f.name!r} has valid_min > valid_max")
        if isinstance(f, Category) and not f.levels:
            fail(f"category {f.name!r} lists no levels")
        if isinstance(f, Category):
            columns = [category_column(f.name, level) for level in f.levels]
            if len(set(columns)) < len(columns):
                fail(f"category {f.name!r} has levels that name the same column: {f.levels}")
    if contract.key_field not in names:
        fail(f"key field {contract.key_field!r} is not one of its fields ({listed})")
    if contract.field(contract.key_field).kind not in ("text", "category", "count"):
        fail(f"key field {contract.key_field!r} must be a string, category or count")
    if contract.event_id_field is not None:
        if contract.event_id_field not in names:
            fail(f"event id field {contract.event_id_field!r} is not one of its fields ({listed})")
        if contract.event_id_field == contract.key_field:
            fail(f"event id field {contract.event_id_field!r} is also the key")
    seen: set[tuple[str, str]] = set()
    for agg in contract.aggregations:
        if agg.field not in names:
            fail(f"aggregation {agg.how!r} on {agg.field!r}, which is not one of its fields")
        if agg.how not in AGGREGATIONS:
            fail(
                f"unknown aggregation {agg.how!r} on {agg.field!r}; known: {', '.join(AGGREGATIONS)}"
            )
        kind = contract.field(agg.field).kind
        if kind not in AGGREGATIONS[agg.how]:
            fail(f"aggregation {agg.how!r} cannot apply to {kind} field {agg.field!r}")
        if agg.field == contract.key_field:
            fail(f"aggregation {agg.how!r} on the key field {agg.field!r}")
        if (agg.field, agg.how) in seen:
            fail(f"aggregation {agg.how!r} on {agg.field!r} listed twice")
        seen.add((agg.field, agg.how))
    kept = {(a.field, a.how) for a in contract.aggregations}
    needs = {"mean": "stats", "sum": "sum", "count": "count"}
    for target in contract.forecast_targets:
        if target.field is None:
            if target.aggregate != "count":
                fail("a forecast target without a field can only count events")
            continue
        if (target.field, needs[target.aggregate]) not in kept:
            fail(
                f"forecast target {target.name!r} needs the window aggregation "
                f"{needs[target.aggregate]!r} of {target.field!r}, which the window does not keep"
            )
    for name in contract.anomaly_fields or ():
        if (name, "stats") not in kept:
            fail(f"anomaly field {name!r} has no `stats` aggregation in the window")
    reasons = [rule.reason for rule in contract.rules]
    for rule in contract.rules:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", rule.reason):
            fail(f"rule reason {rule.reason!r} is not a lowercase identifier")
        if reasons.count(rule.reason) > 1:
            fail(f"rule reason {rule.reason!r} is used twice")
        if not rule.fields:
            fail(f"rule {rule.reason!r} names no fields it reads")
        for name in (*rule.fields, *(name for name, _ in rule.violation)):
            if name not in names:
                fail(f"rule {rule.reason!r} reads {name!r}, which is not one of its fields")


# --- the sources -------------------------------------------------------------------------------
def _station(description: str) -> Text:
    return Text("station_id", description, required=True)


# Hourly history needs hour-sized windows; live sources keep the 5m/1m/10m default.
_HOURLY = WindowSpec(size="3 hours", slide="1 hour", watermark="6 hours")

WEATHER = SourceContract(
    name="weather",
    description="Hourly weather observations from city stations (Kaggle historical hourly weather, Open-Meteo live).",
    fields=(
        _station("a city's slug, e.g. tel_aviv_district"),
        Measure("temperature", "°C", -90.0, 60.0, "air temperature", source="temperature"),
        Measure("humidity", "%", 0.0, 100.0, "relative humidity", source="humidity"),
        # Station-level readings (Denver, Albuquerque at ~1,600 m: ~830 hPa) are real: not errors.
        Measure("pressure", "hPa", 500.0, 1090.0, "atmospheric pressure", source="pressure"),
        Measure("wind_speed", "m/s", 0.0, 75.0, "wind speed", source="wind_speed"),
        Measure(
            "wind_direction",
            "°",
            0.0,
            360.0,
            "direction the wind blows from",
            source="wind_direction",
            required=False,
        ),
    ),
    window=_HOURLY,
    # What operators watch and the seeds' dashboards show.
    forecast_targets=tuple(ForecastTarget(m) for m in ("temperature", "humidity", "pressure")),
    # Wind direction is an angle: 359 -> 1 degree is a 2-degree turn and 0 is a north wind, so
    # neither a jump nor a reading at the floor says a vane failed, and the detectors measure on
    # a line. It was 43% of the false alarms on clean test windows (bench/anomaly_eval.py).
    anomaly_fields=("temperature", "humidity", "pressure", "wind_speed"),
    reader="ingest.datasets:WEATHER_READER",
)

_UCI_MISSING = (-200.0,)


def _uci(name: str, source: str, unit: str, lo: float, hi: float, description: str) -> Measure:
    return Measure(name, unit, lo, hi, description, source=source, sentinels=_UCI_MISSING)


AIR_QUALITY = SourceContract(
    name="air_quality",
    description="Hourly gas-sensor readings of the UCI Air Quality station (De Vito et al., 2008).",
    fields=(
        _station("the one UCI station, uci_air_quality"),
        _uci("co_gt", "CO(GT)", "mg/m³", 0.0, 50.0, "true hourly CO concentration (reference analyser)"),
        _uci("pt08_s1_co", "PT08.S1(CO)", "sensor response", 0.0, 3000.0, "tin-oxide sensor, nominally CO"),
        _uci("nmhc_gt", "NMHC(GT)", "µg/m³", 0.0, 2000.0, "true non-methane hydrocarbons"),
        _uci("c6h6_gt", "C6H6(GT)", "µg/m³", 0.0, 100.0, "true benzene concentration"),
        _uci("pt08_s2_nmhc", "PT08.S2(NMHC)", "sensor response", 0.0, 3000.0, "titania sensor, nominally NMHC"),
        _uci("nox_gt", "NOx(GT)", "ppb", 0.0, 2000.0, "true NOx concentration"),
        _uci("pt08_s3_nox", "PT08.S3(NOx)", "sensor response", 0.0, 3000.0, "tungsten-oxide sensor, nominally NOx"),
        _uci("no2_gt", "NO2(GT)", "µg/m³", 0.0, 500.0, "true NO2 concentration"),
        _uci("pt08_s4_no2", "PT08.S4(NO2)", "sensor response", 0.0, 3000.0, "tungsten-oxide sensor, nominally NO2"),
        _uci("pt08_s5_o3", "PT08.S5(O3)", "sensor response", 0.0, 3000.0, "indium-oxide sensor, nominally O3"),
        _uci("temperature", "T", "°C", -30.0, 50.0, "air temperature"),
        _uci("relative_humidity", "RH", "%", 0.0, 100.0, "relative humidity"),
        _uci("absolute_humidity", "AH", "g/m³", 0.0, 5.0, "absolute humidity"),
    ),
    window=_HOURLY,
    forecast_targets=(ForecastTarget("co_gt"), ForecastTarget("no2_gt")),
    weekly_cycle=True,  # road traffic's week: chosen on 2004-09 .. 2004-11 (README, Forecasts)
    reader="ingest.datasets:AIR_QUALITY_READER",
)  # fmt: skip

# NYC TLC data dictionary (green trips, 2023) codes, as the levels silver checks.
TAXI_PAYMENT_TYPES = ("credit_card", "cash", "no_charge", "dispute", "unknown", "voided_trip")
TAXI_RATE_CODES = (
    "standard", "jfk", "newark", "nassau_or_westchester", "negotiated", "group_ride", "unknown"
)  # fmt: skip
TAXI_VENDORS = ("creative_mobile", "verifone")
# The zone ids of taxi_zone_lookup.csv (264 and 265 are its own "Unknown" and "N/A").
TAXI_ZONE_IDS = (1, 265)
_ZONE_ID = "try_cast({} as int)"


def _unknown_zone(field: str) -> str:
    zone = _ZONE_ID.format(field)
    return f"({zone} is null or {zone} not between {TAXI_ZONE_IDS[0]} and {TAXI_ZONE_IDS[1]})"


TAXI = SourceContract(
    name="taxi",
    description="NYC green-taxi trips of January 2023 (TLC trip records), one record per trip.",
    fields=(
        Text("pu_location_id", "pickup zone (TLC LocationID)", source="PULocationID", required=True),
        Text("trip_id", "hash of the trip's own fields: a replayed trip repeats it", required=True),
        Text("do_location_id", "dropoff zone (TLC LocationID)", source="DOLocationID", required=True),
        Category("vendor", "the trip-record provider", source="VendorID", levels=TAXI_VENDORS),
        Count("passenger_count", "passengers, as the driver entered them", source="passenger_count"),
        # The field ranges bound what can be a number of this kind at all; the rules below name
        # the trips that are well-formed but impossible.
        Measure("trip_distance", "mi", 0.0, 500.0, "distance on the taximeter", source="trip_distance"),
        Measure("fare_amount", "USD", -1000.0, 5000.0, "time-and-distance fare", source="fare_amount"),
        Measure("tip_amount", "USD", -1000.0, 5000.0, "tip (card tips only)", source="tip_amount", required=False),
        Measure("total_amount", "USD", -1000.0, 5000.0, "charged in all", source="total_amount"),
        Category("payment_type", "how the trip was paid", source="payment_type", levels=TAXI_PAYMENT_TYPES),
        Category("rate_code", "the rate in effect at the end of the trip", source="RatecodeID", levels=TAXI_RATE_CODES),
        # Dropoff minus pickup: a duration moves with a rebased pickup, a dropoff stamp would not.
        Measure("duration_min", "min", -1440.0, 10080.0, "dropoff time minus pickup time"),
    ),
    key_field="pu_location_id",
    event_time_field="pickup_time",
    event_id_field="trip_id",
    entity_label="zone",
    event_label="trip",  # gold/taxi_trip_predictions, stg_taxi__trip_predictions
    window=WindowSpec(
        "15 minutes",
        "5 minutes",
        "1 hour",
        aggregations=(
            Aggregation("fare_amount", "stats"),
            Aggregation("trip_distance", "stats"),
            Aggregation("duration_min", "stats"),
            # Share paid by card = payment_type_credit_card_count / reading_count.
            Aggregation("payment_type", "category_counts"),
        ),
    ),
    forecast_targets=(ForecastTarget(None, "count"),),  # trips per zone per hour
    reader="ingest.datasets:TAXI_READER",
    # The speed layer: each trip's duration and fare predicted from what is known at pickup.
    event_predictions=("duration_min", "fare_amount"),
    rules=(
        Rule("dropoff_before_pickup", "duration_min < 0", "the trip ends before it starts",
             ("duration_min",), (("duration_min", -7.5),)),
        Rule("negative_fare", "fare_amount < 0", "a negative fare (a refund or void)",
             ("fare_amount",), (("fare_amount", -12.0),)),
        Rule("absurd_fare", "fare_amount > 500", "a fare above 500 USD",
             ("fare_amount",), (("fare_amount", 4200.0),)),
        Rule("zero_distance_with_fare", "trip_distance = 0 and fare_amount > 0",
             "a fare charged for no distance", ("trip_distance", "fare_amount"),
             (("trip_distance", 0.0), ("fare_amount", 18.5))),
        Rule("unknown_zone", f"{_unknown_zone('pu_location_id')} or {_unknown_zone('do_location_id')}",
             "a pickup or dropoff zone that is not in taxi_zone_lookup.csv",
             ("pu_location_id", "do_location_id"), (("do_location_id", "999"),)),
        Rule("passenger_count_out_of_range", "passenger_count not between 1 and 6",
             "no passengers, or more than a taxi seats", ("passenger_count",),
             (("passenger_count", 0),)),
        Rule("over_12_hours", "duration_min > 720", "a trip longer than 12 hours",
             ("duration_min",), (("duration_min", 1000.0),)),
    ),
)  # fmt: skip

CONTRACTS: dict[str, SourceContract] = {c.name: c for c in (WEATHER, AIR_QUALITY, TAXI)}


def register(contract: SourceContract) -> SourceContract:
    """Add a source (or replace one of the same name): every stage and CLI then knows it."""
    CONTRACTS[contract.name] = contract
    return contract


def get_contract(name: str) -> SourceContract:
    """The contract for a source name; a clear error names the known sources."""
    try:
        return CONTRACTS[name]
    except KeyError:
        known = ", ".join(sorted(CONTRACTS))
        raise KeyError(f"unknown source {name!r}; known sources: {known}") from None
