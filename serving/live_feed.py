"""The dashboard's live feed: the newest `<source>-predictions` messages, as they arrive.

One Kafka consumer per dashboard server (a background thread) reads every source's predictions
topic in the `dashboard-consumers` group and keeps the newest messages in memory; the Live feed
page shows them. Its offsets are committed as it reads, so the group's lag (exported by the
API's /metrics and shown by `periscope monitor`) says how far the dashboard is behind gold.
Messages are read by name, as gold writes them (the row's columns, forecasts by measure):
every source appears from its contract.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from periscope.contracts import SourceContract
from periscope.metrics import CONSUMER_GROUPS
from periscope.settings import Settings

__all__ = ["GROUP", "LiveFeed", "feed_rows"]

log = logging.getLogger(__name__)

GROUP = CONSUMER_GROUPS["dashboard"]
# What a feed row shows of a message, when the message has it (a per-event message has its own
# fields: they are shown by `kind`, its entity and its score).
SHOWN = ("window_start", "anomaly_score", "is_anomaly", "anomaly_kind", "scored_at")


class LiveFeed:
    """A consumer of `topics` in `group` on a daemon thread, keeping the newest `keep` messages.

    New in the group, it starts at the end of each topic (`start`): a feed shows what arrives.
    `status` says whether Kafka answers (the last error, if any).
    """

    def __init__(
        self,
        settings: Settings,
        topics: Iterable[str],
        *,
        keep: int = 500,
        group: str = GROUP,
        start: Literal["latest", "earliest"] = "latest",
    ) -> None:
        self.settings = settings
        self.topics = sorted(topics)
        self.group = group
        self.start_at = start
        self.status = "connecting"
        self._messages: deque[dict[str, Any]] = deque(maxlen=keep)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LiveFeed:
        self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def newest(self, n: int) -> list[dict[str, Any]]:
        """The newest `n` messages read, newest first (topic, partition, offset, timestamp,
        key and the decoded value)."""
        return list(reversed(list(self._messages)[-n:]))

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap_servers,
                "group.id": self.group,
                "auto.offset.reset": self.start_at,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 1000,
                # topics created after the feed started are found within seconds
                "topic.metadata.refresh.interval.ms": 5000,
                # Kafka down: poll's error events say so (`status`); librdkafka would also log
                # every refused connection
                "log_level": 2,
            },
            logger=log,
        )
        try:
            consumer.subscribe(self.topics)
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        self.status = f"Kafka: {error.str()}"
                    continue
                self.status = "reading"
                self._messages.append(_entry(message))
        except Exception as exc:  # the feed is a view: it never takes the dashboard down
            log.exception("live feed stopped")
            self.status = f"stopped: {exc}"
        finally:
            consumer.close()  # commits what was read


def _entry(message: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(message.value() or b"null")
    except orjson.JSONDecodeError:
        value = None
    _, millis = message.timestamp()
    key = message.key()
    return {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "kafka_time": datetime.fromtimestamp(millis / 1000, tz=UTC) if millis > 0 else None,
        "key": key.decode(errors="replace") if key is not None else None,
        "value": value if isinstance(value, dict) else {},
    }


def feed_rows(
    entries: Iterable[Mapping[str, Any]], contracts: Iterable[SourceContract]
) -> list[dict[str, Any]]:
    """Feed entries as rows: source, entity (the contract's key, else the message key), what
    the message is (`window` or its `kind`), the fields of `SHOWN` it has, and its Kafka time.

    >>> from periscope.contracts import WEATHER
    >>> entry = {"topic": "weather-predictions", "partition": 0, "offset": 7, "key": "denver",
    ...          "kafka_time": None, "value": {"station_id": "denver", "anomaly_score": 0.9}}
    >>> row = feed_rows([entry], [WEATHER])[0]
    >>> row["source"], row["entity_id"], row["message"], row["anomaly_score"], row["window_start"]
    ('weather', 'denver', 'window', 0.9, None)
    """
    by_topic = {c.topic("predictions"): c for c in contracts}
    rows = []
    for entry in entries:
        contract = by_topic.get(entry["topic"])
        value = entry["value"]
        rows.append(
            {
                "source": contract.name if contract is not None else entry["topic"],
                "entity_id": (value.get(contract.key_field) if contract else None) or entry["key"],
                "message": value.get("kind") or "window",
                **{name: value.get(name) for name in SHOWN},
                "kafka_time": entry["kafka_time"],
                "offset": f"{entry['partition']}:{entry['offset']}",
            }
        )
    return rows
