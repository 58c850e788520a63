"""Parsers of the real datasets under `settings.data_dir` into long, contract-shaped frames.

Pure functions (polars, no Kafka): each returns one row per record of its source, with the
contract's event-time field as a UTC `Datetime("us")` and every field of the contract under
its name, measures as Float64 in the contract's units. The sensor sources give one row per
(station_id, timestamp); taxi gives one row per trip. Files are read in place; see
`data/PROVENANCE.md` there for what each file is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from periscope.contracts import (
    AIR_QUALITY,
    TAXI,
    TAXI_PAYMENT_TYPES,
    TAXI_RATE_CODES,
    TAXI_VENDORS,
    WEATHER,
    ContractError,
    Measure,
    SourceContract,
    get_contract,
)
from periscope.errors import PeriscopeError

__all__ = [
    "AIR_QUALITY_READER",
    "DatasetError",
    "TAXI_READER",
    "UCI_STATION_ID",
    "WEATHER_READER",
    "Station",
    "load_stations",
    "read_air_quality",
    "read_source",
    "read_taxi",
    "read_weather",
    "read_zones",
    "station_id",
    "trip_ids",
]

UCI_STATION_ID = "uci_air_quality"

_WEATHER_DIR = "weather_hourly"
_AIR_QUALITY_CSV = Path("air_quality") / "AirQualityUCI.csv"
_TS_FORMAT = "%Y-%m-%d %H:%M:%S"
_TAXI_TRIPS = Path("nyc_tlc") / "green_tripdata_2023-01.parquet"
_TAXI_ZONES = Path("nyc_tlc") / "taxi_zone_lookup.csv"
# The month the trip file is for, in NYC time. The TLC file also holds 4 pickups outside it
# (two in December 2022, one in 2009, one in February): replay paces by event time, and a
# 14-year gap would stall it, so the reader leaves them out.
_TAXI_MONTH = ("2023-01-01 00:00:00", "2023-02-01 00:00:00")
_NYC = "America/New_York"

# The weather files keep OpenWeatherMap's units; only temperature differs from the contract.
# Kelvin values carry at most 9 decimals, so rounding there only drops float noise
# (282.08 K -> 8.93 °C, not 8.930000000000007).
_WEATHER_TO_CONTRACT_UNITS: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "temperature": lambda kelvin: (kelvin - 273.15).round(9),
}


class DatasetError(PeriscopeError):
    """A dataset file that does not parse; the message names the file and the first problem."""


@contextmanager
def _parsing(path: Path) -> Iterator[None]:
    """Turn a parser's error into a DatasetError naming the file (one line, no traceback)."""
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        lines = str(exc).strip().splitlines()
        raise DatasetError(
            f"cannot parse {path}: {lines[0] if lines else type(exc).__name__}"
        ) from exc


@dataclass(frozen=True)
class Station:
    """A weather station: one city of the Kaggle historical hourly weather dataset."""

    station_id: str
    name: str
    country: str
    latitude: float
    longitude: float


def station_id(name: str) -> str:
    """A stable slug of a city name.

    >>> station_id("Tel Aviv District")
    'tel_aviv_district'
    """
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def load_stations(data_dir: Path) -> list[Station]:
    """The 36 cities of `weather_hourly/city_attributes.csv`, in file order."""
    path = Path(data_dir) / _WEATHER_DIR / "city_attributes.csv"
    with _parsing(path):
        frame = pl.read_csv(
            path, schema_overrides={"Latitude": pl.Float64, "Longitude": pl.Float64}
        )
    return [
        Station(
            station_id(row["City"]), row["City"], row["Country"], row["Latitude"], row["Longitude"]
        )
        for row in frame.iter_rows(named=True)
    ]


def _drop_empty_and_sort(frame: pl.DataFrame, contract: SourceContract) -> pl.DataFrame:
    measures = contract.measure_names
    return (
        frame.filter(pl.any_horizontal(pl.col(m).is_not_null() for m in measures))
        .select(contract.key_field, contract.event_time_field, *measures)
        .sort(contract.event_time_field, contract.key_field)
    )


def _weather_measure(path: Path, measure: str, wanted: set[str] | None) -> pl.LazyFrame:
    """One wide weather file as long (station_id, timestamp, <measure>) rows; an hour the file
    lists twice keeps its first line (files are joined on the hour: repeats in two files would
    multiply into every combination)."""
    with _parsing(path):
        header = pl.read_csv(path, n_rows=0).columns
    cities = [c for c in header[1:] if wanted is None or station_id(c) in wanted]
    to_unit = _WEATHER_TO_CONTRACT_UNITS.get(measure, lambda value: value)
    return (
        pl.scan_csv(path, infer_schema=False)  # all strings, cast strictly below
        .select(
            pl.col("datetime")
            .str.to_datetime(_TS_FORMAT, time_unit="us", time_zone="UTC")
            .alias("timestamp"),
            *(pl.col(c).cast(pl.Float64).alias(station_id(c)) for c in cities),
        )
        .unpivot(index="timestamp", variable_name="station_id", value_name=measure)
        .unique(subset=["station_id", "timestamp"], keep="first")  # sorted after the join
        .with_columns(to_unit(pl.col(measure)).alias(measure))
    )


