"""Replay and chaos against the real broker: every record lands, good ones intact, bad ones bad."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kafka import KafkaConsumer, TopicPartition

from ingest.chaos import MALFORMED_KINDS, produce_chaos
from ingest.datasets import UCI_STATION_ID, read_air_quality
from ingest.replay import replay
from periscope.contracts import AIR_QUALITY
from periscope.topics import create_topics
from tests.unit.test_chaos_and_replay import classify_damage

pytestmark = pytest.mark.integration

TOPIC = AIR_QUALITY.topic("raw")


def _consumer(settings) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )


def _end_offsets(settings) -> dict[TopicPartition, int]:
    consumer = _consumer(settings)
    try:
        partitions = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC)]
        return consumer.end_offsets(partitions)
    finally:
        consumer.close()


def _read_between(settings, start: dict[TopicPartition, int], end: dict[TopicPartition, int]):
    """Every record from `start` up to (not including) `end`, over all partitions."""
    consumer = _consumer(settings)
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        records = []
        for message in consumer:
            if message.offset < end[TopicPartition(message.topic, message.partition)]:
                records.append(message)
            if all(consumer.position(tp) >= end[tp] for tp in start):
                break
        return records
    finally:
        consumer.close()


def _grown(before: dict[TopicPartition, int], after: dict[TopicPartition, int]) -> int:
    return sum(after[tp] - before[tp] for tp in before)


def test_replay_lands_every_record_and_only_the_good_ones_are_valid(services):
    create_topics(services)
    before = _end_offsets(services)

    report = replay(services, "air_quality", limit=200, bad_rate=0.1, seed=1, progress=False)

    assert (report.topic, report.good, report.bad, report.sent) == (TOPIC, 200, 22, 222)
    after = _end_offsets(services)
    assert _grown(before, after) == report.sent
    records = _read_between(services, before, after)
    assert len(records) == report.sent

    valid = [r for r in records if classify_damage(AIR_QUALITY, r.value) == set()]
    assert len(valid) == report.good
    assert {r.key for r in records} == {UCI_STATION_ID.encode()}
    parsed = [json.loads(r.value) for r in valid]
    assert all(list(p) == list(AIR_QUALITY.wire_fields) for p in parsed)
    assert all(p["station_id"] == UCI_STATION_ID for p in parsed)
    # The first 200 hours of the dataset, each exactly once.
    expected = read_air_quality(services.data_dir).head(200)["timestamp"]
    assert sorted(p["timestamp"] for p in parsed) == [
        t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in expected
    ]
    assert report.first_event == expected[0] and report.last_event == expected[-1]
    # One key, so one partition: the good records keep event-time order on it.
    assert [p["timestamp"] for p in parsed] == sorted(p["timestamp"] for p in parsed)
    assert sum(len(classify_damage(AIR_QUALITY, r.value)) for r in records) == report.bad


def test_chaos_adds_two_records_of_every_kind(services):
    create_topics(services)
    before = _end_offsets(services)

    report = produce_chaos(services, "air_quality", count=14, seed=5, progress=False)

    assert (report.topic, report.sent) == (TOPIC, 14)
    assert report.by_kind == {kind: 2 for kind in MALFORMED_KINDS}
    after = _end_offsets(services)
    assert _grown(before, after) == 14
    records = _read_between(services, before, after)
    found = Counter(kind for r in records for kind in classify_damage(AIR_QUALITY, r.value))
    assert found == {kind: 2 for kind in MALFORMED_KINDS}
    assert {r.key for r in records} == {UCI_STATION_ID.encode()}
