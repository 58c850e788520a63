"""The live producer on real Kafka, polling the Open-Meteo replay server through an outage.

Station ids carry a per-run tag, so records other tests put on `weather-raw` are ignored.
Expected values are worked out here from the sample files with the conversions written
out (km/h / 3.6, kn * 1852 / 3600), independently of `ingest.open_meteo`.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from ingest.datasets import Station
from ingest.live import LiveReport, run_live
from ingest.open_meteo import HttpOpenMeteoClient
from periscope.settings import Settings
from periscope.topics import create_topics
from tests.fixtures.open_meteo_server import OpenMeteoReplayServer

pytestmark = pytest.mark.integration

TOPIC = "weather-raw"
# Requested location i is served from sample location i: Adelaide (m/s, UTC+9:30),
# Melbourne (km/h, GMT) and the first Kornati archive point (kn, pressure_msl, GMT).
SAMPLES = (
    "archive_adelaide_hourly.json",
    "forecast_melbourne_hourly_daily.json",
    "archive_kornati_2locations.json",
)
WIND_TO_MS = {"adelaide": 1.0, "melbourne": 1 / 3.6, "kornati": 1852 / 3600}


@pytest.fixture
def stations() -> list[Station]:
    tag = uuid.uuid4().hex[:8]
    return [
        Station(f"live_{tag}_adelaide", "Adelaide", "Australia", -34.76274, 138.64557),
        Station(f"live_{tag}_melbourne", "Melbourne", "Australia", -37.75, 144.875),
        Station(f"live_{tag}_kornati", "Kornati", "Croatia", 43.760983, 15.362538),
    ]


@pytest.fixture
def data_dir(services: Settings) -> Path:
    create_topics(services)  # weather-raw must exist: the broker does not auto-create topics
    return services.data_dir


def end_offsets(settings: Settings) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        partitions = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC)]
        return dict(consumer.end_offsets(partitions))
    finally:
        consumer.close()


def read_since(
    settings: Settings, begin: dict[TopicPartition, int], stations: list[Station]
) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, decoded value) of every record of `stations` written after `begin`."""
    ours = {s.station_id for s in stations}
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    try:
        consumer.assign(list(begin))
        end = consumer.end_offsets(list(begin))
        for partition, offset in begin.items():
            consumer.seek(partition, offset)
        remaining = {p for p in begin if end[p] > begin[p]}
        found: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while remaining and time.monotonic() < deadline:
            for partition, batch in consumer.poll(timeout_ms=500).items():
                for message in batch:
                    value = json.loads(message.value)
                    if value["station_id"] in ours:
                        found.append((message.key, value))
                if consumer.position(partition) >= end[partition]:
                    remaining.discard(partition)
        assert not remaining, f"could not read {TOPIC} up to {end}"
        return found
    finally:
        consumer.close()


def expected_record(data_dir: Path, station: Station, index: int, hour: int) -> dict[str, Any]:
    body = json.loads((data_dir / "open_meteo" / SAMPLES[index]).read_text(encoding="utf-8"))
    location = body[0] if isinstance(body, list) else body
    hourly = location["hourly"]
    local = datetime.fromisoformat(hourly["time"][hour])
    stamp = local - timedelta(seconds=location["utc_offset_seconds"])
    city = station.station_id.rsplit("_", 1)[1]

    def at(variable: str) -> float | None:
        series = hourly.get(variable)
        return None if series is None else float(series[hour])

    wind = at("wind_speed_10m")
    return {
        "station_id": station.station_id,
        "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "temperature": at("temperature_2m"),  # °C in all three samples
        "humidity": at("relative_humidity_2m"),
        "pressure": at("pressure_msl"),  # no sample has surface_pressure
        "wind_speed": None if wind is None else wind * WIND_TO_MS[city],
        "wind_direction": at("wind_direction_10m"),
    }


def assert_records_match(
    records: list[tuple[bytes, dict[str, Any]]], expected: list[dict[str, Any]]
) -> None:
    by_key = {(v["station_id"], v["timestamp"]): v for _, v in records}
    assert len(by_key) == len(records), "a (station_id, timestamp) was sent twice"
    assert sorted(by_key) == sorted((e["station_id"], e["timestamp"]) for e in expected)
    for key, value in records:
        assert key == value["station_id"].encode()
    for want in expected:
        got = by_key[(want["station_id"], want["timestamp"])]
        assert got.keys() == want.keys()
        for field, value in want.items():
            assert got[field] == (value if not isinstance(value, float) else pytest.approx(value))


