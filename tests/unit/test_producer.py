"""The ingest producer without a broker: the wire encoding, and failing loudly."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from ingest.producer import (
    DeliveryReport,
    ProduceError,
    build_producer,
    check_topic,
    encode_record,
    send_all,
)
from periscope.settings import Settings

NOWHERE = Settings(kafka_bootstrap_servers="127.0.0.1:1")  # nothing listens on port 1


def _old_encoding(record):
    """What the kafka-python producer sent: the standard library, NaN as null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    return json.dumps(clean, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@pytest.mark.parametrize(
    "record",
    [
        {"station_id": "toronto", "timestamp": "2026-03-06T02:00:00Z", "temperature": 0.5},
        {"station_id": "zürich", "humidity": 80.0, "pressure": 1001.5, "wind_direction": None},
        {"station_id": 'a "quoted"\\ \n name', "count": 3, "ok": True, "temperature": -12.25},
        {"station_id": "s", "temperature": float("nan"), "humidity": 0.1 + 0.2},
    ],
)
def test_encoding_is_byte_for_byte_the_former_wire_format(record):
    assert encode_record(record) == _old_encoding(record)


def test_encoding_nulls_what_json_cannot_say_and_takes_numpy_numbers():
    record = {"a": float("nan"), "b": float("inf"), "c": np.float64(1.5), "d": np.int64(7)}
    assert json.loads(encode_record(record)) == {"a": None, "b": None, "c": 1.5, "d": 7}
    assert encode_record({"a": np.float64("nan")}) == b'{"a":null}'


def test_encoding_refuses_datetimes_and_unknown_types():
    # The wire format is a string like 2026-03-06T02:00:00Z: an encoder's own rendering of a
    # datetime (with +00:00) would be a different format, so it must be made by the caller.
    with pytest.raises(TypeError):
        encode_record({"timestamp": datetime(2026, 3, 6, tzinfo=UTC)})
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_record({"x": object()})


def test_send_all_raises_unless_every_record_is_acknowledged():
    producer = build_producer(NOWHERE, **{"message.timeout.ms": 300})
    progress: list[int] = []
    try:
        with pytest.raises(
            ProduceError, match=r"weather-raw: 0 of 3 records acknowledged, 3 failed, 0 unsent"
        ):
            send_all(producer, "weather-raw", [(b"k", b"v")] * 3, on_sent=progress.append)
    finally:
        producer.close(0.1)
    assert sum(progress) == 3


def test_check_topic_says_when_no_broker_answers():
    producer = build_producer(NOWHERE)
    try:
        with pytest.raises(ProduceError, match="cannot reach Kafka at 127.0.0.1:1"):
            check_topic(producer, "weather-raw", NOWHERE, timeout_s=0.5)
    finally:
        producer.close(0.1)


def test_a_report_counts_only_what_was_neither_refused_nor_left_unsent():
    assert DeliveryReport(sent=10, failed=2, unsent=3).acknowledged == 5
    assert DeliveryReport(sent=4).acknowledged == 4
