"""The real Kafka broker: produce and consume, explicit topics only, the topics CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError

from periscope.contracts import CONTRACTS
from periscope.messages import Publisher, PublishError
from periscope.topics import TopicSpec, create_topics, describe_topics, list_topics

pytestmark = pytest.mark.integration
PERISCOPE = str(Path(sys.executable).parent / "periscope")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PERISCOPE, *args], capture_output=True, text=True, timeout=180)


def _unique_topic(settings, partitions: int = 2) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    assert create_topics(settings, [TopicSpec(name, partitions, 1)]) == {name: True}
    return name


def test_produce_and_consume_with_kafka_python(services):
    topic = _unique_topic(services)
    producer = KafkaProducer(
        bootstrap_servers=services.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    sent = {f"station-{i}".encode(): f'{{"reading": {i}}}'.encode() for i in range(5)}
    for key, value in sent.items():
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    received = {}
    for message in consumer:
        received[message.key] = message.value
        if len(received) == len(sent):
            break
    consumer.close()
    assert received == sent


def test_creating_a_topic_twice_is_a_no_op(services):
    topic = _unique_topic(services, partitions=3)
    assert create_topics(services, [TopicSpec(topic, 3, 1)]) == {topic: False}
    [info] = describe_topics(services, [topic])
    assert (info.partitions, info.replication_factor) == (3, 1)


def test_broker_does_not_auto_create_topics(services):
    missing = f"never-created-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap_servers, max_block_ms=3000)
    with pytest.raises(KafkaTimeoutError):
        producer.send(missing, b"lost?").get(timeout=5)
    producer.close()
    assert missing not in list_topics(services)


def test_topics_cli_creates_every_source_topic_once(services):
    first = _cli("topics", "create")
    assert first.returncode == 0, first.stderr
    second = _cli("topics", "create")
    assert second.returncode == 0, second.stderr
    expected = {t for c in CONTRACTS.values() for t in c.topics.values()}
    lines = [line.split() for line in second.stdout.splitlines() if line.strip()]
    assert {name for _, name in lines} == expected
    assert {state for state, _ in lines} == {"exists"}

    infos = {i.name: i for i in describe_topics(services, sorted(expected))}
    assert {i.partitions for i in infos.values()} == {services.topic_partitions}
    assert infos["weather-raw"].retention_ms == services.topic_retention_hours * 3_600_000
    assert infos["weather-dlq"].retention_ms == services.dlq_retention_hours * 3_600_000

    listed = _cli("topics", "list")
    assert expected <= set(listed.stdout.split())
    described = _cli("topics", "describe", "air_quality-dlq")
    assert described.returncode == 0 and "air_quality-dlq" in described.stdout
    assert "720 h" in described.stdout


def test_describing_a_missing_topic_is_a_clear_error(services):
    result = _cli("topics", "describe", "no-such-topic")
    assert result.returncode == 1
    assert "topic 'no-such-topic' does not exist" in result.stderr


def test_services_cli_is_idempotent_and_reports_status(services):
    again = _cli("services", "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 2
    status = _cli("services", "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 2
    assert str(services.kafka_port) in status.stdout
    assert str(services.postgres_port) in status.stdout
    logs = _cli("services", "logs", "kafka", "-n", "5")
    assert logs.returncode == 0 and "kafka.log" in logs.stdout


def test_publisher_delivers_every_message_partitioned_like_the_java_client(services):
    from kafka.partitioner.default import murmur2

    topic = _unique_topic(services, partitions=3)
    sent = [(f"station-{i}".encode(), f'{{"reading": {i}}}'.encode()) for i in range(500)]
    publisher = Publisher(services, client_id="test")
    assert publisher.publish(topic, sent) == 500
    publisher.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    got = [(m.key, m.value, m.partition) for m in consumer]
    consumer.close()
    assert sorted((k, v) for k, v, _ in got) == sorted(sent)
    assert all(p == (murmur2(k) & 0x7FFFFFFF) % 3 for k, _, p in got)


def test_publisher_raises_when_kafka_does_not_acknowledge_and_sends_again_afterwards(services):
    publisher = Publisher(services, client_id="test", timeout_s=2)
    with pytest.raises(PublishError, match="0 of 3 messages acknowledged"):
        publisher.publish(f"missing-{uuid.uuid4().hex[:8]}", [(b"k", b"v")] * 3)
    # Long-lived publishers (silver's, the scorer's) go on after a failed batch.
    topic = f"again-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 1, 1)])
    assert publisher.publish(topic, [(b"k", b"v")] * 3) == 3
    publisher.close()
