"""The pure parts of the stages' metrics: Spark progress, latencies, group lag, the endpoint."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace

from kafka import TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from periscope import metrics
from periscope.settings import Settings

BRONZE_PROGRESS = {
    "batchId": 4,
    "numInputRows": 1200,
    "durationMs": {"triggerExecution": 2500, "addBatch": 2000},
    "sources": [
        {
            "description": "KafkaV2[Subscribe[weather-raw]]",
            "metrics": {
                "avgOffsetsBehindLatest": "12.5",
                "maxOffsetsBehindLatest": "40",
                "minOffsetsBehindLatest": "0",
            },
        }
    ],
    "sink": {"numOutputRows": 1200},
}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_progress_figures_read_kafka_lag_rows_and_duration():
    figures = metrics.progress_figures(BRONZE_PROGRESS)
    assert figures.batch_id == 4
    assert figures.rows_in == 1200 and figures.rows_out == 1200
    assert figures.seconds == 2.5
    assert figures.offsets_behind == {"min": 0.0, "max": 40.0, "avg": 12.5}
    assert figures.files_behind is None


def test_progress_figures_of_a_delta_source_and_a_foreach_batch_sink():
    progress = SimpleNamespace(  # PySpark 4 hands objects, not dicts
        batchId=2,
        numInputRows=30,
        durationMs={"triggerExecution": 400},
        sources=[SimpleNamespace(metrics={"numFilesOutstanding": "3", "numBytesOutstanding": "9"})],
        sink=SimpleNamespace(numOutputRows=-1),
    )
    figures = metrics.progress_figures(progress)
    assert figures.rows_out is None  # foreachBatch reports -1: silver counts its own outputs
    assert figures.files_behind == 3.0
    assert figures.offsets_behind == {}


def test_record_progress_moves_the_bronze_series():
    before = _value("periscope_stage_records_in_total", stage="bronze", source="unit_a")
    metrics.record_progress("bronze_unit_a", BRONZE_PROGRESS)
    metrics.record_progress("bronze_unit_a", {**BRONZE_PROGRESS, "numInputRows": 0})
    labels = {"stage": "bronze", "source": "unit_a"}
    assert _value("periscope_stage_records_in_total", **labels) == before + 1200
    assert _value("periscope_stage_records_out_total", **labels) >= 1200
    # The idle trigger is not a batch: one observation only.
    assert _value("periscope_stage_batch_duration_seconds_count", **labels) == 1
    assert _value("periscope_stage_offsets_behind_latest", stat="max", **labels) == 40


def test_silver_batch_counts_quarantine_by_reason():
    metrics.record_silver_batch(
        "unit_b", observations=5, quarantine_reasons=["bad_json", "bad_json", None, "out_of_range"]
    )
    assert _value("periscope_silver_quarantined_total", source="unit_b", reason="bad_json") == 2
    assert _value("periscope_silver_quarantined_total", source="unit_b", reason="unknown") == 1
    assert _value("periscope_stage_records_out_total", stage="silver", source="unit_b") == 5


def test_seconds_since_treats_naive_times_as_utc_and_keeps_each_times_rows():
    now = datetime(2026, 11, 29, 12, 0, 10, tzinfo=UTC)
    starts = {datetime(2026, 11, 29, 12, 0, 0): 2, datetime(2026, 11, 29, 11, 0, tzinfo=UTC): 1}
    assert metrics.seconds_since(starts, now) == [(10.0, 2), (3610.0, 1)]


def test_gold_round_observes_latency_per_row_and_model_versions():
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    metrics.record_gold_round(
        "unit_c",
        kind="event",
        rows_in=3,
        rows_out=3,
        seconds=0.8,
        since={datetime(2026, 11, 29, 11, 59, 58, tzinfo=UTC): 3},
        committed_at=now,
        models={"event": ("unit_c_trip_duration", 7), "anomaly": ("unit_c_anomaly", None)},
    )
    latency = {"source": "unit_c", "kind": "event"}
    assert _value("periscope_gold_latency_seconds_count", **latency) == 3
    assert _value("periscope_gold_latency_seconds_sum", **latency) == 6.0
    assert _value("periscope_gold_latency_seconds_bucket", le="1.0", **latency) == 0
    assert _value("periscope_gold_latency_seconds_bucket", le="2.0", **latency) == 3
    version = {"source": "unit_c", "role": "event", "model": "unit_c_trip_duration"}
    assert _value("periscope_model_version", **version) == 7
    # No version, no series (a model without a champion is not version 0).
    assert (
        REGISTRY.get_sample_value(
            "periscope_model_version",
            {"source": "unit_c", "role": "anomaly", "model": "unit_c_anomaly"},
        )
        is None
    )


def test_group_lag_sums_partitions_per_topic_and_counts_uncommitted_from_the_start():
    ends = {TopicPartition("t", 0): 100, TopicPartition("t", 1): 50, TopicPartition("u", 0): 5}
    committed = {TopicPartition("t", 0): 90, TopicPartition("t", 1): 50}
    assert metrics.group_lag(committed, ends) == {"t": 10, "u": 5}


def test_every_declared_name_is_registered():
    exposed = {f.name for f in text_string_to_metric_families(_exposition())}
    names = {n.removesuffix("_total") for n in metrics.METRIC_NAMES}
    # The group-lag collector is registered by the processes that consume (not at import).
    assert names - exposed == {"periscope_consumer_group_lag"}


def _exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_metrics_serves_on_the_stage_port_and_skips_when_disabled_or_taken():
    free_port = _free_port()
    unit_settings = Settings()  # type: ignore[call-arg]
    settings = unit_settings.model_copy(update={"metrics_ingest_port": free_port})
    assert metrics.serve_metrics("ingest", settings) == free_port
    metrics.record_produced("unit-raw", 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'periscope_ingest_records_produced_total{topic="unit-raw"} 3.0' in text
    assert metrics.serve_metrics("ingest", settings) is None  # taken: logged, not raised
    disabled = unit_settings.model_copy(update={"metrics_ingest_port": 0})
    assert metrics.serve_metrics("ingest", disabled) is None
