"""Bronze on the real broker, with both engines: every record lands exactly once, malformed ones too.

The same guarantees are checked for the Spark job and the direct writer (librdkafka consumer
group + delta-rs); the direct writer also shares partitions between two processes, resumes
from the table rather than its consumer group, and refuses a table ahead of the topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from ingest.producer import build_producer, encode_record, send_all
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError
from periscope.lake import delta_row_count, read_delta
from periscope.topics import TopicSpec, create_topics
from spark_streaming.bronze import BRONZE_COLUMNS, BronzeTarget, read_kafka, start_bronze, to_bronze
from spark_streaming.bronze_direct import (
    BronzeOffsetError,
    DirectBronzeWriter,
    PartitionBuffer,
    app_id,
    bronze_rows,
)

pytestmark = pytest.mark.integration
PERISCOPE = str(Path(sys.executable).parent / "periscope")
ENGINES = ["spark", "direct"]


def _land(engine: str, request, services, target: BronzeTarget, *, batch: int | None = None) -> int:
    """Land the topic until caught up with one engine; returns the batches that carried rows."""
    if engine == "spark":
        spark = request.getfixturevalue("spark")  # only the Spark runs pay for a session
        query = start_bronze(
            spark, services, target, available_now=True, max_offsets_per_trigger=batch
        )
        query.awaitTermination()
        return len([p for p in query.recentProgress if p.numInputRows])
    writer = DirectBronzeWriter(
        services, [target], group_id=f"test-{target.topic}", batch_records=batch
    )
    writer.run(available_now=True)
    return writer.batches


def _records(count: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    """Good JSON, plus the kinds of bytes bronze must keep as they are."""
    weird = [
        (b"s1", b"{not json"),
        (b"s2", b"\xff\xfe\x00 not utf-8"),
        (None, b'{"station_id": null}'),
        (b"s3", b""),
        (b"s4", b'{"pad": "' + b"x" * 200_000 + b'"}'),
    ]
    # 40 station keys: five hashed to only two of the four partitions, and the two-writer test
    # then failed whenever the group gave the second writer the two empty ones.
    good = [
        (
            f"s{i % 40}".encode(),
            encode_record(
                {"station_id": f"s{i % 40}", "timestamp": "2024-01-01T00:00:00Z", "n": i}
            ),
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


@pytest.mark.parametrize("engine", ENGINES)
def test_every_record_lands_once_byte_for_byte(engine, request, services, tmp_path):
    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 4, 1)])
    first = _records(1200)
    _produce(services, topic, first)
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))

    # Several batches, not one: 1200 records at most 250 a batch.
    assert _land(engine, request, services, target, batch=250) >= 5
    _assert_exactly_once(target.table_path, _end_offsets(services, topic))
    table = read_delta(target.table_path, ["key", "value", "topic"])
    assert sorted(table.column("value").to_pylist()) == sorted(v for _, v in first)
    assert sorted(table.column("key").to_pylist(), key=lambda k: k or b"") == sorted(
        (k for k, _ in first), key=lambda k: k or b""
    )
    assert set(table.column("topic").to_pylist()) == {topic}

    # Caught up: running again lands nothing; new records land once.
    _land(engine, request, services, target)
    assert delta_row_count(target.table_path) == len(first)
    _produce(services, topic, _records(300, start=5000))
    _land(engine, request, services, target)
    assert delta_row_count(target.table_path) == len(first) + 300
    _assert_exactly_once(target.table_path, _end_offsets(services, topic))


def test_silver_streams_a_table_the_direct_writer_wrote(spark, services, tmp_path):
    """Silver reads bronze with Spark's Delta streaming source: it must read delta-rs commits."""
    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 2, 1)])
    records = _records(400)
    _produce(services, topic, records)
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))
    _land("direct", None, services, target, batch=150)

    stream = spark.readStream.format("delta").load(target.table_path)
    assert tuple(stream.columns) == BRONZE_COLUMNS
    assert dict(stream.dtypes) == dict(to_bronze(read_kafka(spark, services, topic)).dtypes), (
        "the direct writer's table must have the Spark job's column types"
    )
    name = f"direct_bronze_{uuid.uuid4().hex[:8]}"
    query = (
        stream.writeStream.format("memory")
        .queryName(name)
        .option("checkpointLocation", str(tmp_path / "silver_checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    values = [row.value for row in spark.table(name).select("value").collect()]
    assert sorted(bytes(v) for v in values) == sorted(v for _, v in records)


def test_a_backlog_lands_every_partition_at_one_pace(services, tmp_path):
    """Each full batch holds an equal share of every partition that still has records, so
    silver's watermark never finds one partition's whole history ahead of the others."""
    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 4, 1)])
    _produce(services, topic, _records(40_000)[:-1])  # without the 200 kB record
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))
    DirectBronzeWriter(services, [target], group_id=f"test-{topic}", batch_records=4_000).run(
        available_now=True
    )
    ends = _end_offsets(services, topic)
    _assert_exactly_once(target.table_path, ends)

    # One ingest time stamps each batch: rows per partition in each batch, in order.
    rows = read_delta(target.table_path, ["ingest_time", "partition"]).to_pylist()
    batches: dict[datetime, dict[int, int]] = {}
    for row in rows:
        counts = batches.setdefault(row["ingest_time"], {})
        counts[row["partition"]] = counts.get(row["partition"], 0) + 1
    ordered = [batches[t] for t in sorted(batches)]
    landed = dict.fromkeys(ends, 0)
    for counts in ordered[:-1]:  # the last batch takes what is left
        for partition, end in ends.items():
            if landed[partition] + 1_000 <= end:  # a full share was left to take
                assert counts.get(partition) == 1_000, ordered
            landed[partition] += counts.get(partition, 0)
    assert len(ordered) >= 9, ordered