def test_live_producer_rides_out_an_outage_and_never_sends_twice(
    services, data_dir, stations, tmp_path
):
    state_path = tmp_path / "live_state.json"
    begin = end_offsets(services)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    with OpenMeteoReplayServer(data_dir, samples=SAMPLES, timeout_delay_s=2.0) as server:
        # Polls: hour 0, hour 1, three failed polls (two attempts each), hour 1 again, hour 2.
        server.script("ok", "ok")
        server.outage(
            6,
            kinds=(
                "http_503",
                "http_500",
                "http_429",
                "timeout",
                "malformed_json",
                "missing_current",
            ),
        )
        server.script("repeat", "ok")
        client = HttpOpenMeteoClient(server.url, timeout_s=0.5, max_attempts=2, backoff_s=0.01)
        with client:
            report = run_live(
                services,
                client=client,
                stations=stations,
                interval_s=0.05,
                max_polls=7,
                state_path=state_path,
                sleep=sleep,
            )
        assert len(server.requests) == 10
        assert server.served_hours == [0, 1, 1, 2]

    assert report == LiveReport(polls=7, sent=9, duplicates_skipped=3, failed_polls=3)
    # Waits are measured from a fixed grid: never more than one interval, whatever a poll took.
    assert len(sleeps) == 6 and all(0.0 <= s <= 0.05 for s in sleeps)
    expected = [
        expected_record(data_dir, station, i, hour)
        for i, station in enumerate(stations)
        for hour in (0, 1, 2)
    ]
    assert_records_match(read_since(services, begin, stations), expected)
    # Spot checks by hand: Adelaide hour 0 is 2025-01-10T00:00 at UTC+9:30; Kornati 11.2 kn.
    assert expected[0]["timestamp"] == "2025-01-09T14:30:00Z"
    assert expected[6]["wind_speed"] == pytest.approx(5.761778, abs=1e-6)
    saved = json.loads(state_path.read_text())["last_sent"]
    assert saved == {e["station_id"]: e["timestamp"] for e in expected[2::3]}

    # A restart with the same state replays hours 0-3: only hour 3 is new.
    with (
        OpenMeteoReplayServer(data_dir, samples=SAMPLES) as server,
        HttpOpenMeteoClient(server.url, timeout_s=0.5, backoff_s=0.01) as client,
    ):
        again = run_live(
            services,
            client=client,
            stations=stations,
            interval_s=0.05,
            max_polls=4,
            state_path=state_path,
            sleep=lambda _s: None,
        )
    assert again == LiveReport(polls=4, sent=3, duplicates_skipped=9, failed_polls=0)
    expected += [expected_record(data_dir, station, i, 3) for i, station in enumerate(stations)]
    assert_records_match(read_since(services, begin, stations), expected)


def test_ctrl_c_stops_cleanly_and_keeps_what_was_sent(services, data_dir, stations, tmp_path):
    state_path = tmp_path / "live_state.json"
    begin = end_offsets(services)

    waits: list[float] = []

    def wait_then_interrupt(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt  # Ctrl-C while waiting for the third poll

    with (
        OpenMeteoReplayServer(data_dir, samples=SAMPLES) as server,
        HttpOpenMeteoClient(server.url, timeout_s=0.5, backoff_s=0.01) as client,
    ):
        report = run_live(
            services,
            client=client,
            stations=stations[:2],
            interval_s=0.05,
            state_path=state_path,
            sleep=wait_then_interrupt,
        )
    assert report == LiveReport(polls=2, sent=4, duplicates_skipped=0, failed_polls=0)
    records = read_since(services, begin, stations)
    assert sorted(v["timestamp"] for _, v in records if "adelaide" in v["station_id"]) == [
        "2025-01-09T14:30:00Z",
        "2025-01-09T15:30:00Z",
    ]
    saved = json.loads(state_path.read_text())["last_sent"]
    assert saved[stations[0].station_id] == "2025-01-09T15:30:00Z"
    assert saved[stations[1].station_id] == "2025-10-25T01:00:00Z"
