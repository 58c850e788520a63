"""Open-Meteo client and the live producer's pure logic, against recorded API responses.

Expected numbers are worked out by hand from the sample files in `data/open_meteo`
(1 mph = 0.44704 m/s, 1 kn = 1852/3600 m/s, °C = (°F - 32) * 5/9). No Kafka here: the
loop itself is tested in tests/integration/test_live_producer.py.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ingest.datasets import Station
from ingest.live import (
    LiveError,
    advance_state,
    load_state,
    next_poll_at,
    save_state,
    select_new,
    select_stations,
)
from ingest.open_meteo import (
    CURRENT_VARIABLES,
    CurrentConditions,
    HttpOpenMeteoClient,
    OpenMeteoError,
    convert_unit,
    parse_current,
    parse_forecast_response,
    parse_local_time,
)
from ingest.producer import encode_record
from periscope.contracts import get_contract
from periscope.settings import get_settings
from tests.fixtures.open_meteo_server import (
    Action,
    OpenMeteoReplayServer,
    current_from_hourly,
    load_locations,
)

ADELAIDE = Station("adelaide", "Adelaide", "Australia", -34.76274, 138.64557)
MELBOURNE = Station("melbourne", "Melbourne", "Australia", -37.75, 144.875)
TORONTO = Station("toronto", "Toronto", "Canada", 43.70455, -79.404625)
KORNATI = Station("kornati", "Kornati", "Croatia", 43.760983, 15.362538)
KORNATI_NORTH = Station("kornati_north", "Kornati north", "Croatia", 43.90158, 15.409091)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def data_dir() -> Path:
    return get_settings().data_dir


def sample(data_dir: Path, name: str) -> Any:
    return json.loads((data_dir / "open_meteo" / name).read_text(encoding="utf-8"))


def as_current(location: dict[str, Any], hour: int) -> dict[str, Any]:
    """A recorded hourly location turned into the answer the API gives for `current=`."""
    head = {k: v for k, v in location.items() if k not in ("hourly", "hourly_units", "daily")}
    return head | current_from_hourly(location, hour, CURRENT_VARIABLES)


# --- units and times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "from_unit", "to_unit", "expected"),
    [
        (32.6, "°F", "°C", 0.333333),  # Toronto current temperature
        (32.0, "°F", "°C", 0.0),  # Toronto hourly[0]
        (-40.0, "°F", "°C", -40.0),
        (20.3, "°C", "°C", 20.3),  # Adelaide hourly[0]
        (13.2, "mp/h", "m/s", 5.900928),  # Toronto current wind
        (13.2, "mph", "m/s", 5.900928),
        (4.1, "km/h", "m/s", 1.138889),  # Melbourne hourly[0]
        (36.0, "km/h", "m/s", 10.0),
        (11.2, "kn", "m/s", 5.761778),  # Kornati archive hourly[0]
        (1.27, "m/s", "m/s", 1.27),  # Adelaide hourly[0]
        (1017.0, "hPa", "hPa", 1017.0),  # Kornati archive pressure_msl[0]
        (33, "%", "%", 33.0),  # Adelaide humidity[0]
        (315, "°", "°", 315.0),  # Kornati forecast direction[0]
    ],
)
def test_units_in_the_samples_convert_to_the_contract(value, from_unit, to_unit, expected):
    assert convert_unit(value, from_unit=from_unit, to_unit=to_unit) == pytest.approx(
        expected, abs=1e-6
    )


def test_contract_units_are_the_conversion_targets():
    weather = get_contract("weather")
    units = {m.name: m.unit for m in weather.measures}
    assert units == {
        "temperature": "°C",
        "humidity": "%",
        "pressure": "hPa",
        "wind_speed": "m/s",
        "wind_direction": "°",
    }


@pytest.mark.parametrize(("unit", "to_unit"), [("bft", "m/s"), ("K", "°C"), ("inHg", "hPa")])
def test_unknown_unit_is_an_error_naming_it(unit, to_unit):
    with pytest.raises(OpenMeteoError, match=f"unknown unit '{unit}'"):
        convert_unit(1.0, from_unit=unit, to_unit=to_unit)


@pytest.mark.parametrize(
    ("text", "offset", "expected"),
    [
        ("2026-03-05T21:00", -18000, utc(2026, 3, 6, 2, 0)),  # Toronto, UTC-5
        ("2025-01-10T00:00", 34200, utc(2025, 1, 9, 14, 30)),  # Adelaide, UTC+9:30
        ("2026-07-08T01:00", 7200, utc(2026, 7, 7, 23, 0)),  # Kornati, UTC+2
        ("2025-10-25T11:30", 0, utc(2025, 10, 25, 11, 30)),  # Melbourne answer in GMT
    ],
)
def test_local_times_become_utc(text, offset, expected):
    parsed = parse_local_time(text, offset)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


# --- parsing recorded responses ------------------------------------------------------------------


def test_toronto_recorded_current_block(data_dir):
    body = sample(data_dir, "forecast_toronto_current_hourly_daily.json")
    [obs] = parse_forecast_response(body, [TORONTO])
    assert obs.station_id == "toronto"
    assert obs.timestamp == utc(2026, 3, 6, 2, 0)
    assert obs.temperature == pytest.approx(0.333333, abs=1e-6)
    assert obs.wind_speed == pytest.approx(5.900928, abs=1e-6)
    # That request did not ask for humidity, pressure or direction: absent, so null.
    assert (obs.humidity, obs.pressure, obs.wind_direction) == (None, None, None)


@pytest.mark.parametrize(
    ("name", "hour", "expected"),
    [
        (
            "archive_adelaide_hourly.json",
            0,
            CurrentConditions("s", utc(2025, 1, 9, 14, 30), 20.3, 33.0, None, 1.27, None),
        ),
        (
            "forecast_melbourne_hourly_daily.json",
            3,
            CurrentConditions("s", utc(2025, 10, 25, 3, 0), 17.8, 56.0, None, 2.027778, None),
        ),
        (
            "forecast_kornati_wind.json",
            1,
            CurrentConditions("s", utc(2026, 7, 7, 23, 0), None, None, None, 0.977444, 90.0),
        ),
        (
            "forecast_toronto_current_hourly_daily.json",
            0,
            CurrentConditions("s", utc(2026, 3, 4, 5, 0), 0.0, None, None, 1.78816, 251.0),
        ),
    ],
)
def test_recorded_hours_parse_with_their_own_units(data_dir, name, hour, expected):
    obs = parse_current(as_current(sample(data_dir, name), hour), "s")
    assert obs.timestamp == expected.timestamp
    for measure in get_contract("weather").measure_names:
        want = getattr(expected, measure)
        got = getattr(obs, measure)
        assert got == (None if want is None else pytest.approx(want, abs=1e-6)), measure


def test_array_answer_maps_locations_in_order_with_sea_level_pressure_fallback(data_dir):
    recorded = sample(data_dir, "archive_kornati_2locations.json")
    body = [as_current(location, 0) for location in recorded]
    first, second = parse_forecast_response(body, [KORNATI, KORNATI_NORTH])
    assert (first.station_id, second.station_id) == ("kornati", "kornati_north")
    assert first.timestamp == second.timestamp == utc(2025, 6, 15, 0, 0)
    assert (first.temperature, second.temperature) == (25.3, 25.0)
    assert (first.wind_direction, second.wind_direction) == (39.0, 46.0)
    assert first.wind_speed == pytest.approx(5.761778, abs=1e-6)  # 11.2 kn
    assert second.wind_speed == pytest.approx(5.607444, abs=1e-6)  # 10.9 kn
    # No surface_pressure in the sample (served as null): pressure_msl is used.
    assert body[0]["current"]["surface_pressure"] is None
    assert (first.pressure, second.pressure) == (1017.0, 1017.0)
    assert first.humidity is None


def test_surface_pressure_is_preferred_over_sea_level(data_dir):
    location = as_current(sample(data_dir, "archive_kornati_2locations.json")[0], 0)
    location["current"]["surface_pressure"] = 1009.4
    assert parse_current(location, "k").pressure == 1009.4


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body: body[:1], "asked for 2 locations, the response has 1"),
        (lambda body: body[0], "asked for 2 locations, the response has 1"),
        (lambda body: [*body, body[1]], "asked for 2 locations, the response has 3"),
        (lambda body: [body[1], body[0]], "location 0 of the response says location_id 1"),
        (lambda body: [{"error": True, "reason": "boom"}, body[1]], r"no `current`.*boom"),
        (lambda body: [{**body[0], "utc_offset_seconds": None}, body[1]], "utc_offset_seconds"),
        (lambda body: ["text", body[1]], "expected a location object"),
    ],
)
def test_malformed_bodies_are_clear_errors(data_dir, mutate, message):
    recorded = sample(data_dir, "archive_kornati_2locations.json")
    body = mutate([as_current(location, 0) for location in recorded])
    with pytest.raises(OpenMeteoError, match=message) as caught:
        parse_forecast_response(body, [KORNATI, KORNATI_NORTH])
    assert caught.value.retryable


def test_a_value_without_a_unit_or_not_a_number_is_an_error(data_dir):
    location = as_current(sample(data_dir, "archive_adelaide_hourly.json"), 0)
    del location["current_units"]["wind_speed_10m"]
    with pytest.raises(OpenMeteoError, match="no unit for wind_speed_10m"):
        parse_current(location, "a")
    location = as_current(sample(data_dir, "archive_adelaide_hourly.json"), 0)
    location["current"]["temperature_2m"] = "20.3"
    with pytest.raises(OpenMeteoError, match="temperature_2m is not a number"):
        parse_current(location, "a")


def test_record_is_the_wire_format():
    obs = CurrentConditions(
        "toronto",
        datetime(2026, 3, 5, 21, 0, tzinfo=timezone(timedelta(hours=-5))),
        0.5,
        80.0,
        1001.5,
        5.9,
        None,
    )
    record = obs.to_record()
    assert tuple(record) == get_contract("weather").wire_fields
    assert encode_record(record) == (
        b'{"station_id":"toronto","timestamp":"2026-03-06T02:00:00Z","temperature":0.5,'
        b'"humidity":80.0,"pressure":1001.5,"wind_speed":5.9,"wind_direction":null}'
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        CurrentConditions("toronto", datetime(2026, 3, 5, 21, 0))


# --- the HTTP client against the replay server ----------------------------------------------------


@pytest.fixture
def server(data_dir):
    with OpenMeteoReplayServer(
        data_dir,
        samples=("archive_adelaide_hourly.json", "forecast_melbourne_hourly_daily.json"),
        timeout_delay_s=3.0,
    ) as running:
        yield running


def client_for(server: OpenMeteoReplayServer, max_attempts: int = 5) -> HttpOpenMeteoClient:
    return HttpOpenMeteoClient(server.url, timeout_s=0.5, max_attempts=max_attempts, backoff_s=0.01)


def test_one_request_for_all_stations_in_the_documented_format(server):
    with client_for(server) as client:
        adelaide, melbourne = client.current([ADELAIDE, MELBOURNE])
    [request] = server.requests
    assert request.path == "/v1/forecast"
    assert request.query == {
        "latitude": "-34.76274,-37.75",
        "longitude": "138.64557,144.875",
        "current": "temperature_2m,relative_humidity_2m,surface_pressure,pressure_msl,"
        "wind_speed_10m,wind_direction_10m",
        "timezone": "UTC",
    }
    assert (adelaide.timestamp, adelaide.temperature, adelaide.wind_speed) == (
        utc(2025, 1, 9, 14, 30),
        20.3,
        1.27,
    )
    assert melbourne.timestamp == utc(2025, 10, 25, 0, 0)
    assert melbourne.wind_speed == pytest.approx(1.138889, abs=1e-6)  # 4.1 km/h


def test_each_poll_advances_the_hour_and_repeat_serves_it_again(server):
    server.script("ok", "repeat", "ok")
    with client_for(server) as client:
        stamps = [client.current([ADELAIDE])[0].timestamp for _ in range(3)]
    assert stamps == [utc(2025, 1, 9, 14, 30), utc(2025, 1, 9, 14, 30), utc(2025, 1, 9, 15, 30)]
    assert server.served_hours == [0, 0, 1]


@pytest.mark.parametrize("failure", ["http_500", "http_503", "http_429", "timeout"])
def test_transient_failures_are_retried(server, failure: Action):
    server.script(failure, failure)
    with client_for(server, max_attempts=3) as client:
        [obs] = client.current([ADELAIDE])
    assert len(server.requests) == 3
    assert obs.timestamp == utc(2025, 1, 9, 14, 30)  # the failures did not use up hours


def test_mixed_failures_then_success_within_max_attempts(server):
    server.script("http_500", "http_503", "http_429", "timeout")
    with client_for(server, max_attempts=5) as client:
        [obs] = client.current([ADELAIDE])
    assert len(server.requests) == 5
    assert obs.temperature == 20.3


def test_client_errors_other_than_429_are_not_retried(server):
    server.script("http_400")
    with client_for(server) as client, pytest.raises(OpenMeteoError) as caught:
        client.current([ADELAIDE])
    assert len(server.requests) == 1
    assert "HTTP 400" in str(caught.value) and "Latitude must be in range" in str(caught.value)
    assert not caught.value.retryable


@pytest.mark.parametrize("failure", ["malformed_json", "missing_current", "short_array"])
def test_malformed_bodies_are_retried_then_raise(server, failure: Action):
    server.outage(3, kinds=(failure,))
    with client_for(server, max_attempts=3) as client, pytest.raises(OpenMeteoError) as caught:
        client.current([ADELAIDE, MELBOURNE])
    assert len(server.requests) == 3
    assert "gave up after 3 attempts" in str(caught.value)


def test_a_malformed_body_then_a_good_one_succeeds(server):
    server.script("malformed_json")
    with client_for(server) as client:
        adelaide, melbourne = client.current([ADELAIDE, MELBOURNE])
    assert len(server.requests) == 2
    assert (adelaide.humidity, melbourne.humidity) == (33.0, 61.0)


def test_an_outage_longer_than_the_retries_fails_the_call_not_the_client(server):
    server.outage(4, kinds=("http_503", "http_500"))
    with client_for(server, max_attempts=3) as client:
        with pytest.raises(OpenMeteoError, match=r"HTTP 503.*gave up after 3 attempts"):
            client.current([ADELAIDE])
        [obs] = client.current([ADELAIDE])  # one more 500, then the API is back
    assert len(server.requests) == 5
    assert obs.timestamp == utc(2025, 1, 9, 14, 30)


def test_connection_refused_is_retried_then_raises():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpOpenMeteoClient(
        f"http://127.0.0.1:{port}", timeout_s=0.5, max_attempts=2, backoff_s=0.01
    )
    with client, pytest.raises(OpenMeteoError, match=r"cannot reach .*gave up after 2 attempts"):
        client.current([ADELAIDE])


def test_server_answers_one_location_with_an_object(server, data_dir):
    import httpx

    params = {"latitude": "1", "longitude": "2", "current": "temperature_2m", "timezone": "UTC"}
    single = httpx.get(f"{server.url}/v1/forecast", params=params).json()
    assert isinstance(single, dict) and "location_id" not in single
    assert single["current"] == {
        "time": "2025-01-10T00:00",
        "interval": 900,
        "temperature_2m": 20.3,
    }
    bad = httpx.get(f"{server.url}/v1/forecast", params={"latitude": "1,2", "longitude": "3"})
    assert bad.status_code == 400 and bad.json()["error"] is True
    assert len(load_locations(data_dir, ["archive_kornati_2locations.json"])) == 2


# --- the live producer's pure logic ---------------------------------------------------------------


def obs_at(station: str, hour: int) -> CurrentConditions:
    return CurrentConditions(station, utc(2025, 1, 10, hour), 20.0, 50.0, 1010.0, 3.0, 180.0)


def test_dedupe_against_state():
    state = {"adelaide": utc(2025, 1, 10, 5), "melbourne": utc(2025, 1, 10, 5)}
    observations = [
        obs_at("adelaide", 5),  # the same timestamp as last sent: skipped
        obs_at("melbourne", 4),  # older than last sent: skipped
        obs_at("toronto", 1),  # never sent: new
        obs_at("melbourne", 6),  # newer: new
        obs_at("toronto", 1),  # repeated within the batch: once
    ]
    new, skipped = select_new(observations, state)
    assert [(o.station_id, o.timestamp.hour) for o in new] == [("melbourne", 6), ("toronto", 1)]
    assert skipped == 3


def test_state_only_moves_forward():
    state = {"adelaide": utc(2025, 1, 10, 5)}
    new = advance_state(state, [obs_at("adelaide", 3), obs_at("toronto", 2), obs_at("toronto", 4)])
    assert new == {"adelaide": utc(2025, 1, 10, 5), "toronto": utc(2025, 1, 10, 4)}
    assert state == {"adelaide": utc(2025, 1, 10, 5)}  # the input is left alone


def test_state_file_round_trip_is_atomic(tmp_path):
    path = tmp_path / "ingest" / "live_state.json"
    assert load_state(path) == {}
    state = {"melbourne": utc(2025, 10, 25, 3), "adelaide": utc(2025, 1, 9, 14, 30)}
    save_state(path, state)
    save_state(path, state | {"toronto": utc(2026, 3, 6, 2)})
    assert load_state(path) == state | {"toronto": utc(2026, 3, 6, 2)}
    assert json.loads(path.read_text())["last_sent"]["adelaide"] == "2025-01-09T14:30:00Z"
    assert [p.name for p in path.parent.iterdir()] == ["live_state.json"]  # no temp files left


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 1}',
        '{"version": 2, "last_sent": {}}',
        '{"version": 1, "last_sent": {"a": "yesterday"}}',
        '{"version": 1, "last_sent": {"a": "2025-01-10T05:00:00"}}',  # no zone
        "[]",
    ],
)
def test_an_unreadable_state_file_stops_the_producer(tmp_path, text):
    path = tmp_path / "live_state.json"
    path.write_text(text)
    with pytest.raises(LiveError, match="cannot read the live state file"):
        load_state(path)


def test_polls_keep_to_a_fixed_grid():
    # Each poll takes 7 s of a 60 s interval: the next start stays on the grid, no drift.
    slot, starts = 1000.0, []
    for _ in range(4):
        starts.append(slot)
        slot = next_poll_at(slot, 60.0, now=slot + 7.0)
    assert starts == [1000.0, 1060.0, 1120.0, 1180.0]
    # A poll that took no time at all still waits a whole interval.
    assert next_poll_at(1000.0, 60.0, now=1000.0) == 1060.0
    # A poll that overran two intervals skips the missed slots instead of bursting.
    assert next_poll_at(1000.0, 60.0, now=1130.0) == 1180.0
    assert next_poll_at(1000.0, 60.0, now=1120.0) == 1120.0


def test_station_selection_from_settings():
    stations = [ADELAIDE, MELBOURNE, TORONTO]
    assert select_stations(stations, "") == stations
    assert select_stations(stations, " toronto, adelaide ") == [ADELAIDE, TORONTO]
    with pytest.raises(LiveError, match="unknown station id.*perth"):
        select_stations(stations, "adelaide,perth")
