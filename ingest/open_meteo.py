"""Open-Meteo current conditions for many stations, behind a small interface.

`OpenMeteoClient` is what the live producer depends on; `HttpOpenMeteoClient` is the real
one (one `/v1/forecast` request for every station, retries with exponential backoff), and
tests swap in a local replay server of recorded responses. Parsing and unit conversion are
plain functions: values are converted to the units of the `weather` contract using the
`current_units` block of each response, never assumed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from periscope import PeriscopeError
from periscope.contracts import get_contract

__all__ = [
    "CURRENT_VARIABLES",
    "CurrentConditions",
    "HttpOpenMeteoClient",
    "Location",
    "OpenMeteoClient",
    "OpenMeteoError",
    "convert_unit",
    "parse_current",
    "parse_forecast_response",
    "parse_local_time",
]

log = logging.getLogger(__name__)

WEATHER = get_contract("weather")

# Contract measure -> Open-Meteo `current` variables, best first. Surface pressure is what a
# station barometer reads; sea-level pressure is the fallback when a model has no surface value.
_SOURCES: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature_2m",),
    "humidity": ("relative_humidity_2m",),
    "pressure": ("surface_pressure", "pressure_msl"),
    "wind_speed": ("wind_speed_10m",),
    "wind_direction": ("wind_direction_10m",),
}
CURRENT_VARIABLES: tuple[str, ...] = tuple(v for names in _SOURCES.values() for v in names)
"""The variables requested as `current=`; the order is the API's, not significant."""

# Target unit (as the contract spells it) -> Open-Meteo unit string -> converter.
_MPH = 0.44704  # exact: 1 mile = 1609.344 m
_KNOT = 1852 / 3600  # exact: 1 nautical mile = 1852 m
_CONVERTERS: dict[str, dict[str, Callable[[float], float]]] = {
    "°C": {"°C": lambda v: v, "°F": lambda v: (v - 32.0) * 5.0 / 9.0},
    "%": {"%": lambda v: v},
    "hPa": {"hPa": lambda v: v},
    "m/s": {
        "m/s": lambda v: v,
        "km/h": lambda v: v / 3.6,
        "mp/h": lambda v: v * _MPH,  # Open-Meteo's spelling of mph
        "mph": lambda v: v * _MPH,
        "kn": lambda v: v * _KNOT,
    },
    "°": {"°": lambda v: v},
}


class OpenMeteoError(PeriscopeError):
    """Open-Meteo did not give usable current conditions; the message says why.

    `retryable` marks failures that are usually transient (connection errors, timeouts,
    HTTP 429 and 5xx, and malformed bodies, which in practice come from proxies and
    truncated responses rather than from the API itself).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Location(Protocol):
    """What the client needs of a station (`ingest.datasets.Station` has it)."""

    @property
    def station_id(self) -> str: ...

    @property
    def latitude(self) -> float: ...

    @property
    def longitude(self) -> float: ...


@dataclass(frozen=True)
class CurrentConditions:
    """One station's current observation in the `weather` contract's units (None = missing)."""

    station_id: str
    timestamp: datetime  # timezone-aware, UTC
    temperature: float | None = None  # °C
    humidity: float | None = None  # %
    pressure: float | None = None  # hPa
    wind_speed: float | None = None  # m/s
    wind_direction: float | None = None  # °

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError(f"{self.station_id}: timestamp must be timezone-aware")

    def to_record(self) -> dict[str, Any]:
        """The record on `weather-raw`: station id, `YYYY-MM-DDTHH:MM:SSZ`, then each measure."""
        return {
            WEATHER.key_field: self.station_id,
            WEATHER.event_time_field: self.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **{name: getattr(self, name) for name in WEATHER.measure_names},
        }


class OpenMeteoClient(Protocol):
    """Anything that returns the current conditions of the given stations, one per station."""

    def current(self, stations: Sequence[Location]) -> list[CurrentConditions]: ...


# --- pure functions: units, times, parsing ---------------------------------------------------


def convert_unit(value: float, *, from_unit: str, to_unit: str) -> float:
    """`value` in Open-Meteo's `from_unit` expressed in the contract's `to_unit`.

    >>> round(convert_unit(13.2, from_unit="mp/h", to_unit="m/s"), 6)
    5.900928
    >>> convert_unit(50.0, from_unit="°F", to_unit="°C")
    10.0
    """
    known = _CONVERTERS.get(to_unit)
    if known is None:
        raise OpenMeteoError(f"no conversion to {to_unit!r} is known")
    converter = known.get(from_unit)
    if converter is None:
        raise OpenMeteoError(
            f"unknown unit {from_unit!r} for a value in {to_unit}; "
            f"known: {', '.join(sorted(known))}"
        )
    return converter(float(value))


def parse_local_time(text: str, utc_offset_seconds: int) -> datetime:
    """An Open-Meteo time (`YYYY-MM-DDTHH:MM`, local to `utc_offset_seconds`) as a UTC datetime.

    >>> parse_local_time("2026-03-05T21:00", -18000).isoformat()
    '2026-03-06T02:00:00+00:00'
    """
    try:
        local = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise OpenMeteoError(f"unreadable time {text!r}", retryable=True) from exc
    if local.tzinfo is None:
        local = local.replace(tzinfo=timezone(timedelta(seconds=utc_offset_seconds)))
    return local.astimezone(UTC)


def _number(value: Any, variable: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpenMeteoError(f"current.{variable} is not a number: {value!r}", retryable=True)
    return float(value)


def _measure(current: Mapping[str, Any], units: Mapping[str, Any], measure: str) -> float | None:
    """The first non-null source variable of a measure, converted; None if none has a value."""
    for variable in _SOURCES[measure]:
        value = _number(current.get(variable), variable)
        if value is None:
            continue
        unit = units.get(variable)
        if not isinstance(unit, str):
            raise OpenMeteoError(f"current_units has no unit for {variable}", retryable=True)
        return convert_unit(value, from_unit=unit, to_unit=WEATHER.measure(measure).unit)
    return None


def parse_current(location: Mapping[str, Any], station_id: str) -> CurrentConditions:
    """One location object of a `/v1/forecast` answer as `CurrentConditions`.

    A variable that is absent or null becomes None (the contract decides downstream whether
    the record is usable); a missing `current`, `current_units`, time or offset is an error.
    """
    if not isinstance(location, Mapping):
        raise OpenMeteoError(
            f"{station_id}: expected a location object, got {type(location).__name__}",
            retryable=True,
        )
    current, units = location.get("current"), location.get("current_units")
    if not isinstance(current, Mapping) or not isinstance(units, Mapping):
        reason = location.get("reason")
        raise OpenMeteoError(
            f"{station_id}: response has no `current` and `current_units` blocks"
            + (f" (API says: {reason})" if reason else ""),
            retryable=True,
        )
    offset = location.get("utc_offset_seconds")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise OpenMeteoError(f"{station_id}: response has no utc_offset_seconds", retryable=True)
    time_text = current.get("time")
    if not isinstance(time_text, str):
        raise OpenMeteoError(f"{station_id}: current block has no time", retryable=True)
    return CurrentConditions(
        station_id=station_id,
        timestamp=parse_local_time(time_text, offset),
        **{name: _measure(current, units, name) for name in _SOURCES},
    )


def parse_forecast_response(body: Any, stations: Sequence[Location]) -> list[CurrentConditions]:
    """A decoded `/v1/forecast` body for `stations` (in request order), one result per station.

    Open-Meteo answers one location with an object and several with an array in request
    order, where every element after the first carries its `location_id` (its index).
    """
    locations = body if isinstance(body, list) else [body]
    if len(locations) != len(stations):
        raise OpenMeteoError(
            f"asked for {len(stations)} locations, the response has {len(locations)}",
            retryable=True,
        )
    results = []
    for index, (location, station) in enumerate(zip(locations, stations, strict=True)):
        if isinstance(location, Mapping):
            location_id = location.get("location_id", index)
            if location_id != index:
                raise OpenMeteoError(
                    f"location {index} of the response says location_id {location_id!r}",
                    retryable=True,
                )
        results.append(parse_current(location, station.station_id))
    return results


# --- the HTTP client ---------------------------------------------------------------------------


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OpenMeteoError) and exc.retryable


def _reason(response: httpx.Response) -> str:
    """The API's own `reason` when the body is its JSON error object, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or "empty body"
    if isinstance(body, Mapping) and body.get("reason"):
        return str(body["reason"])
    return response.text[:200].strip()


