"""Bronze without a JVM: a librdkafka consumer group appending to the same Delta table with delta-rs.

The kafka-delta-ingest design. Each writer process is a member of one consumer group; it
reads large batches (`bronze_batch_records` or `bronze_batch_seconds`, whichever comes
first) and lands each batch with ONE delta-rs append into `bronze/<source>_raw`, with the
same columns as the Spark job (`BRONZE_COLUMNS`, the value as raw bytes, malformed JSON and
invalid UTF-8 included).

Exactly once: the commit that adds a batch's rows also records, per Kafka partition, the
last offset it holds as a Delta app transaction (`txnAppId` = `bronze-direct:<table>:<topic>:
<partition>`, `txnVersion` = offset). The table, not the consumer group, says where to
resume: on assignment each partition is sought to its recorded offset + 1 (the group's
committed offsets are only written for lag tools). A recorded offset beyond the broker's
end, or records deleted before they landed, stop the writer with `BronzeOffsetError`.

Horizontal scale is the consumer group: writers sharing the partitions each commit only
the partitions they own. A writer flushes its buffer before giving partitions up in a
rebalance, and every commit is fenced: the writer re-reads the table's mark for each
partition it writes and expects the one it left there; delta-rs refuses a commit that
races another commit of the same app id. A writer that finds a partition written by
someone else stops with `BronzeOwnershipError` rather than land a record twice.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from periscope import Settings
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.metrics import record_bronze_batch, record_offsets_behind
from spark_streaming.bronze import BRONZE_COLUMNS, STATS_COLUMNS, BronzeTarget

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, TopicPartition
    from deltalake import DeltaTable

__all__ = [
    "BRONZE_ARROW_SCHEMA",
    "BronzeOffsetError",
    "BronzeOwnershipError",
    "DirectBronzeWriter",
    "PartitionBuffer",
    "app_id",
    "bronze_rows",
    "ensure_bronze_table_direct",
    "landed_offsets",
    "last_offsets",
    "run_bronze_direct",
    "start_offset",
]

log = logging.getLogger("spark_streaming")
# Bytes of records buffered at most while a batch waits for every partition's share.
_BUFFER_BYTES = 256 * 1024 * 1024

# The bronze schema as delta-rs writes it; Spark's `ensure_bronze_table` makes the same one.
BRONZE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("ingest_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingest_date", pa.date32(), nullable=False),
    ]
)
assert tuple(BRONZE_ARROW_SCHEMA.names) == BRONZE_COLUMNS


class BronzeOffsetError(PeriscopeError):
    """The table's offsets do not fit the topic (ahead of its end, or records already deleted)."""


class BronzeOwnershipError(PeriscopeError):
    """Another writer committed a partition this writer believed it owned."""


def app_id(table_path: str, topic: str, partition: int) -> str:
    """The Delta app id under which a table records the last offset landed of one partition.

    >>> app_id("/lake/bronze/weather_raw", "weather-raw", 3)
    'bronze-direct:weather_raw:weather-raw:3'
    """
    return f"bronze-direct:{PurePosixPath(table_path).name}:{topic}:{partition}"


def start_offset(recorded: int | None, *, low: int, high: int, topic: str, partition: int) -> int:
    """The first offset to read: the one after the table's mark, or the earliest kept.

    >>> start_offset(41, low=0, high=100, topic="t", partition=0)
    42
    >>> start_offset(None, low=7, high=100, topic="t", partition=0)
    7
    """
    if recorded is None:
        return low
    after = recorded + 1
    if after > high:
        raise BronzeOffsetError(
            f"{topic}[{partition}]: the bronze table has landed offsets up to {recorded} but the "
            f"broker's end offset is {high}; the topic was recreated or the table belongs to "
            "another cluster. Refusing to guess where to resume."
        )
    if after < low:
        raise BronzeOffsetError(
            f"{topic}[{partition}]: offsets {after}..{low - 1} were deleted (retention) before "
            "they landed in bronze; records were lost. Refusing to skip them silently."
        )
    return after


