"""How every ingest path sends: `periscope.messages.Publisher` (librdkafka) tuned for bulk.

Idempotent, `acks=all`, compressed, batched; records are keyed by their entity (so one
station's readings stay in order on one partition, murmur2 as in Kafka's Java client) and
encoded as compact JSON; chaos records are raw bytes and bypass encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson

from periscope import PeriscopeError, Settings
from periscope.messages import DeliveryReport, Publisher, PublishError
from periscope.metrics import record_produced

__all__ = [
    "DeliveryReport",
    "ProduceError",
    "build_producer",
    "check_topic",
    "encode_record",
    "send_all",
    "send_with_progress",
]

_TOPIC_TIMEOUT_S = 10.0  # how long a send waits for the broker to describe the topic


class ProduceError(PeriscopeError):
    """Kafka did not acknowledge every record, or cannot take them (no broker, no topic)."""


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers; anything else orjson does not know is an error."""
    item = getattr(value, "item", None)
    if item is None or not callable(item):
        raise TypeError(f"cannot encode {type(value).__name__} {value!r} as JSON")
    return item()


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and ±inf become null (JSON has neither).

    Datetimes must already be strings in the wire format (an ISO string with an offset would
    be silently different), so they are refused like any other unknown type.

    >>> encode_record({"station_id": "zürich", "temperature": float("nan"), "humidity": 80.0})
    b'{"station_id":"z\\xc3\\xbcrich","temperature":null,"humidity":80.0}'
    """
    return orjson.dumps(record, default=_plain, option=orjson.OPT_PASSTHROUGH_DATETIME)


def build_producer(
    settings: Settings,
    *,
    on_delivered: Callable[[bytes | None, bytes], None] | None = None,
    **config: Any,
) -> Publisher:
    """A librdkafka producer for ingest: bigger batches than the stages' publishers.

    `config` adds or overrides librdkafka settings; `on_delivered(key, value)` is told of each
    acknowledged record (slower: only the live producer needs it).
    """
    options: dict[str, Any] = {
        "batch.size": settings.producer_batch_bytes,
        "batch.num.messages": 100_000,  # let batch.size bound a batch, not the count
        "queue.buffering.max.messages": 500_000,  # producing outruns the network at times
        "allow.auto.create.topics": False,  # topics are explicit (`periscope topics create`)
        **config,
    }
    return Publisher(
        settings, client_id="periscope-ingest", config=options, on_delivered=on_delivered
    )


def check_topic(
    producer: Publisher, topic: str, settings: Settings, *, timeout_s: float = _TOPIC_TIMEOUT_S
) -> None:
    """Raise ProduceError unless a broker answers and `topic` exists within `timeout_s`."""
    try:
        partitions = producer.partitions(topic, timeout_s=timeout_s)
    except PublishError as exc:
        raise ProduceError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
            "`periscope services up` starts the local broker"
        ) from exc
    if not partitions:
        raise ProduceError(
            f"topic {topic} does not exist on {settings.kafka_bootstrap_servers}; "
            "`periscope topics create` makes it"
        )


def send_all(
    producer: Publisher,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    *,
    on_sent: Callable[[int], None] | None = None,
) -> DeliveryReport:
    """Send (key, value) pairs, wait for the broker, and raise unless it acknowledged every one."""

    def sent(n: int) -> None:  # counted as they go, so a long paced replay shows its progress
        record_produced(topic, n)
        if on_sent is not None:
            on_sent(n)

    report = producer.send(topic, messages, on_sent=sent)
    if report.failed or report.unsent:
        raise ProduceError(
            f"{topic}: {report.acknowledged} of {report.sent} records acknowledged, "
            f"{report.failed} failed, {report.unsent} unsent: {'; '.join(report.errors)}"
        )
    return report


def send_with_progress(
    settings: Settings,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    *,
    total: int,
    description: str,
    progress: bool = True,
) -> DeliveryReport:
    """`send_all` through a fresh producer, with a rich progress bar; raises unless all acked."""
    producer = build_producer(settings)
    try:
        check_topic(producer, topic, settings)
        with _progress_bar(description, total, progress) as on_sent:
            return send_all(producer, topic, messages, on_sent=on_sent)
    finally:
        producer.close()


@contextmanager
def _progress_bar(
    description: str, total: int, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task(description, total=total)
        # The producer reports every 1,024 records: redrawing per record would cost more
        # than sending it.
        yield lambda n: bar.advance(task, n)