class HttpOpenMeteoClient:
    """The real Open-Meteo forecast API: one request for all stations, retried with backoff.

    Connection errors, timeouts, HTTP 429 and 5xx are retried up to `max_attempts` times in
    all, waiting `backoff_s`, then twice as long each time. Other 4xx answers are not retried
    (the request itself is wrong). Malformed bodies are retried too, because they almost
    always come from a proxy or a cut connection, not from the API. Every failure surfaces
    as `OpenMeteoError` naming the last reason.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = base_url.rstrip("/") + "/v1/forecast"
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout_s, headers={"User-Agent": "periscope-ingest"}
        )

    def current(self, stations: Sequence[Location]) -> list[CurrentConditions]:
        """Current conditions of every station, in the order given."""
        if not stations:
            return []
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_s, min=0),
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._fetch_once, stations)
        except OpenMeteoError as exc:
            if not exc.retryable:
                raise
            attempts = retrying.statistics.get("attempt_number", self.max_attempts)
            raise OpenMeteoError(f"{exc} (gave up after {attempts} attempts)") from exc

    def _fetch_once(self, stations: Sequence[Location]) -> list[CurrentConditions]:
        params = {
            "latitude": ",".join(str(s.latitude) for s in stations),
            "longitude": ",".join(str(s.longitude) for s in stations),
            "current": ",".join(CURRENT_VARIABLES),
            "timezone": "UTC",
        }
        try:
            response = self._client.get(self.url, params=params, timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            raise OpenMeteoError(
                f"no answer from {self.url} within {self.timeout_s} s ({type(exc).__name__})",
                retryable=True,
            ) from exc
        except httpx.TransportError as exc:
            raise OpenMeteoError(
                f"cannot reach {self.url}: {exc or type(exc).__name__}", retryable=True
            ) from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise OpenMeteoError(
                f"HTTP {status} from {self.url}: {_reason(response)}", retryable=True
            )
        if status != 200:
            raise OpenMeteoError(f"HTTP {status} from {self.url}: {_reason(response)}")
        try:
            body = response.json()
        except ValueError as exc:
            raise OpenMeteoError(
                f"the body from {self.url} is not JSON: {response.text[:80]!r}", retryable=True
            ) from exc
        return parse_forecast_response(body, stations)

    def _log_retry(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "Open-Meteo attempt %d/%d failed (%s); retrying in %.2f s",
            state.attempt_number,
            self.max_attempts,
            error,
            wait,
        )

    def close(self) -> None:
        """Close the HTTP connection pool if this client created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
