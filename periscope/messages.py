"""Lake rows as Kafka messages (one compact JSON object per row, keyed by a column), and the
one producer every stage publishes through, ingest included."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from periscope.errors import PeriscopeError

if TYPE_CHECKING:
    from periscope.settings import Settings

__all__ = ["DeliveryReport", "PublishError", "Publisher", "json_messages"]

_DELIVERY_TIMEOUT_S = 120.0  # how long librdkafka retries a message before it fails
_POLL_EVERY_MASK = 1023  # serve delivery reports every 1,024 messages
_JSON_CHUNK_ROWS = 8192  # rows encoded at a time


def json_messages(
    rows: pa.Table,
    key_column: str,
    *,
    value_columns: Sequence[str] | None = None,
    chunk_rows: int = _JSON_CHUNK_ROWS,
) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, JSON object of `value_columns`) per row; all columns by default.

    DuckDB writes the JSON (timestamps ISO 8601, nested lists kept); a string key is
    UTF-8 encoded, a binary key is sent as it is. Encoded `chunk_rows` rows at a time, as the
    producer takes them: a silver backfill batch's 200,000 feature windows held as Python
    strings and bytes at once were ~0.6 GB of the process's peak.

    >>> list(json_messages(pa.table({"station_id": ["a"], "value": [1.5]}), "station_id"))
    [(b'a', b'{"station_id":"a","value":1.5}')]
    """
    import duckdb

    names = list(value_columns or rows.column_names)
    fields = ", ".join(f'"{name}" := "{name}"' for name in names)
    con = duckdb.connect()
    try:
        con.sql("set timezone = 'UTC'")
        for offset in range(0, rows.num_rows, chunk_rows):
            con.register("message_rows", rows.slice(offset, chunk_rows))
            encoded = con.sql(
                f'select "{key_column}", to_json(struct_pack({fields}))::varchar from message_rows'
            ).fetchall()
            for key, value in encoded:
                yield (key.encode() if isinstance(key, str) else key, value.encode())
    finally:
        con.close()


class Publisher:
    """Publishes messages to Kafka, at least once, through librdkafka: every stage's producer.

    Idempotent, acks from all replicas; keys are partitioned as Kafka's Java client does
    (murmur2; keyless messages spread at random), so a station's messages always land on
    one partition. `publish` and `send` return once the broker acknowledged or refused
    every message: `publish` raises unless all were acknowledged, `send` reports the counts.

    `config` adds or overrides librdkafka settings (ingest's batching). `on_delivered`, when
    given, is called with (key, value) for each acknowledged message, from `send`, `publish`
    or `close` on the caller's thread; without it the broker's successes are not reported
    to Python at all, only failures, which is what makes a bulk send cheap.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        timeout_s: float = _DELIVERY_TIMEOUT_S,
        config: Mapping[str, Any] | None = None,
        on_delivered: Callable[[bytes | None, bytes], None] | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._on_delivered = on_delivered
        self._report = DeliveryReport()  # the current send's; failures are counted into it
        self._config = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": settings.kafka_compression,
            "linger.ms": settings.producer_linger_ms,
            "partitioner": "murmur2_random",
            "message.timeout.ms": int(timeout_s * 1000),  # retried until then
            **(config or {}),
            # One callback for the producer rather than one per message (a Python
            # object per message costs a third of the send).
            "on_delivery": self._delivered,
            "delivery.report.only.error": on_delivered is None,
        }
        self._producer = self._new_producer()

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(self._config)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._report.failed += 1
            if len(self._report.errors) < 5:
                self._report.errors.append(str(error))
        elif self._on_delivered is not None:
            self._on_delivered(message.key(), message.value())

    def send(
        self,
        topic: str,
        messages: Iterable[tuple[bytes | None, bytes]],
        *,
        on_sent: Callable[[int], None] | None = None,
    ) -> DeliveryReport:
        """Send every (key, value), wait for the broker, and count what it acknowledged.

        Never raises for a refused message: the report says how many were. `on_sent(n)` is
        told every 1,024 messages and at the end how many more were handed to librdkafka.
        """
        self._report = report = DeliveryReport()
        produce, poll = self._producer.produce, self._producer.poll
        sent = 0
        for key, value in messages:
            try:
                produce(topic, value, key)
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._produce_when_queued(topic, key, value)
            sent += 1
            if not sent & _POLL_EVERY_MASK:
                poll(0)  # serve delivery reports now and then, not per message
                if on_sent is not None:
                    on_sent(_POLL_EVERY_MASK + 1)
        report.sent = sent
        if on_sent is not None and sent & _POLL_EVERY_MASK:
            on_sent(sent & _POLL_EVERY_MASK)
        report.unsent = self._producer.flush(self._timeout_s + 5)
        return report

    def _produce_when_queued(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue

    def publish(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Send every (key, value); returns how many the broker acknowledged (all of them)."""
        report = self.send(topic, messages)
        if report.failed or report.unsent:
            # The next send starts on a new producer: an idempotent one whose messages failed
            # can be fenced for good (a librdkafka fatal error), and the long-lived ones
            # (silver's, the scorer's) would then refuse every later batch.
            self._producer = self._new_producer()
            raise PublishError(
                f"{topic}: {report.acknowledged} of {report.sent} messages "
                f"acknowledged ({report.unsent} unsent): {'; '.join(report.errors[:3])}"
            )
        return report.sent

    def partitions(self, topic: str, *, timeout_s: float = 10.0) -> list[int]:
        """The topic's partition ids, [] when it does not exist; PublishError when no broker answers."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                metadata = self._producer.list_topics(
                    topic, timeout=max(0.1, deadline - time.monotonic())
                )
            except KafkaException as exc:
                raise PublishError(
                    f"no Kafka broker answered within {timeout_s:g} s: {exc}"
                ) from exc
            found = metadata.topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                return sorted(found.partitions)
            # A topic created a moment ago can have no leader yet, or be unknown to the
            # broker's metadata cache: ask again until the deadline.
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.2)

    def close(self, timeout_s: float = 5.0) -> None:
        """Release the producer, first giving what is still in flight `timeout_s` to be acknowledged."""
        self._producer.flush(timeout_s)
        del self._producer  # librdkafka stops its threads when the handle is freed

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class DeliveryReport:
    """What the broker did with the messages of one send: acknowledged unless failed or unsent."""

    sent: int = 0
    failed: int = 0
    unsent: int = 0  # still queued when the wait ran out
    errors: list[str] = field(default_factory=list)  # the first few failures

    @property
    def acknowledged(self) -> int:
        return self.sent - self.failed - self.unsent


class PublishError(PeriscopeError):
    """Kafka did not acknowledge every message of a publish."""