def test_direct_writer_resumes_from_the_table_not_its_group(services, tmp_path):
    """The table wins over the consumer group; a table ahead of the topic is an error."""
    from confluent_kafka import Consumer, TopicPartition
    from deltalake import CommitProperties, Transaction, write_deltalake

    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 2, 1)])
    _produce(services, topic, _records(100))
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))
    group = f"test-{topic}"
    DirectBronzeWriter(services, [target], group_id=group).run(available_now=True)
    assert delta_row_count(target.table_path) == 100

    # The group is rewound to the start (and a new group has no offsets at all): the table
    # says everything landed, so nothing lands again.
    rewind = Consumer({"bootstrap.servers": services.kafka_bootstrap_servers, "group.id": group})
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in (0, 1)], asynchronous=False)
    rewind.close()
    for group_id in (group, f"{group}-new"):
        assert DirectBronzeWriter(services, [target], group_id=group_id).run(
            available_now=True
        ) == {topic: 0}
    _assert_exactly_once(target.table_path, _end_offsets(services, topic))

    # A mark beyond the broker's end (a recreated topic, another cluster's table) stops the
    # writer with a clear error instead of skipping or re-reading silently.
    end = _end_offsets(services, topic)[0]
    stray = PartitionBuffer()
    stray.add(b"k", b"v", 0, end + 1000, None)
    write_deltalake(
        target.table_path,
        bronze_rows(topic, stray, datetime.now(UTC)),
        mode="append",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(app_id(target.table_path, topic, 0), end + 1000)]
        ),
    )
    with pytest.raises(BronzeOffsetError, match=rf"{topic}\[0\].*end offset is {end}"):
        DirectBronzeWriter(services, [target], group_id=group).run(available_now=True)


def _start_bronze_process(engine: str, env: dict[str, str], log: Path, *args: str):
    return subprocess.Popen(
        [PERISCOPE, "bronze", "run", "--engine", engine, *args],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the JVM dies with it
    )


