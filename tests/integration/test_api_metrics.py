"""The dashboard's live feed reads predictions in the `dashboard-consumers` group, and the API's
/metrics exports that group's lag, both against the real broker: a feed that read 10 messages
and stopped is 5 behind once 5 more arrive."""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fastapi.testclient import TestClient

from serving.api import create_app
from serving.live_feed import GROUP, LiveFeed


def _produce(servers: str, topic: str, hours: range) -> None:
    producer = Producer({"bootstrap.servers": servers})
    for h in hours:
        value = {"station_id": "denver", "window_start": f"2026-11-01T{h:02d}:00:00Z"}
        producer.produce(topic, key=b"denver", value=orjson.dumps(value))
    assert producer.flush(30) == 0


def test_live_feed_commits_in_its_group_and_the_api_exports_the_lag(services):
    servers = services.kafka_bootstrap_servers
    topic = f"test-feed-{uuid.uuid4().hex[:8]}"  # the group's other topics are not this test's
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    try:
        _produce(servers, topic, range(10))
        feed = LiveFeed(services, [topic], keep=4, start="earliest").start()
        deadline = time.monotonic() + 60
        while len(feed.newest(4)) < 4 or feed.newest(1)[0]["offset"] < 9:
            assert time.monotonic() < deadline, feed.status
            time.sleep(0.2)
        feed.stop()  # commits offset 10
        newest = feed.newest(10)
        assert [e["offset"] for e in newest] == [9, 8, 7, 6]  # the newest 4, newest first
        assert newest[0]["value"]["window_start"] == "2026-11-01T09:00:00Z"
        assert newest[0]["key"] == "denver"

        _produce(servers, topic, range(10, 15))
        sample = f'periscope_consumer_group_lag{{group="{GROUP}",topic="{topic}"}}'
        with TestClient(create_app(services)) as client:
            deadline = time.monotonic() + 60
            while True:  # Kafka is asked in the background: the first scrapes may predate it
                found = [
                    line for line in client.get("/metrics").text.splitlines()
                    if line.startswith(sample)
                ]  # fmt: skip
                if found or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert found == [f"{sample} 5.0"]
    finally:
        admin.delete_topics([topic])[topic].result()