@dataclass
class PartitionBuffer:
    """Kafka records of one topic waiting for the next commit, column by column."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps_ms: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def add(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int, ts: int | None
    ) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.timestamps_ms.append(ts)


def bronze_rows(topic: str, buffer: PartitionBuffer, ingest_time: datetime) -> pa.Table:
    """Buffered Kafka records -> bronze rows (raw bytes and coordinates, and when they landed).

    Like Spark's `current_timestamp()`, one ingest time stamps the whole batch.
    """
    n = len(buffer)
    ingest_time = ingest_time.astimezone(UTC)
    # Kafka timestamps are milliseconds; -1 (none) becomes null. Plain Python on purpose: the
    # first pyarrow.compute call of a process costs about a second of CPU (kernel registry).
    timestamps_us = [
        ms * 1000 if ms is not None and ms >= 0 else None for ms in buffer.timestamps_ms
    ]
    stamp = pa.timestamp("us", tz="UTC")
    columns = [
        pa.array(buffer.keys, pa.binary()),
        pa.array(buffer.values, pa.binary()),
        # Constant columns repeat one scalar: a list of n datetimes converts a thousand times slower.
        pa.repeat(pa.scalar(topic, pa.string()), n),
        pa.array(buffer.partitions, pa.int32()),
        pa.array(buffer.offsets, pa.int64()),
        pa.array(timestamps_us, stamp),
        pa.repeat(pa.scalar(ingest_time, stamp), n),
        pa.repeat(pa.scalar(ingest_time.date(), pa.date32()), n),
    ]
    return pa.Table.from_arrays(columns, schema=BRONZE_ARROW_SCHEMA)


def split_shares(buffer: PartitionBuffer, share: int) -> tuple[PartitionBuffer, PartitionBuffer]:
    """(each partition's first `share` records, the rest), both in buffered order.

    >>> land, keep = split_shares(PartitionBuffer(partitions=[0, 0, 0, 1], offsets=[5, 6, 7, 2],
    ...     keys=[None] * 4, values=[b"a", b"b", b"c", b"d"], timestamps_ms=[1] * 4), 2)
    >>> land.offsets, keep.offsets
    ([5, 6, 2], [7])
    """
    import numpy as np

    partitions = np.asarray(buffer.partitions)
    taken = np.zeros(len(partitions), dtype=bool)
    for partition in np.unique(partitions):
        taken[np.flatnonzero(partitions == partition)[:share]] = True
    return (
        _subset(buffer, np.flatnonzero(taken).tolist()),
        _subset(buffer, np.flatnonzero(~taken).tolist()),
    )


def last_offsets(partitions: Iterable[int], offsets: Iterable[int]) -> dict[int, int]:
    """The last offset per partition of a batch: the marks its commit records.

    Kafka delivers each partition's offsets in ascending order, so the last one seen is the
    highest (and a dict built in order keeps the last value: no per-record Python loop).

    >>> last_offsets([0, 1, 0, 1], [5, 8, 6, 9])
    {0: 6, 1: 9}
    """
    return dict(zip(partitions, offsets, strict=True))


def ensure_bronze_table_direct(table_path: str) -> DeltaTable:
    """Open the bronze table, creating it (schema, partitioning, properties as Spark's) if absent."""
    from deltalake import DeltaTable

    if DeltaTable.is_deltatable(table_path):
        return DeltaTable(table_path)
    return DeltaTable.create(
        table_path,
        BRONZE_ARROW_SCHEMA,
        partition_by=["ingest_date"],
        mode="ignore",  # a second writer may create it at the same moment
        configuration={
            "delta.dataSkippingStatsColumns": STATS_COLUMNS,
            "delta.appendOnly": "true",  # bronze is a ledger: rows are never changed
        },
    )


def landed_offsets(table: DeltaTable, topic: str) -> dict[int, int]:
    """Last offset per partition found in the table's rows of one topic (any engine's)."""
    if not table.file_uris():
        return {}
    rows = table.to_pyarrow_dataset().to_table(
        columns=["partition", "offset"], filter=pc.field("topic") == topic
    )
    if rows.num_rows == 0:
        return {}
    grouped = rows.group_by("partition").aggregate([("offset", "max")])
    return dict(
        zip(
            grouped.column("partition").to_pylist(),
            grouped.column("offset_max").to_pylist(),
            strict=True,
        )
    )


def _rows_may_pass_marks(table: DeltaTable, *, look_back: int = 20) -> bool:
    """Whether rows may lie beyond this writer's marks: the Spark engine (or nobody) wrote last.

    The newest commits say: a direct commit first means the marks are current; a Spark
    streaming commit first, or neither among the last few, means read the rows to be sure.
    """
    for commit in table.history(limit=look_back):  # newest first
        if commit.get("writer") == "bronze-direct":
            return False
        if commit.get("operation") == "STREAMING UPDATE":
            return True
    return True


class DirectBronzeWriter:
    """One consumer-group member landing the records of its partitions in the bronze tables."""

    def __init__(
        self,
        settings: Settings,
        targets: list[BronzeTarget],
        *,
        group_id: str | None = None,
        batch_records: int | None = None,
        batch_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.targets = {t.topic: t for t in targets}
        self.group_id = group_id or settings.bronze_group
        self.batch_records = batch_records or settings.bronze_batch_records
        self.batch_seconds = batch_seconds or settings.bronze_batch_seconds
        self.tables = {t.topic: ensure_bronze_table_direct(t.table_path) for t in targets}
        self.buffers: dict[str, PartitionBuffer] = {t: PartitionBuffer() for t in self.targets}
        # (topic, partition) -> the mark this writer expects in the table (None: no mark yet)
        self.marks: dict[tuple[str, int], int | None] = {}
        self.position: dict[tuple[str, int], int] = {}  # next offset to read
        self.end_at_assign: dict[tuple[str, int], int] = {}
        self.assigned_once = False
        self.landed = {t: 0 for t in self.targets}
        self.batches = 0
        # Where the wall time goes (seconds), for `bench/bronze_throughput.py`.
        self.timings = {"group_join": 0.0, "kafka_fetch": 0.0, "arrow": 0.0, "delta_commit": 0.0}
        self.stop_requested = threading.Event()
        self._buffer_started: float | None = None
        self._run_started = self._cycle_started = time.perf_counter()
        self._consumer: Consumer | None = None
        self._gave_up_partitions = False
        self._buffered_bytes = 0  # of the buffered values, for the buffer's cap

    # --- consumer group -------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            "group.id": self.group_id,
            "client.id": f"periscope-bronze-direct-{'-'.join(sorted(self.targets))}",
            # The table holds the offsets; the group's are written after each commit, for lag tools.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",  # never jump silently; the table says where to start
            # Eager rebalancing: every member gives up all its partitions (after flushing)
            # before anyone gets new ones, so two owners never overlap.
            "partition.assignment.strategy": "range",
            # A killed writer's partitions move on after 10 s instead of the default 45 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            # Big fetches, so a backlog moves in few round trips, but at most 1 MB per
            # partition in each: with more, a backlog arrives one partition's history after
            # another, and no batch holds every partition's share (see `_share`).
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 1024 * 1024,
            "queued.min.messages": 200_000,
            "enable.partition.eof": True,  # tells `available_now` a partition is caught up
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self.assigned_once:
            self.timings["group_join"] = time.perf_counter() - self._run_started
        self.assigned_once = True
        for topic in {tp.topic for tp in partitions}:
            table, path = self.tables[topic], self.targets[topic].table_path
            table.update_incremental()
            ours = [tp for tp in partitions if tp.topic == topic]
            marks = {
                tp.partition: table.transaction_version(app_id(path, topic, tp.partition))
                for tp in ours
            }
            # Rows the Spark engine landed carry no marks of ours: read the offsets from the
            # rows themselves when it may have written since, or a partition has no mark yet.
            landed = (
                landed_offsets(table, topic)
                if table.version() > 0 and (None in marks.values() or _rows_may_pass_marks(table))
                else {}
            )
            for tp in ours:
                known = [
                    o for o in (marks[tp.partition], landed.get(tp.partition)) if o is not None
                ]
                low, high = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
                tp.offset = start_offset(
                    max(known) if known else None,
                    low=low,
                    high=high,
                    topic=topic,
                    partition=tp.partition,
                )
                key = (topic, tp.partition)
                self.marks[key] = marks[tp.partition]
                self.position[key] = tp.offset
                self.end_at_assign[key] = high
        consumer.assign(partitions)
        if partitions:
            log.info(
                "bronze direct: assigned %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions),
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Land what was read from these partitions while they are still ours.
        self.flush()
        self._gave_up_partitions = True
        for tp in partitions:
            for table in (self.marks, self.position, self.end_at_assign):
                table.pop((tp.topic, tp.partition), None)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (session timed out): the records are someone else's now.
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._gave_up_partitions = True
        log.warning("bronze direct: lost %s; dropping their buffered records", sorted(lost))
        for topic, buffer in self.buffers.items():
            keep = [i for i, p in enumerate(buffer.partitions) if (topic, p) not in lost]
            if len(keep) != len(buffer):
                self.buffers[topic] = _subset(buffer, keep)
        for key in lost:
            for table in (self.marks, self.position, self.end_at_assign):
                table.pop(key, None)
        consumer.unassign()

    # --- the loop ---------------------------------------------------------------------------

    def caught_up(self) -> bool:
        """Every partition this writer owns has reached the end it had when assigned."""
        return self.assigned_once and all(
            self.position[key] >= end for key, end in self.end_at_assign.items()
        )

    def run(self, *, available_now: bool = False) -> dict[str, int]:
        """Consume and land until stopped (or, with `available_now`, until caught up)."""
        from confluent_kafka import Consumer

        self._run_started = self._cycle_started = time.perf_counter()
        # pyarrow's first array from Python objects imports pandas (~1.5 s of CPU): do it while
        # librdkafka joins the group and fetches (its threads need no GIL), not in batch 1.
        threading.Thread(target=pa.array, args=([b""],), daemon=True).start()
        consumer = Consumer(self._consumer_config())
        self._consumer = consumer
        consumer.subscribe(
            list(self.targets),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self.stop_requested.is_set():
                room = max(1, min(50_000, self._buffer_cap() - self._buffered()))
                started = time.perf_counter()
                messages = consumer.consume(num_messages=room, timeout=0.2)
                self._take(messages)
                self.timings["kafka_fetch"] += time.perf_counter() - started
                if messages and self._buffer_started is None:
                    self._buffer_started = time.monotonic()
                if self._buffered() >= self.batch_records:
                    # A full batch lands once every partition with records still to read
                    # has its share buffered (or the buffer is at its cap).
                    if self._buffer_full() or self._shares_buffered():
                        self.flush(share=self._share())
                elif (
                    self._buffer_started is not None
                    and time.monotonic() - self._buffer_started >= self.batch_seconds
                ):
                    self.flush()
                if available_now and self.caught_up():
                    break
            while self._buffered() >= self.batch_records:  # what waited, in batches still
                self.flush(share=self._share())
            self.flush()
        finally:
            self._consumer = None
            consumer.close()  # leaves the group (after a last revoke, which flushes)
        return dict(self.landed)

    def _take(self, messages: list[Message]) -> None:
        """Buffer a consumed chunk column by column (comprehensions: this is the hot loop)."""
        from confluent_kafka import KafkaError, KafkaException

        if any(m.error() is not None for m in messages):  # rare: end-of-partition events
            records = []
            for message in messages:
                error = message.error()
                if error is None:
                    records.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    # The end can sit past the last record (transaction markers).
                    key = (message.topic() or "", message.partition() or 0)
                    self.position[key] = max(self.position.get(key, 0), message.offset() or 0)
                else:
                    raise KafkaException(error)
            messages = records
        if self._gave_up_partitions:
            # Records fetched before a revoke can come back from the same consume call: they
            # belong to the partitions' new owner now.
            self._gave_up_partitions = False
            owned = self.end_at_assign
            messages = [m for m in messages if (m.topic(), m.partition()) in owned]
        if len(self.buffers) == 1:
            groups = {next(iter(self.buffers)): messages}
        else:
            groups = defaultdict(list)
            for message in messages:
                groups[message.topic() or ""].append(message)
        for topic, chunk in groups.items():
            buffer = self.buffers[topic]
            partitions: list[int] = [m.partition() for m in chunk]  # type: ignore[misc]
            offsets: list[int] = [m.offset() for m in chunk]  # type: ignore[misc]
            buffer.keys += [m.key() for m in chunk]  # type: ignore[misc]
            values = [m.value() for m in chunk]
            buffer.values += values  # type: ignore[arg-type]
            self._buffered_bytes += sum(len(v) for v in values if v)
            buffer.partitions += partitions
            buffer.offsets += offsets
            buffer.timestamps_ms += [m.timestamp()[1] for m in chunk]
            for partition, offset in last_offsets(partitions, offsets).items():
                self.position[(topic, partition)] = offset + 1

    def _buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    # librdkafka fetches megabytes per partition, so a backlog arrives one partition after
    # another (100k records of partition 0, then 100k of partition 1, ...). A batch cut from
    # that would hold one partition's history, the next batch the next partition's, and
    # silver's watermark (the latest event time of earlier batches) would call the later
    # partitions late. So a full batch lands an equal share of each partition, as Spark's
    # Kafka source splits maxOffsetsPerTrigger, and the rest waits for the next one.

    def _share(self) -> int:
        """A partition's share of a full batch: the batch split evenly over the owned partitions."""
        return max(1, self.batch_records // max(1, len(self.end_at_assign)))

    def _buffer_cap(self) -> int:
        """Records buffered at most while waiting for every partition's share: enough for a
        fetch of 1 MB from each of a few partitions even when batches are small."""
        return max(4 * self.batch_records, 400_000)

    def _buffer_full(self) -> bool:
        """At the cap in records, or in bytes (big records: the memory bound that matters)."""
        return self._buffered() >= self._buffer_cap() or self._buffered_bytes >= _BUFFER_BYTES

    def _shares_buffered(self) -> bool:
        """Every owned partition has its share buffered, or nothing more to read now."""
        from confluent_kafka import TopicPartition

        assert self._consumer is not None
        share = self._share()
        counts = {
            (topic, partition): n
            for topic, buffer in self.buffers.items()
            for partition, n in Counter(buffer.partitions).items()
        }
        for (topic, partition), end in self.end_at_assign.items():
            if counts.get((topic, partition), 0) >= share:
                continue
            # The end from the last fetch (no request); before one, the end at assignment.
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if max(high, end) > self.position.get((topic, partition), 0):
                return False
        return True

    # --- commits ----------------------------------------------------------------------------

    def flush(self, *, share: int | None = None) -> None:
        """Land the buffered records, one append per table with the offsets marked in the same
        commit: all of them, or (`share`) each partition's first `share`, keeping the rest."""
        from confluent_kafka import TopicPartition

        # A batch lasts from its first record buffered to its commit (Spark's micro-batch
        # duration counts its fetch too); a flush without a buffering clock times itself.
        batch_started = self._buffer_started or time.monotonic()
        committed: list[TopicPartition] = []
        for topic, buffer in self.buffers.items():
            if not len(buffer):
                continue
            if share is None:
                self.buffers[topic] = PartitionBuffer()
            else:
                buffer, self.buffers[topic] = split_shares(buffer, share)
            marks = last_offsets(buffer.partitions, buffer.offsets)
            arrow_started = time.perf_counter()
            rows = bronze_rows(topic, buffer, datetime.now(UTC))
            commit_started = time.perf_counter()
            self.timings["arrow"] += commit_started - arrow_started
            self._append(topic, rows, marks)
            self.timings["delta_commit"] += time.perf_counter() - commit_started
            self.landed[topic] += len(buffer)
            committed += [TopicPartition(topic, p, offset + 1) for p, offset in marks.items()]
            self.batches += 1
            record_bronze_batch(
                self.targets[topic].source,
                records=len(buffer),
                seconds=time.monotonic() - batch_started,
            )
            log.info(
                "bronze_%s (direct): batch %d, +%d rows (%d this run), %.0f rows/s",
                self.targets[topic].source,
                self.batches,
                len(buffer),
                self.landed[topic],
                # Over the whole cycle (fetch + encode + commit), like Spark's processedRowsPerSecond.
                len(buffer) / max(time.perf_counter() - self._cycle_started, 1e-9),
            )
        self._buffered_bytes = sum(len(v) for b in self.buffers.values() for v in b.values if v)
        self._buffer_started = time.monotonic() if self._buffered() else None
        self._cycle_started = time.perf_counter()
        if committed and self._consumer is not None:
            # For lag tools only: the table, not these, decides where a writer resumes.
            self._consumer.commit(offsets=committed, asynchronous=True)
            self._export_offsets_behind()

    def _export_offsets_behind(self) -> None:
        """How far each source is behind the end of its topic (min, max, avg over partitions),
        as the Spark engine reports it: from the high watermark of the last fetch (no request)."""
        from confluent_kafka import TopicPartition

        assert self._consumer is not None
        behind: dict[str, list[int]] = defaultdict(list)
        for (topic, partition), position in self.position.items():
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high >= 0:  # librdkafka's "not known yet" is negative
                behind[topic].append(max(high - position, 0))
        for topic, offsets in behind.items():
            record_offsets_behind("bronze", self.targets[topic].source, offsets)

    def _append(self, topic: str, rows: pa.Table, marks: Mapping[int, int]) -> None:
        """One delta-rs append carrying every partition's mark, fenced against other writers."""
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import CommitFailedError

        table, path = self.tables[topic], self.targets[topic].table_path
        for attempt in range(5):
            table.update_incremental()
            for partition in marks:
                found = table.transaction_version(app_id(path, topic, partition))
                expected = self.marks.get((topic, partition))
                if found != expected:
                    raise BronzeOwnershipError(
                        f"{topic}[{partition}]: the table's mark is {found} where this writer "
                        f"left {expected}: another writer took the partition (a rebalance this "
                        "one missed). Stopping so no record lands twice; a restart resumes "
                        "from the table."
                    )
            try:
                write_deltalake(
                    table,
                    rows,
                    mode="append",
                    commit_properties=CommitProperties(
                        app_transactions=[
                            Transaction(app_id=app_id(path, topic, p), version=offset)
                            for p, offset in marks.items()
                        ],
                        custom_metadata={
                            "writer": "bronze-direct",
                            "writer_pid": str(os.getpid()),
                            "group": self.group_id,
                        },
                    ),
                )
            except CommitFailedError:
                # Someone committed one of our app ids meanwhile: the check above says who.
                log.warning("bronze direct: commit conflict on %s (attempt %d)", topic, attempt)
                continue
            for partition, offset in marks.items():
                self.marks[(topic, partition)] = offset
            return
        raise BronzeOwnershipError(f"{topic}: gave up after 5 conflicting commits")


def _subset(buffer: PartitionBuffer, keep: list[int]) -> PartitionBuffer:
    return PartitionBuffer(
        keys=[buffer.keys[i] for i in keep],
        values=[buffer.values[i] for i in keep],
        partitions=[buffer.partitions[i] for i in keep],
        offsets=[buffer.offsets[i] for i in keep],
        timestamps_ms=[buffer.timestamps_ms[i] for i in keep],
    )


def run_bronze_direct(
    settings: Settings,
    contracts: list[SourceContract],
    *,
    available_now: bool = False,
    group_id: str | None = None,
    batch_records: int | None = None,
) -> dict[str, int]:
    """Land every source's raw topic in bronze with one direct writer; records landed per source.
    The writer joins the consumer group `group_id` (default: the `bronze_group` setting).

    Runs until SIGINT/SIGTERM (which land what is buffered first) or, with `available_now`,
    until the partitions it owns are caught up.
    """
    targets = [BronzeTarget.for_contract(settings, c) for c in contracts]
    writer = DirectBronzeWriter(settings, targets, group_id=group_id, batch_records=batch_records)
    previous = {}  # restored after the run: a caller's own Ctrl-C handling (pytest's) comes back
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: writer.stop_requested.set())
    log.info(
        "bronze direct: %s -> %s (group %s)",
        ", ".join(t.topic for t in targets),
        ", ".join(t.table_path for t in targets),
        writer.group_id,
    )
    try:
        landed = writer.run(available_now=available_now)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    by_topic = {t.topic: t.source for t in targets}
    return {by_topic[topic]: rows for topic, rows in landed.items()}