def _wait_for(condition, process, log: Path, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: " + log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_bronze_process_restarts_without_loss_or_duplicates(engine, services, tmp_path):
    create_topics(services)  # the source topics, as `periscope topics create` makes them
    topic = get_contract("air_quality").topic("raw")
    _produce(services, topic, _records(20_000))
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": str(tmp_path / "lake")}
    table_path = str(tmp_path / "lake" / "bronze" / "air_quality_raw")
    log = tmp_path / "bronze.log"
    process = _start_bronze_process(
        engine, env, log, "--source", "air_quality", "--max-offsets-per-trigger", "400"
    )
    try:
        # Wait for a few committed batches, then kill everything without warning.
        third_commit = Path(table_path) / "_delta_log" / f"{3:020d}.json"
        _wait_for(third_commit.exists, process, log, "bronze made no progress")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    ends = _end_offsets(services, topic)
    landed_before_restart = delta_row_count(table_path)
    assert 0 < landed_before_restart < sum(ends.values()), "the kill should land mid-stream"

    restart = subprocess.run(
        [PERISCOPE, "bronze", "run", "--engine", engine, "--source", "air_quality"]
        + ["--available-now"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    _assert_exactly_once(table_path, ends)


def _writers_in_log(table_path: str) -> set[str]:
    from deltalake import DeltaTable

    return {
        entry["writer_pid"] for entry in DeltaTable(table_path).history() if "writer_pid" in entry
    }


def test_two_direct_writers_share_partitions_exactly_once(services, tmp_path):
    """Horizontal scale is the consumer group: two processes split the partitions; one is
    SIGKILLed mid-stream, the other takes its partitions over from the table's marks."""
    create_topics(services)
    topic = get_contract("weather").topic("raw")
    _produce(services, topic, _records(2_000))
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": str(tmp_path / "lake")}
    table_path = str(tmp_path / "lake" / "bronze" / "weather_raw")
    args = ("--source", "weather", "--max-offsets-per-trigger", "300")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start_bronze_process("direct", env, first_log, *args)
    second = None
    try:
        _wait_for(lambda: "assigned" in first_log.read_text(), first, first_log, "first joined")
        second = _start_bronze_process("direct", env, second_log, *args)
        # Both hold partitions once the second's join has rebalanced the group.
        _wait_for(
            lambda: (
                "assigned" in second_log.read_text()
                and first_log.read_text().count("assigned") >= 2
            ),
            second,
            second_log,
            "the second writer got no partitions",
        )
        _produce(services, topic, _records(40_000, start=10_000))
        _wait_for(lambda: len(_writers_in_log(table_path)) >= 2, first, first_log, "both commit")
        os.killpg(first.pid, signal.SIGKILL)  # mid-stream: its partitions move to the second
        first.wait()
        ends = _end_offsets(services, topic)
        assert delta_row_count(table_path) < sum(ends.values()), "the kill should land mid-stream"
        _wait_for(
            lambda: delta_row_count(table_path) >= sum(ends.values()),
            second,
            second_log,
            "the second writer did not take over",
        )
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
    assert second.returncode == 0, second_log.read_text()[-3000:]
    _assert_exactly_once(table_path, _end_offsets(services, topic))


def test_engines_take_turns_on_one_table(request, spark, services, tmp_path):
    """Switching engines on one table neither skips nor repeats: each resumes after the other's
    rows; a Spark checkpoint the direct writer has overtaken is an error, not a duplicate."""
    topic = f"test-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 2, 1)])
    target = BronzeTarget("test", topic, str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))
    landed = 0
    for engine, count in (("direct", 300), ("spark", 200), ("direct", 100)):
        _produce(services, topic, _records(count, start=landed))
        _land(engine, request, services, target)
        landed += count
        assert delta_row_count(target.table_path) == landed, engine
        _assert_exactly_once(target.table_path, _end_offsets(services, topic))

    _produce(services, topic, _records(50, start=landed))
    with pytest.raises(PeriscopeError, match="direct engine wrote since"):
        start_bronze(spark, services, target, available_now=True)
    assert delta_row_count(target.table_path) == landed
