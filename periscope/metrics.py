"""Prometheus metrics of the long-running stages: every name in one place, and the endpoint.

Each stage process (`bronze run`, `silver run`, `score`, `ingest live`, `replay --follow-clock`)
calls `serve_metrics(stage, settings)` once: prometheus-client's HTTP server on
`metrics_host` at the stage's port (`metrics_<stage>_port`, 0 = none). The stages update the
module-level metrics below, labelled by source, through the small `record_*` helpers, which
hold the arithmetic (pure) apart from the prometheus-client calls.

Lag: Spark's Kafka source commits no consumer-group offsets, so bronze's lag is its progress
metrics (`minOffsetsBehindLatest`, `maxOffsetsBehindLatest`, `avgOffsetsBehindLatest`); silver
reads Delta and reports the files it has not read yet (`numFilesOutstanding`). Python Kafka
consumers join a named group (`CONSUMER_GROUPS`) and `ConsumerGroupLag` exports how far each
group is behind the end of its topics, computed from Kafka at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from periscope.settings import Settings

__all__ = [
    "BATCH_SECONDS",
    "CONSUMER_GROUPS",
    "FILES_BEHIND",
    "GOLD_LATENCY_SECONDS",
    "METRIC_NAMES",
    "MODEL_VERSION",
    "OFFSETS_BEHIND",
    "QUARANTINED",
    "RECORDS_IN",
    "RECORDS_OUT",
    "RECORDS_PRODUCED",
    "STAGES",
    "ConsumerGroupLag",
    "ProgressFigures",
    "Stage",
    "consumer_groups",
    "group_lag",
    "metrics_port",
    "offsets_behind_figures",
    "progress_figures",
    "record_bronze_batch",
    "record_gold_round",
    "record_offsets_behind",
    "record_produced",
    "record_progress",
    "record_silver_batch",
    "seconds_since",
    "serve_metrics",
]

log = logging.getLogger(__name__)

Stage = Literal["bronze", "silver", "score", "ingest"]
STAGES: tuple[Stage, ...] = ("bronze", "silver", "score", "ingest")

# Python Kafka consumers of the project and the group each joins (lag is exported per group).
# (`periscope-bronze`: the default of the direct bronze writers' group, setting `bronze_group`.)
CONSUMER_GROUPS: dict[str, str] = {
    "bronze": "periscope-bronze",
    "dashboard": "dashboard-consumers",
}


def consumer_groups(settings: Settings) -> dict[str, str]:
    """`CONSUMER_GROUPS` with the groups these settings name (the direct bronze writers')."""
    return {**CONSUMER_GROUPS, "bronze": settings.bronze_group}


# Micro-batches and scoring rounds take from tens of milliseconds to minutes (a backlog).
_BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Event -> gold: seconds on a live stream, longer while a backlog drains.
_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

# --- the metrics (prometheus-client adds `_total` to counters' names) ---------------------------
RECORDS_IN = Counter(
    "periscope_stage_records_in",
    "Records a stage read: Kafka records (bronze), bronze rows (silver), feature windows and "
    "events (score).",
    ["stage", "source"],
)
RECORDS_OUT = Counter(
    "periscope_stage_records_out",
    "Records a stage wrote: bronze rows, silver observations, gold rows.",
    ["stage", "source"],
)
BATCH_SECONDS = Histogram(
    "periscope_stage_batch_duration_seconds",
    "Duration of a micro-batch (bronze, silver) or a scoring round (score).",
    ["stage", "source"],
    buckets=_BATCH_BUCKETS,
)
OFFSETS_BEHIND = Gauge(
    "periscope_stage_offsets_behind_latest",
    "Kafka offsets between a stage and the end of its topic, over partitions "
    "(stat: min, max, avg), from a Spark query's last progress or the direct writer's last fetch.",
    ["stage", "source", "stat"],
)
FILES_BEHIND = Gauge(
    "periscope_stage_files_behind_latest",
    "Delta files of the upstream table a Spark query has not read yet (silver reads bronze).",
    ["stage", "source"],
)
QUARANTINED = Counter(
    "periscope_silver_quarantined",
    "Bronze records silver put in quarantine (and the DLQ), by reason code.",
    ["source", "reason"],
)
GOLD_LATENCY_SECONDS = Histogram(
    "periscope_gold_latency_seconds",
    "Seconds until a gold row is committed: from the record's Kafka timestamp (kind=event, the "
    "speed layer) or from silver's commit of the window (kind=window).",
    ["source", "kind"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_VERSION = Gauge(
    "periscope_model_version",
    "Registered model version the scorer used in its last round (role: forecast, anomaly, event).",
    ["source", "role", "model"],
)
RECORDS_PRODUCED = Counter(
    "periscope_ingest_records_produced",
    "Records a producer handed to Kafka (a delivery that fails fails the producer's run).",
    ["topic"],
)

METRIC_NAMES: tuple[str, ...] = (
    "periscope_stage_records_in_total",
    "periscope_stage_records_out_total",
    "periscope_stage_batch_duration_seconds",
    "periscope_stage_offsets_behind_latest",
    "periscope_stage_files_behind_latest",
    "periscope_silver_quarantined_total",
    "periscope_gold_latency_seconds",
    "periscope_model_version",
    "periscope_ingest_records_produced_total",
    "periscope_consumer_group_lag",
)


# --- the endpoint --------------------------------------------------------------------------------
def metrics_port(settings: Settings, stage: Stage) -> int:
    """The stage's port from settings (0: no endpoint)."""
    port: int = getattr(settings, f"metrics_{stage}_port")
    return port


def serve_metrics(
    stage: Stage, settings: Settings, *, consumer_groups: Iterable[str] = ()
) -> int | None:
    """Serve this process's metrics for `stage`; returns the port, None when disabled or taken.

    `consumer_groups`: Kafka groups whose lag this endpoint also exports (asked at each
    scrape). A port already in use (a second process of the same stage) is logged, not
    raised: metrics never stop a stream.
    """
    port = metrics_port(settings, stage)
    if not port:
        return None
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=settings.metrics_host)
    except OSError as exc:
        log.warning(
            "%s: no metrics endpoint, %s:%d is taken (%s); set PERISCOPE_METRICS_%s_PORT",
            stage,
            settings.metrics_host,
            port,
            exc.strerror,
            stage.upper(),
        )
        return None
    if consumer_groups:
        REGISTRY.register(ConsumerGroupLag(settings, consumer_groups))
    log.info("%s metrics on http://%s:%d/metrics", stage, settings.metrics_host, port)
    return port


# --- Spark progress ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressFigures:
    """What one Spark micro-batch's progress says, in the metrics' terms."""

    batch_id: int
    rows_in: int
    rows_out: int | None  # None: the sink does not report (foreachBatch)
    seconds: float
    offsets_behind: dict[str, float]  # stat (min, max, avg) -> offsets; empty: not Kafka
    files_behind: float | None  # Delta source: files not read yet


def _get(entry: Any, name: str) -> Any:
    """Progress parts are objects in PySpark 4 and dicts in older versions (and in tests)."""
    if isinstance(entry, Mapping):
        return entry.get(name)
    return getattr(entry, name, None)


def progress_figures(progress: Any) -> ProgressFigures:
    """Figures from one `StreamingQueryProgress` (object or its JSON as a dict).

    >>> progress_figures({"batchId": 3, "numInputRows": 10, "durationMs": {"triggerExecution": 1500},
    ...     "sources": [{"metrics": {"maxOffsetsBehindLatest": "7"}}],
    ...     "sink": {"numOutputRows": 10}}).offsets_behind
    {'max': 7.0}
    """
    behind: dict[str, float] = {}
    files: float | None = None
    for source in _get(progress, "sources") or ():
        metrics = _get(source, "metrics") or {}
        for stat in ("min", "max", "avg"):
            value = metrics.get(f"{stat}OffsetsBehindLatest")
            if value is not None:
                behind[stat] = behind.get(stat, 0.0) + float(value)
        if metrics.get("numFilesOutstanding") is not None:
            files = (files or 0.0) + float(metrics["numFilesOutstanding"])
    sink = _get(progress, "sink")
    out = _get(sink, "numOutputRows") if sink is not None else None
    durations = _get(progress, "durationMs") or {}
    return ProgressFigures(
        batch_id=int(_get(progress, "batchId")),
        rows_in=int(_get(progress, "numInputRows") or 0),
        rows_out=int(out) if out is not None and int(out) >= 0 else None,
        seconds=float(durations.get("triggerExecution", 0)) / 1000.0,
        offsets_behind=behind,
        files_behind=files,
    )


def record_progress(query_name: str, progress: Any) -> None:
    """Export one new micro-batch of a Spark query named `<stage>_<source>`."""
    stage, _, source = query_name.partition("_")
    figures = progress_figures(progress)
    RECORDS_IN.labels(stage, source).inc(figures.rows_in)
    rows_out = figures.rows_out
    if rows_out is None and stage == "bronze":
        rows_out = figures.rows_in  # Spark 4's Delta sink reports -1; bronze lands every record
    if rows_out is not None:
        RECORDS_OUT.labels(stage, source).inc(rows_out)
    if figures.rows_in:  # idle triggers would drown the histogram in zeros
        BATCH_SECONDS.labels(stage, source).observe(figures.seconds)
    for stat, offsets in figures.offsets_behind.items():
        OFFSETS_BEHIND.labels(stage, source, stat).set(offsets)
    if figures.files_behind is not None:
        FILES_BEHIND.labels(stage, source).set(figures.files_behind)


# --- the direct bronze writer (no Spark progress: it reports its batches itself) -----------------
def record_bronze_batch(source: str, *, records: int, seconds: float) -> None:
    """One commit of the direct bronze writer, exported as `record_progress` exports a Spark
    bronze micro-batch: every record read is landed, and the batch took `seconds`."""
    RECORDS_IN.labels("bronze", source).inc(records)
    RECORDS_OUT.labels("bronze", source).inc(records)
    if records:
        BATCH_SECONDS.labels("bronze", source).observe(seconds)


def offsets_behind_figures(offsets: Iterable[int]) -> dict[str, float]:
    """min, max and avg over partitions of the offsets behind the end, as Spark reports them.

    >>> offsets_behind_figures([0, 10, 2])
    {'min': 0, 'max': 10, 'avg': 4.0}
    >>> offsets_behind_figures([])
    {}
    """
    values = list(offsets)
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "avg": sum(values) / len(values)}


def record_offsets_behind(stage: Stage, source: str, offsets: Iterable[int]) -> None:
    """How far a stage is behind the end of its topic, from each partition's offsets behind."""
    for stat, value in offsets_behind_figures(offsets).items():
        OFFSETS_BEHIND.labels(stage, source, stat).set(value)


# --- silver, score, ingest -----------------------------------------------------------------------
def record_silver_batch(
    source: str, *, observations: int, quarantine_reasons: Iterable[str | None]
) -> None:
    """Silver's outputs of one batch: observations written, quarantined rows by reason."""
    RECORDS_OUT.labels("silver", source).inc(observations)
    counts: dict[str, int] = {}
    for reason in quarantine_reasons:
        counts[reason or "unknown"] = counts.get(reason or "unknown", 0) + 1
    for reason, n in counts.items():
        QUARANTINED.labels(source, reason).inc(n)


def seconds_since(starts: Mapping[datetime, int], now: datetime) -> list[tuple[float, int]]:
    """(seconds from the time to `now`, rows) for each distinct start time and its number of
    rows (naive times are UTC).

    >>> seconds_since({datetime(2026, 1, 1, 0, 0, 0): 3}, datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC))
    [(5.0, 3)]
    """
    return [
        ((now - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds(), rows)
        for t, rows in starts.items()
    ]


def record_gold_round(
    source: str,
    *,
    kind: Literal["window", "event"],
    rows_in: int,
    rows_out: int,
    seconds: float,
    since: Mapping[datetime, int],
    committed_at: datetime,
    models: Mapping[str, tuple[str | None, int | None]],
) -> None:
    """One scoring round: rows in and out, its duration, latency per row, the model versions.

    `since` counts the rows by their start (Kafka timestamp of an event, silver's commit of a
    window; `periscope.time.counts_by_time` makes it): a round's windows share a few starts, and
    timing each row by itself was a sixth of the scorer's driver;
    `models` maps a role (forecast, anomaly, event) to (registered name, version).
    """
    RECORDS_IN.labels("score", source).inc(rows_in)
    RECORDS_OUT.labels("score", source).inc(rows_out)
    BATCH_SECONDS.labels("score", source).observe(seconds)
    latency = GOLD_LATENCY_SECONDS.labels(source, kind)
    for seconds_to_gold, rows in seconds_since(since, committed_at):
        for _ in range(rows):
            latency.observe(max(seconds_to_gold, 0.0))
    for role, (model, version) in models.items():
        if model is not None and version is not None:
            MODEL_VERSION.labels(source, role, model).set(version)


def record_produced(topic: str, sent: int) -> None:
    """Records a producer handed to Kafka."""
    RECORDS_PRODUCED.labels(topic).inc(sent)


# --- consumer-group lag --------------------------------------------------------------------------
def group_lag(committed: Mapping[Any, int], ends: Mapping[Any, int]) -> dict[str, int]:
    """Per topic, the records between a group's committed offsets and the partitions' ends.

    Keys are kafka-python `TopicPartition`s (anything with `.topic`); a partition the group
    never committed counts from its start.
    """
    lag: dict[str, int] = {}
    for tp, end in ends.items():
        lag[tp.topic] = lag.get(tp.topic, 0) + max(end - committed.get(tp, 0), 0)
    return lag


class ConsumerGroupLag(Collector):
    """`periscope_consumer_group_lag{group, topic}`, asked from Kafka at each scrape."""

    def __init__(self, settings: Settings, groups: Iterable[str]) -> None:
        self.settings = settings
        self.groups = tuple(groups)

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "periscope_consumer_group_lag",
            "Records between a consumer group's committed offsets and the end of its topics.",
            labels=["group", "topic"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for group, lags in self.lags().items():
            for topic, lag in sorted(lags.items()):
                family.add_metric([group, topic], lag)
        yield family

    def lags(self) -> dict[str, dict[str, int]]:
        """{group: {topic: lag}} for the groups that have committed offsets."""
        from kafka import KafkaAdminClient, KafkaConsumer
        from kafka.errors import KafkaError

        servers = self.settings.kafka_bootstrap_servers.split(",")
        try:
            admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=3000)
            consumer = KafkaConsumer(bootstrap_servers=servers, request_timeout_ms=3000)
        except KafkaError as exc:
            log.warning("consumer-group lag: Kafka not reachable (%s)", exc)
            return {}
        try:
            result: dict[str, dict[str, int]] = {}
            for group in self.groups:
                committed = {
                    tp: meta.offset
                    for tp, meta in (
                        admin.list_group_offsets({group: None}).get(group) or {}
                    ).items()
                    if meta is not None and meta.offset >= 0
                }
                if committed:
                    result[group] = group_lag(committed, consumer.end_offsets(list(committed)))
            return result
        except KafkaError as exc:
            log.warning("consumer-group lag: %s", exc)
            return {}
        finally:
            consumer.close()
            admin.close()
