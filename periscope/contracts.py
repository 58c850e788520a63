"""Source contracts: each stream described once, declaratively.

A contract names a stream's Kafka topics, its key and event-time field, and its measures
with unit, valid range and sentinels; every stage reads the contract instead of
hard-coding columns. The wire format on `<source>-raw` is one JSON object per record:
`{"station_id": ..., "timestamp": "<ISO-8601 UTC>", <measure>: <number or null>, ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CONTRACTS",
    "TOPIC_ROLES",
    "Measure",
    "SourceContract",
    "TopicRole",
    "WindowSpec",
    "get_contract",
]

TopicRole = Literal["raw", "dlq", "features", "predictions"]
TOPIC_ROLES: tuple[TopicRole, ...] = ("raw", "dlq", "features", "predictions")


@dataclass(frozen=True)
class Measure:
    """One numeric reading: its wire name, unit, valid range and sentinels.

    `source` is the column in the original dataset; `sentinels` are values the source
    uses for "missing" (UCI's -200), which become nulls, never readings.
    """

    name: str
    unit: str
    valid_min: float
    valid_max: float
    description: str = ""
    source: str | None = None
    required: bool = True
    sentinels: tuple[float, ...] = ()

    def in_range(self, value: float) -> bool:
        return self.valid_min <= value <= self.valid_max


@dataclass(frozen=True)
class WindowSpec:
    """Sliding event-time windows: size, slide and watermark as Spark interval strings."""

    size: str = "5 minutes"
    slide: str = "1 minute"
    watermark: str = "10 minutes"


@dataclass(frozen=True)
class SourceContract:
    """What a stream is: name, key, event time, measures and windowing."""

    name: str
    description: str
    measures: tuple[Measure, ...]
    key_field: str = "station_id"
    event_time_field: str = "timestamp"
    window: WindowSpec = field(default_factory=WindowSpec)
    # A record larger than this is quarantined as oversize (Kafka itself accepts up to 1 MiB).
    max_record_bytes: int = 16 * 1024

    def topic(self, role: TopicRole) -> str:
        """The Kafka topic for one role, e.g. `weather-raw`."""
        return f"{self.name}-{role}"

    @property
    def topics(self) -> dict[TopicRole, str]:
        return {role: self.topic(role) for role in TOPIC_ROLES}

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
    def fields(self) -> tuple[str, ...]:
        """Every field of a record on the wire, in order."""
        return (self.key_field, self.event_time_field, *self.measure_names)

    def table(self, layer: Literal["bronze", "silver", "gold"], entity: str) -> str:
        """A lake table name relative to the lake root, e.g. `silver/weather_features`."""
        return f"{layer}/{self.name}_{entity}"


# Hourly history needs hour-sized windows; live sources keep the 5m/1m/10m default.
_HOURLY = WindowSpec(size="3 hours", slide="1 hour", watermark="6 hours")

WEATHER = SourceContract(
    name="weather",
    description="Hourly weather observations from city stations (Kaggle historical hourly weather, Open-Meteo live).",
    measures=(
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
)

_UCI_MISSING = (-200.0,)


def _uci(name: str, source: str, unit: str, lo: float, hi: float, description: str) -> Measure:
    return Measure(name, unit, lo, hi, description, source=source, sentinels=_UCI_MISSING)


AIR_QUALITY = SourceContract(
    name="air_quality",
    description="Hourly gas-sensor readings of the UCI Air Quality station (De Vito et al., 2008).",
    measures=(
        _uci(
            "co_gt",
            "CO(GT)",
            "mg/m³",
            0.0,
            50.0,
            "true hourly CO concentration (reference analyser)",
        ),
        _uci(
            "pt08_s1_co",
            "PT08.S1(CO)",
            "sensor response",
            0.0,
            3000.0,
            "tin-oxide sensor, nominally CO",
        ),
        _uci("nmhc_gt", "NMHC(GT)", "µg/m³", 0.0, 2000.0, "true non-methane hydrocarbons"),
        _uci("c6h6_gt", "C6H6(GT)", "µg/m³", 0.0, 100.0, "true benzene concentration"),
        _uci(
            "pt08_s2_nmhc",
            "PT08.S2(NMHC)",
            "sensor response",
            0.0,
            3000.0,
            "titania sensor, nominally NMHC",
        ),
        _uci("nox_gt", "NOx(GT)", "ppb", 0.0, 2000.0, "true NOx concentration"),
        _uci(
            "pt08_s3_nox",
            "PT08.S3(NOx)",
            "sensor response",
            0.0,
            3000.0,
            "tungsten-oxide sensor, nominally NOx",
        ),
        _uci("no2_gt", "NO2(GT)", "µg/m³", 0.0, 500.0, "true NO2 concentration"),
        _uci(
            "pt08_s4_no2",
            "PT08.S4(NO2)",
            "sensor response",
            0.0,
            3000.0,
            "tungsten-oxide sensor, nominally NO2",
        ),
        _uci(
            "pt08_s5_o3",
            "PT08.S5(O3)",
            "sensor response",
            0.0,
            3000.0,
            "indium-oxide sensor, nominally O3",
        ),
        _uci("temperature", "T", "°C", -30.0, 50.0, "air temperature"),
        _uci("relative_humidity", "RH", "%", 0.0, 100.0, "relative humidity"),
        _uci("absolute_humidity", "AH", "g/m³", 0.0, 5.0, "absolute humidity"),
    ),
    window=_HOURLY,
)

CONTRACTS: dict[str, SourceContract] = {c.name: c for c in (WEATHER, AIR_QUALITY)}


def get_contract(name: str) -> SourceContract:
    """The contract for a source name; a clear error names the known sources."""
    try:
        return CONTRACTS[name]
    except KeyError:
        known = ", ".join(sorted(CONTRACTS))
        raise KeyError(f"unknown source {name!r}; known sources: {known}") from None
