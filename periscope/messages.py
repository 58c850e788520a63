"""Lake rows as Kafka messages: one compact JSON object per row, keyed by a column, and the
producer that publishes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from periscope.errors import PeriscopeError

if TYPE_CHECKING:
    from periscope.settings import Settings

__all__ = ["PublishError", "Publisher", "json_messages"]

_DELIVERY_TIMEOUT_S = 120.0  # as long as the ingest producer retries a record


def json_messages(
    rows: pa.Table, key_column: str, *, value_columns: Sequence[str] | None = None
) -> list[tuple[bytes | None, bytes]]:
    """(key, JSON object of `value_columns`) per row; all columns by default.

    DuckDB writes the JSON (timestamps ISO 8601, nested lists kept); a string key is
    UTF-8 encoded, a binary key is sent as it is.

    >>> json_messages(pa.table({"station_id": ["a"], "value": [1.5]}), "station_id")
    [(b'a', b'{"station_id":"a","value":1.5}')]
    """
    import duckdb

    names = list(value_columns or rows.column_names)
    fields = ", ".join(f'"{name}" := "{name}"' for name in names)
    con = duckdb.connect()
    try:
        con.sql("set timezone = 'UTC'")
        con.register("message_rows", rows)
        encoded = con.sql(
            f'select "{key_column}", to_json(struct_pack({fields}))::varchar from message_rows'
        ).fetchall()
    finally:
        con.close()
    return [
        (key.encode() if isinstance(key, str) else key, value.encode()) for key, value in encoded
    ]


class Publisher:
    """Publishes lake rows' messages to Kafka, at least once, through librdkafka.

    Idempotent, acks from all replicas; keys are partitioned as Kafka's Java client does
    (murmur2), so a station's messages land where the ingest producer puts its records.
    `publish` returns once the broker acknowledged every message, and raises otherwise.
    """

    def __init__(
        self, settings: Settings, *, client_id: str, timeout_s: float = _DELIVERY_TIMEOUT_S
    ) -> None:
        from confluent_kafka import Producer

        self._timeout_s = timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": settings.kafka_compression,
                "linger.ms": settings.producer_linger_ms,
                "partitioner": "murmur2_random",
                "message.timeout.ms": int(timeout_s * 1000),  # retried until then
            }
        )

    def publish(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> int:
        """Send every (key, value); returns how many the broker acknowledged (all of them)."""
        errors: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                errors.append(str(error))

        for key, value in messages:
            while True:
                try:
                    self._producer.produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let librdkafka drain it
                    self._producer.poll(0.1)
        left = self._producer.flush(self._timeout_s + 5)
        if errors or left:
            raise PublishError(
                f"{topic}: {len(messages) - len(errors) - left} of {len(messages)} messages "
                f"acknowledged ({left} unsent): {'; '.join(errors[:3])}"
            )
        return len(messages)

    def close(self) -> None:
        """Release the producer (`publish` already waited for every acknowledgement)."""
        self._producer.flush(5)
        del self._producer  # librdkafka stops its threads when the handle is freed


class PublishError(PeriscopeError):
    """Kafka did not acknowledge every message of a publish."""