def read_weather(data_dir: Path, *, stations: list[str] | None = None) -> pl.DataFrame:
    """Hourly weather of every (or the given) station, long format, temperature in °C.

    A file that lacks a city (temperature and pressure have 32 of the 36) or a period
    (wind_direction starts 2016-12-01) leaves that measure null there. Rows where every
    measure is null are dropped; rows are sorted by timestamp, then station_id.
    """
    wanted: set[str] | None = None
    if stations is not None:
        known = [s.station_id for s in load_stations(data_dir)]
        unknown = sorted(set(stations) - set(known))
        if unknown:
            raise ValueError(
                f"unknown weather station(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        wanted = set(stations)

    keys = ["station_id", "timestamp"]
    joined: pl.LazyFrame | None = None
    for measure in WEATHER.measures:
        path = Path(data_dir) / _WEATHER_DIR / f"{measure.source or measure.name}.csv"
        long = _weather_measure(path, measure.name, wanted)
        joined = long if joined is None else joined.join(long, on=keys, how="full", coalesce=True)
    assert joined is not None  # the contract has measures
    with _parsing(Path(data_dir) / _WEATHER_DIR):  # the files are read here, all at once
        return _drop_empty_and_sort(joined.collect(), WEATHER)


def read_air_quality(data_dir: Path) -> pl.DataFrame:
    """The UCI Air Quality station, one row per hour, sentinels (-200) as nulls.

    Timestamps: the file records local Italian time with no zone or DST marker. They are
    taken as recorded and labelled UTC: converting from Europe/Rome would invent a gap in
    March and duplicate hours in October that the hourly series does not have.
    """
    source_names = {m.source or m.name: m for m in AIR_QUALITY.measures}
    with _parsing(Path(data_dir) / _AIR_QUALITY_CSV):
        return _drop_empty_and_sort(_parse_air_quality(Path(data_dir), source_names), AIR_QUALITY)


def _parse_air_quality(data_dir: Path, source_names: dict[str, Measure]) -> pl.DataFrame:
    frame = pl.read_csv(
        data_dir / _AIR_QUALITY_CSV,
        separator=";",
        decimal_comma=True,
        columns=["Date", "Time", *source_names],
        schema_overrides={"Date": pl.Utf8, "Time": pl.Utf8}
        | {name: pl.Float64 for name in source_names},
    )
    parsed = frame.select(
        pl.lit(UCI_STATION_ID).alias("station_id"),
        (pl.col("Date") + " " + pl.col("Time"))
        .str.to_datetime("%d/%m/%Y %H.%M.%S", time_unit="us", time_zone="UTC")
        .alias("timestamp"),
        *(
            pl.when(pl.col(source).is_in(m.sentinels))
            .then(None)
            .otherwise(pl.col(source))
            .alias(m.name)
            for source, m in source_names.items()
        ),
    )
    return parsed


def _tlc_labels(column: str, levels: tuple[str, ...], codes: tuple[int, ...]) -> pl.Expr:
    """A TLC numeric code (stored as a float in places) as its level name; other codes null."""
    mapping = dict(zip(codes, levels, strict=True))
    return pl.col(column).cast(pl.Int64).replace_strict(mapping, default=None, return_dtype=pl.Utf8)


def trip_ids(frame: pl.DataFrame) -> pl.Series:
    """A 16-hex-digit id per TLC trip from the trip's own fields (vendor, pickup and dropoff
    times, zones, distance, total), so the same trip replayed gets the same id.

    >>> from datetime import datetime
    >>> trip = pl.DataFrame({"VendorID": [2], "lpep_pickup_datetime": [datetime(2023, 1, 1, 0, 26, 10)],
    ...     "lpep_dropoff_datetime": [datetime(2023, 1, 1, 0, 37, 11)], "PULocationID": [166],
    ...     "DOLocationID": [143], "trip_distance": [2.58], "total_amount": [24.18]})
    >>> trip_ids(trip).to_list()
    ['23a6915c033b84d0']
    """  # noqa: E501
    parts = (
        "VendorID",
        "lpep_pickup_datetime",
        "lpep_dropoff_datetime",
        "PULocationID",
        "DOLocationID",
        "trip_distance",
        "total_amount",
    )

    def as_text(column: str) -> pl.Expr:
        value = pl.col(column)
        if frame.schema[column] == pl.Datetime:  # spelled out: a cast's format may change
            return value.dt.strftime("%Y-%m-%dT%H:%M:%S")
        return value.cast(pl.Utf8)

    joined = pl.concat_str([as_text(c).fill_null("") for c in parts], separator="|")
    text = frame.select(joined).to_series()
    return pl.Series(
        "trip_id",
        [hashlib.blake2b(t.encode(), digest_size=8).hexdigest() for t in text],
        dtype=pl.Utf8,
    )


def read_zones(data_dir: Path) -> pl.DataFrame:
    """The 265 TLC taxi zones: location_id (string, as the contract keys them), borough,
    zone, service_zone."""
    zones = pl.read_csv(Path(data_dir) / _TAXI_ZONES, schema_overrides={"LocationID": pl.Utf8})
    return zones.rename({"LocationID": "location_id", "Borough": "borough", "Zone": "zone"}).select(
        "location_id", "borough", "zone", "service_zone"
    )


def read_taxi(data_dir: Path, *, zones: Sequence[str] | None = None) -> pl.DataFrame:
    """Every trip of the TLC green-taxi file picked up in January 2023 (NYC time), one row per
    trip in pickup order: the contract's fields, pickup time in UTC, zone ids as strings, TLC
    codes as level names, and `duration_min` = dropoff minus pickup. Nothing is judged here:
    impossible trips (negative fares, zero distances...) are silver's to quarantine.
    """
    trips = pl.read_parquet(Path(data_dir) / _TAXI_TRIPS)
    start, end = (datetime.fromisoformat(t) for t in _TAXI_MONTH)
    trips = trips.filter(pl.col("lpep_pickup_datetime").is_between(start, end, closed="left"))
    if zones is not None:
        trips = trips.filter(pl.col("PULocationID").cast(pl.Utf8).is_in(list(zones)))

    def utc(column: str) -> pl.Expr:
        # January has no DST change; the rules only matter for other months.
        local = pl.col(column).dt.replace_time_zone(_NYC, ambiguous="earliest", non_existent="null")
        return local.dt.convert_time_zone("UTC").dt.cast_time_unit("us")

    duration = pl.col("lpep_dropoff_datetime") - pl.col("lpep_pickup_datetime")
    frame = trips.select(
        pl.col("PULocationID").cast(pl.Utf8).alias("pu_location_id"),
        utc("lpep_pickup_datetime").alias(TAXI.event_time_field),
        trip_ids(trips),
        pl.col("DOLocationID").cast(pl.Utf8).alias("do_location_id"),
        _tlc_labels("VendorID", TAXI_VENDORS, (1, 2)).alias("vendor"),
        pl.col("passenger_count").cast(pl.Int64),
        pl.col("trip_distance").cast(pl.Float64),
        pl.col("fare_amount").cast(pl.Float64),
        pl.col("tip_amount").cast(pl.Float64),
        pl.col("total_amount").cast(pl.Float64),
        _tlc_labels("payment_type", TAXI_PAYMENT_TYPES, (1, 2, 3, 4, 5, 6)).alias("payment_type"),
        _tlc_labels("RatecodeID", TAXI_RATE_CODES, (1, 2, 3, 4, 5, 6, 99)).alias("rate_code"),
        (duration.dt.total_seconds() / 60.0).alias("duration_min"),
    )
    return frame.sort(TAXI.event_time_field, TAXI.key_field, "trip_id")


@dataclass(frozen=True)
class _WeatherReader:
    """The weather contract's replay reader (`periscope.contracts.WEATHER.reader`)."""

    def read(self, data_dir: Path, *, entities: Sequence[str] | None = None) -> pl.DataFrame:
        return read_weather(data_dir, stations=None if entities is None else list(entities))

    def entities(self, data_dir: Path) -> list[str]:
        return [s.station_id for s in load_stations(data_dir)]

    def locations(self, data_dir: Path) -> dict[str, tuple[float, float]]:
        """Each station's (latitude, longitude): the dashboard draws them on a map."""
        return {s.station_id: (s.latitude, s.longitude) for s in load_stations(data_dir)}


@dataclass(frozen=True)
class _AirQualityReader:
    """The air-quality contract's replay reader: one station."""

    def read(self, data_dir: Path, *, entities: Sequence[str] | None = None) -> pl.DataFrame:
        if entities is not None and set(entities) != {UCI_STATION_ID}:
            raise ValueError(f"air_quality has one station: {UCI_STATION_ID}")
        return read_air_quality(data_dir)

    def entities(self, data_dir: Path) -> list[str]:
        return [UCI_STATION_ID]


@dataclass(frozen=True)
class _TaxiReader:
    """The taxi contract's replay reader: entities are the pickup zones of the lookup."""

    def read(self, data_dir: Path, *, entities: Sequence[str] | None = None) -> pl.DataFrame:
        return read_taxi(data_dir, zones=entities)

    def entities(self, data_dir: Path) -> list[str]:
        return read_zones(data_dir)["location_id"].to_list()


WEATHER_READER = _WeatherReader()
AIR_QUALITY_READER = _AirQualityReader()
TAXI_READER = _TaxiReader()


def read_source(
    source_name: str, data_dir: Path, *, stations: Sequence[str] | None = None
) -> pl.DataFrame:
    """The history of one source by contract name, through the reader its contract names;
    `stations` (entity ids) narrows it where the reader can."""
    try:
        contract = get_contract(source_name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    try:
        reader = contract.dataset_reader()
    except ContractError as exc:
        raise ValueError(str(exc)) from None
    return reader.read(data_dir, entities=stations)
