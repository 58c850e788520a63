"""Bronze on the real broker and real Spark: every record lands exactly once, malformed ones too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from ingest.producer import build_producer, encode_record, send_all
from periscope.contracts import get_contract
from periscope.lake import delta_row_count, read_delta
from periscope.topics import TopicSpec, create_topics
from spark_streaming.bronze import BRONZE_COLUMNS, BronzeTarget, read_kafka, start_bronze, to_bronze

pytestmark = pytest.mark.integration
PERISCOPE = str(Path(sys.executable).parent / "periscope")


def _records(count: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    """Good JSON, plus the kinds of bytes bronze must keep as they are."""
    weird = [
        (b"s1", b"{not json"),
        (b"s2", b"\xff\xfe\x00 not utf-8"),
        (None, b'{"station_id": null}'),
        (b"s3", b""),
        (b"s4", b'{"pad": "' + b"x" * 200_000 + b'"}'),
    ]
    good = [
        (
            f"s{i % 5}".encode(),
            encode_record({"station_id": f"s{i % 5}", "timestamp": "2024-01-01T00:00:00Z", "n": i}),
        )
        for i in range(start, start + count - len(weird))
    ]
    return good + weird


def _produce(settings, topic: str, messages) -> None:
    producer = build_producer(settings)
    send_all(producer, topic, messages)
    producer.close()


def _end_offsets(settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(partitions)
    consumer.close()
    return {tp.partition: offset for tp, offset in ends.items()}


def _assert_exactly_once(table_path: str, end_offsets: dict[int, int]) -> None:
    """Every offset of every partition exactly once: no gap, no duplicate."""
    rows = read_delta(table_path, ["partition", "offset"]).to_pylist()
    seen: dict[int, list[int]] = {}
    for row in rows:
        seen.setdefault(row["partition"], []).append(row["offset"])
    for partition, end in end_offsets.items():
        assert sorted(seen.get(partition, [])) == list(range(end)), f"partition {partition}"
    assert len(rows) == sum(end_offsets.values())


def test_bronze_plan_has_the_bronze_columns(spark, services):
    plan = to_bronze(read_kafka(spark, services, get_contract("weather").topic("raw")))
    assert plan.isStreaming
    assert tuple(plan.columns) == BRONZE_COLUMNS
    types = dict(plan.dtypes)
    assert (types["key"], types["value"], types["offset"], types["ingest_date"]) == (
        "binary",
        "binary",
        "bigint",
        "date",
    )


def test_every_record_lands_once_byte_for_byte(spark, services, tmp_path):
    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 4, 1)])
    first = _records(1200)
    _produce(services, topic, first)
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))

    # Several micro-batches, not one: 1200 records at most 250 a trigger.
    query = start_bronze(spark, services, target, available_now=True, max_offsets_per_trigger=250)
    query.awaitTermination()
    assert len([p for p in query.recentProgress if p.numInputRows]) >= 5
    _assert_exactly_once(target.table_path, _end_offsets(services, topic))
    table = read_delta(target.table_path, ["key", "value", "topic"])
    assert sorted(table.column("value").to_pylist()) == sorted(v for _, v in first)
    assert sorted(table.column("key").to_pylist(), key=lambda k: k or b"") == sorted(
        (k for k, _ in first), key=lambda k: k or b""
    )
    assert set(table.column("topic").to_pylist()) == {topic}

    # Caught up: running again lands nothing; new records land once.
    query = start_bronze(spark, services, target, available_now=True)
    query.awaitTermination()
    assert delta_row_count(target.table_path) == len(first)
    _produce(services, topic, _records(300, start=5000))
    query = start_bronze(spark, services, target, available_now=True)
    query.awaitTermination()
    assert delta_row_count(target.table_path) == len(first) + 300
    _assert_exactly_once(target.table_path, _end_offsets(services, topic))


def test_killed_bronze_process_restarts_without_loss_or_duplicates(services, tmp_path):
    create_topics(services)  # the source topics, as `periscope topics create` makes them
    topic = get_contract("air_quality").topic("raw")
    _produce(services, topic, _records(6000))
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": str(tmp_path / "lake")}
    table_path = str(tmp_path / "lake" / "bronze" / "air_quality_raw")
    log = (tmp_path / "bronze.log").open("w")
    process = subprocess.Popen(
        [PERISCOPE, "bronze", "run", "--source", "air_quality", "--max-offsets-per-trigger", "400"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the JVM dies with it
    )
    try:
        # Wait for a few committed micro-batches, then kill everything without warning.
        third_commit = Path(table_path) / "_delta_log" / f"{3:020d}.json"
        deadline = time.monotonic() + 180
        while not third_commit.exists():
            assert process.poll() is None, (tmp_path / "bronze.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "bronze made no progress"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    ends = _end_offsets(services, topic)
    landed_before_restart = delta_row_count(table_path)
    assert 0 < landed_before_restart < sum(ends.values()), "the kill should land mid-stream"

    restart = subprocess.run(
        [PERISCOPE, "bronze", "run", "--source", "air_quality", "--available-now"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    _assert_exactly_once(table_path, ends)
