"""Malformed records are malformed in exactly their way; the replay's pure parts (no Kafka)."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from ingest.chaos import (
    MALFORMED_KINDS,
    OUT_OF_BAND_SENTINEL,
    malformed_record,
    malformed_records,
    produce_chaos,
)
from ingest.datasets import read_air_quality
from ingest.replay import (
    _paced,
    _Tally,
    build_messages,
    pacing_offsets,
    prepare_frame,
    rebase,
    replay,
)
from periscope.contracts import AIR_QUALITY, CONTRACTS, WEATHER, SourceContract
from periscope.settings import Settings


def classify_damage(contract: SourceContract, value: bytes) -> set[str]:
    """Every way `value` breaks the contract, named like `MALFORMED_KINDS` (empty = valid)."""
    found = {"oversize"} if len(value) > contract.max_record_bytes else set()
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return found | {"invalid_utf8"}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return found | {"broken_json"}
    if not isinstance(record, dict):
        return found | {"broken_json"}
    if contract.key_field not in record or contract.event_time_field not in record:
        found.add("missing_field")
    markers = {
        m.name: m.sentinels[0] if m.sentinels else OUT_OF_BAND_SENTINEL for m in contract.measures
    }
    if all(record.get(name) == marker for name, marker in markers.items()):
        return found | {"sentinel"}
    if any(isinstance(record.get(f.name), str) for f in contract.value_fields if f.numeric):
        found.add("wrong_type")
    for m in contract.measures:
        value_ = record.get(m.name)
        if (
            isinstance(value_, (int, float))
            and value_ not in m.sentinels
            and not m.in_range(value_)
        ):
            found.add("out_of_range")
    return found


def _base(contract: SourceContract) -> dict[str, Any]:
    """A valid record: every measure at the middle of its range."""
    record: dict[str, Any] = {
        contract.key_field: "portland",
        contract.event_time_field: "2017-01-15T06:00:00Z",
    }
    for m in contract.measures:
        record[m.name] = (m.valid_min + m.valid_max) / 2
    return record


@pytest.fixture(scope="module")
def air() -> pl.DataFrame:
    settings = Settings(_env_file=None, postgres_owner_password="unit", postgres_bi_password="unit")
    return read_air_quality(settings.data_dir)


def _hourly(hours: int, station: str = "s1") -> pl.DataFrame:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "station_id": [station] * hours,
            "timestamp": [start + timedelta(hours=h) for h in range(hours)],
            **{m: [float(h) for h in range(hours)] for m in AIR_QUALITY.measure_names},
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


# --- chaos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS.keys())
def test_the_base_record_is_valid(contract):
    assert classify_damage(contract, json.dumps(_base(contract)).encode()) == set()


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS.keys())
@pytest.mark.parametrize("kind", MALFORMED_KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_each_kind_is_malformed_in_exactly_its_way(contract, kind, seed):
    key, value = malformed_record(contract, kind, random.Random(seed), _base(contract))
    assert key == b"portland"
    assert classify_damage(contract, value) == {kind}


def test_kinds_are_damaged_the_way_silver_will_see_them():
    rng, base = random.Random(7), _base(AIR_QUALITY)
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed_record(AIR_QUALITY, "broken_json", rng, base)[1])
    with pytest.raises(UnicodeDecodeError):
        malformed_record(AIR_QUALITY, "invalid_utf8", rng, base)[1].decode("utf-8")
    wrong = json.loads(malformed_record(AIR_QUALITY, "wrong_type", rng, base)[1])
    assert [k for k, v in wrong.items() if isinstance(v, str)] != ["station_id", "timestamp"]
    missing = json.loads(malformed_record(AIR_QUALITY, "missing_field", rng, base)[1])
    assert len({"station_id", "timestamp"} - set(missing)) == 1
    sentinel = json.loads(malformed_record(AIR_QUALITY, "sentinel", rng, base)[1])
    assert {sentinel[m] for m in AIR_QUALITY.measure_names} == {-200.0}
    sentinel = json.loads(malformed_record(WEATHER, "sentinel", rng, _base(WEATHER))[1])
    assert {sentinel[m] for m in WEATHER.measure_names} == {-9999.0}
    oversize = malformed_record(AIR_QUALITY, "oversize", rng, base)[1]
    assert AIR_QUALITY.max_record_bytes < len(oversize) < 1024 * 1024
    assert json.loads(oversize) == base  # only its size is wrong
    accented = {**base, "station_id": "zürich"}
    with pytest.raises(UnicodeDecodeError):
        malformed_record(AIR_QUALITY, "invalid_utf8", rng, accented)[1].decode("utf-8")
    with pytest.raises(ValueError, match="unknown malformed kind 'gibberish'"):
        malformed_record(AIR_QUALITY, "gibberish", rng, base)


def test_malformed_records_cycle_through_every_kind_deterministically():
    bases = [_base(WEATHER)]
    records = malformed_records(WEATHER, 14, seed=3, base_records=bases)
    assert Counter(kind for kind, _, _ in records) == {kind: 2 for kind in MALFORMED_KINDS}
    assert {kind for kind, _, _ in malformed_records(WEATHER, 7, seed=0)} == set(MALFORMED_KINDS)
    assert all(classify_damage(WEATHER, v) == {k} for k, _, v in records)
    assert malformed_records(WEATHER, 14, seed=3, base_records=bases) == records
    assert malformed_records(WEATHER, 14, seed=4, base_records=bases) != records
    with pytest.raises(ValueError, match="count must be >= 0"):
        malformed_records(WEATHER, -1, seed=0)


def test_synthetic_bases_are_stamped_now_with_station_chaos():
    [(kind, key, value)] = [
        r for r in malformed_records(WEATHER, 7, seed=1) if r[0] == "wrong_type"
    ]
    record = json.loads(value)
    assert key == b"chaos" and record["station_id"] == "chaos"
    stamped = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamped) < timedelta(minutes=1)


def test_produce_chaos_validates_before_touching_kafka():
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        produce_chaos(Settings(), "nope", count=7)
    with pytest.raises(ValueError, match="count must be >= 1"):
        produce_chaos(Settings(), "weather", count=0)


# --- replay: what is sent ------------------------------------------------------------------


def test_prepare_frame_orders_and_limits(air):
    shuffled = air.sample(fraction=1.0, shuffle=True, seed=1)
    first = prepare_frame(shuffled, AIR_QUALITY, limit=50)
    assert first.equals(air.head(50))
    assert prepare_frame(air, AIR_QUALITY, limit=0).is_empty()
    assert prepare_frame(air, AIR_QUALITY).height == 8_326


def test_good_messages_are_the_wire_format(air):
    messages = list(build_messages(prepare_frame(air, AIR_QUALITY, limit=3), AIR_QUALITY))
    assert [m.kind for m in messages] == [None, None, None]
    assert {m.key for m in messages} == {b"uci_air_quality"}
    assert messages[0].value == (
        b'{"station_id":"uci_air_quality","timestamp":"2004-03-10T18:00:00Z",'
        b'"co_gt":2.6,"pt08_s1_co":1360.0,"nmhc_gt":150.0,"c6h6_gt":11.9,'
        b'"pt08_s2_nmhc":1046.0,"nox_gt":166.0,"pt08_s3_nox":1056.0,"no2_gt":113.0,'
        b'"pt08_s4_no2":1692.0,"pt08_s5_o3":1268.0,"temperature":13.6,'
        b'"relative_humidity":48.9,"absolute_humidity":0.7578}'
    )
    assert [m.event_time.hour for m in messages] == [18, 19, 20]
    # A sentinel in the dataset is a null on the wire, in contract field order.
    row = json.loads(next(m.value for m in build_messages(air.slice(9, 1), AIR_QUALITY)))
    assert list(row) == list(AIR_QUALITY.wire_fields)
    assert (row["timestamp"], row["nox_gt"], row["no2_gt"]) == ("2004-03-11T03:00:00Z", None, None)


def test_bad_rate_mixes_in_that_share_of_malformed_records(air):
    frame = prepare_frame(air, AIR_QUALITY, limit=200)
    clean = list(build_messages(frame, AIR_QUALITY))
    mixed = list(build_messages(frame, AIR_QUALITY, bad_rate=0.1, seed=1))
    bad = [m for m in mixed if m.kind is not None]
    assert (len(mixed), len(bad)) == (222, 22)  # 22 of 222 is 10 %
    assert [m for m in mixed if m.kind is None] == clean  # the good ones, untouched, in order
    assert Counter(m.kind for m in bad) == Counter(MALFORMED_KINDS[i % 7] for i in range(22))
    assert all(classify_damage(AIR_QUALITY, m.value) == {m.kind} for m in bad)
    positions = [i for i, m in enumerate(mixed) if m.kind is not None]
    assert positions != list(range(positions[0], positions[0] + 22))  # spread, not a block
    assert positions[0] < 111 < positions[-1]
    # A malformed record shares the event time of a neighbour, so pacing is unchanged.
    times = [m.event_time for m in mixed]
    assert times == sorted(times)
    half = list(build_messages(frame, AIR_QUALITY, bad_rate=0.5, seed=1))
    assert sum(m.kind is not None for m in half) == 200


def test_bad_mixing_is_deterministic_in_the_seed(air):
    frame = prepare_frame(air, AIR_QUALITY, limit=100)
    one = list(build_messages(frame, AIR_QUALITY, bad_rate=0.2, seed=1))
    assert list(build_messages(frame, AIR_QUALITY, bad_rate=0.2, seed=1)) == one
    other = list(build_messages(frame, AIR_QUALITY, bad_rate=0.2, seed=2))
    assert [m.kind for m in other] != [m.kind for m in one]


def test_rebase_moves_the_last_timestamp_to_now_and_keeps_gaps(air):
    frame = prepare_frame(air, AIR_QUALITY, limit=500)
    now = datetime(2030, 6, 1, 12, 30, 15, 987_654, tzinfo=UTC)
    moved = rebase(frame, now)
    assert moved["timestamp"][-1] == datetime(2030, 6, 1, 12, 30, 15, tzinfo=UTC)
    assert moved["timestamp"].diff().equals(frame["timestamp"].diff())
    assert moved.drop("timestamp").equals(frame.drop("timestamp"))
    assert moved.schema == frame.schema
    live = prepare_frame(air, AIR_QUALITY, limit=10, now=datetime.now(UTC))
    assert abs(datetime.now(UTC) - live["timestamp"][-1]) < timedelta(seconds=5)
    assert live["timestamp"][-1].microsecond == 0
    last = list(build_messages(live, AIR_QUALITY))[-1]
    assert json.loads(last.value)["timestamp"] == live["timestamp"][-1].strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


# --- replay: when it is sent ---------------------------------------------------------------


def test_pacing_divides_event_time_gaps_by_the_speedup():
    hours = [datetime(2020, 1, 1, h, tzinfo=UTC) for h in range(4)]
    assert list(pacing_offsets(hours, 3600)) == [0.0, 1.0, 2.0, 3.0]
    assert list(pacing_offsets(hours, 7200)) == [0.0, 0.5, 1.0, 1.5]
    assert list(pacing_offsets(hours, 0)) == [0.0] * 4
    # Many stations share an hour: they go out together, then the next hour a second later.
    stations = [hours[0], hours[0], hours[1], hours[1]]
    assert list(pacing_offsets(stations, 3600)) == [0.0, 0.0, 1.0, 1.0]


def test_sending_sleeps_until_each_record_is_due():
    messages = list(build_messages(_hourly(3), AIR_QUALITY, bad_rate=0.25, seed=0))
    assert sum(m.kind is not None for m in messages) == 1
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    tally = _Tally()
    sent = list(_paced(messages, 3600, tally, sleep=sleep, clock=lambda: clock[0]))
    assert sent == [(m.key, m.value) for m in messages]
    assert slept == [1.0, 1.0]  # one second per hour of data; none for the malformed one
    assert (tally.good, tally.bad) == (3, 1)
    assert (tally.first_event.hour, tally.last_event.hour) == (0, 2)
    slept.clear()
    list(_paced(messages, 0, _Tally(), sleep=sleep, clock=lambda: 0.0))
    assert slept == []


# --- replay: arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit must be >= 0"),
        ({"speedup": -2.0}, "speedup must be a finite number >= 0"),
        ({"speedup": float("inf")}, "speedup must be a finite number >= 0"),
        ({"bad_rate": 1.0}, r"bad_rate must be in \[0, 1\)"),
        ({"bad_rate": -0.1}, r"bad_rate must be in \[0, 1\)"),
        ({"stations": ["atlantis"]}, "unknown weather station"),
    ],
)
def test_replay_rejects_bad_arguments_before_sending(kwargs, message):
    # The broker address is unroutable: reaching Kafka would fail differently.
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match=message):
        replay(settings, "weather", progress=False, **kwargs)


def test_replay_rejects_an_unknown_source():
    with pytest.raises(
        ValueError, match="unknown source 'flights'; known sources: air_quality, taxi, weather"
    ):
        replay(Settings(), "flights")
    with pytest.raises(ValueError, match=r"bad_rate must be in \[0, 1\)"):
        list(build_messages(_hourly(2), AIR_QUALITY, bad_rate=1.5))
