"""`periscope monitor`: lag and throughput of the running stages, live in the terminal.

Reads each stage's Prometheus endpoint (`metrics_<stage>_port`) twice, an interval apart:
totals come from the second scrape, rates from the difference. `parse_exposition` and
`stage_rows` are the pure part; `scrape` and the command hold the I/O.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from periscope.metrics import STAGES, ConsumerGroupLag, metrics_port
from periscope.output import print_table
from periscope.settings import Settings, get_settings

__all__ = [
    "Samples",
    "StageRow",
    "histogram_quantile",
    "monitor_app",
    "parse_exposition",
    "scrape_stages",
    "stage_rows",
]

# (metric sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_exposition(text: str) -> Samples:
    """Samples of a Prometheus text exposition, keyed by name and labels.

    >>> parse_exposition('x_total{stage="bronze",source="w"} 3.0\\n')
    {('x_total', (('source', 'w'), ('stage', 'bronze'))): 3.0}
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _select(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples named `name` whose labels include `labels`, by their label pairs."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= set(key)}


def _total(samples: Samples, name: str, **labels: str) -> float | None:
    found = _select(samples, name, **labels)
    return sum(found.values()) if found else None


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count}, as Prometheus estimates
    it (linear within the bucket); None when empty.

    >>> histogram_quantile(0.5, {1.0: 2, 2.0: 4, math.inf: 4})
    1.0
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is the best estimate
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class StageRow:
    """One line of the monitor: a stage of one source (or a consumer group's topic)."""

    stage: str
    source: str
    records_in: float | None
    in_per_s: float | None
    records_out: float | None
    out_per_s: float | None
    behind: str  # offsets (bronze), files (silver), or records (consumer groups)
    batch_s: float | None  # mean batch or round duration
    quarantined: float | None
    latency_p95_s: float | None


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or seconds <= 0:
        return None
    return max(now - (before or 0.0), 0.0) / seconds


def _latency_p95(samples: Samples, source: str) -> float | None:
    buckets: dict[float, float] = {}
    for key, value in _select(
        samples, "periscope_gold_latency_seconds_bucket", source=source
    ).items():
        bound = float(dict(key)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value  # window and event kinds together
    return histogram_quantile(0.95, buckets)


def stage_rows(
    before: Mapping[str, Samples], after: Mapping[str, Samples], seconds: float
) -> list[StageRow]:
    """Rows per (stage, source) seen in the later scrape; rates over `seconds` between the two.

    `before`/`after` map a stage name to its endpoint's samples (a stage that did not answer
    is absent).
    """
    rows: list[StageRow] = []
    for stage, samples in after.items():
        earlier = before.get(stage, {})
        sources = sorted(
            {
                dict(key)["source"]
                for (name, key), _ in samples.items()
                if name.startswith("periscope_stage_records_") and dict(key).get("stage") == stage
            }
        )
        for source in sources:
            labels = {"stage": stage, "source": source}
            rin = _total(samples, "periscope_stage_records_in_total", **labels)
            rout = _total(samples, "periscope_stage_records_out_total", **labels)
            count = _total(samples, "periscope_stage_batch_duration_seconds_count", **labels)
            total_s = _total(samples, "periscope_stage_batch_duration_seconds_sum", **labels)
            offsets = _total(samples, "periscope_stage_offsets_behind_latest", stat="max", **labels)
            files = _total(samples, "periscope_stage_files_behind_latest", **labels)
            behind = (
                f"{offsets:,.0f} offsets"
                if offsets is not None
                else f"{files:,.0f} files"
                if files is not None
                else ""
            )
            rows.append(
                StageRow(
                    stage=stage,
                    source=source,
                    records_in=rin,
                    in_per_s=_rate(
                        rin, _total(earlier, "periscope_stage_records_in_total", **labels), seconds
                    ),
                    records_out=rout,
                    out_per_s=_rate(
                        rout,
                        _total(earlier, "periscope_stage_records_out_total", **labels),
                        seconds,
                    ),
                    behind=behind,
                    batch_s=total_s / count if count and total_s is not None else None,
                    quarantined=_total(samples, "periscope_silver_quarantined_total", source=source)
                    if stage == "silver"
                    else None,
                    latency_p95_s=_latency_p95(samples, source) if stage == "score" else None,
                )
            )
        produced = _select(samples, "periscope_ingest_records_produced_total")
        for key, total in sorted(produced.items()):
            topic = dict(key)["topic"]
            earlier_total = _total(earlier, "periscope_ingest_records_produced_total", topic=topic)
            rows.append(
                StageRow(
                    stage,
                    topic,
                    None,
                    None,
                    total,
                    _rate(total, earlier_total, seconds),
                    "",
                    None,
                    None,
                    None,
                )
            )
    return rows


def group_rows(lags: Mapping[str, Mapping[str, int]]) -> list[StageRow]:
    """Consumer groups' lag ({group: {topic: records}}) as monitor rows."""
    return [
        StageRow(
            f"group {group}", topic, None, None, None, None, f"{lag:,} records", None, None, None
        )
        for group, topics in sorted(lags.items())
        for topic, lag in sorted(topics.items())
    ]


# --- I/O -----------------------------------------------------------------------------------------
def stage_urls(settings: Settings) -> dict[str, str]:
    """{stage: metrics URL} for the stages that have an endpoint."""
    return {
        stage: f"http://{settings.metrics_host}:{metrics_port(settings, stage)}/metrics"
        for stage in STAGES
        if metrics_port(settings, stage)
    }


def scrape_stages(urls: Mapping[str, str], *, timeout_s: float = 2.0) -> dict[str, Samples]:
    """Each stage's samples; a stage that does not answer is left out."""
    found: dict[str, Samples] = {}
    for stage, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                found[stage] = parse_exposition(answer.read().decode())
        except OSError:
            continue
    return found


def prometheus_samples(result: list[dict[str, Any]]) -> dict[str, Samples]:
    """Samples per stage from a Prometheus instant query's `data.result` (the job is the stage;
    the labels Prometheus adds, job and instance, are dropped).

    >>> prometheus_samples([{"metric": {"__name__": "x_total", "job": "bronze",
    ...     "instance": "127.0.0.1:9461", "source": "w"}, "value": [1.0, "3"]}])
    {'bronze': {('x_total', (('source', 'w'),)): 3.0}}
    """
    found: dict[str, Samples] = {}
    for series in result:
        labels = dict(series["metric"])
        name, job = labels.pop("__name__"), labels.pop("job", "")
        labels.pop("instance", None)
        found.setdefault(job, {})[(name, tuple(sorted(labels.items())))] = float(series["value"][1])
    return found


def scrape_prometheus(url: str, *, timeout_s: float = 5.0) -> dict[str, Samples]:
    """Every periscope series Prometheus scraped last, per stage (empty when it is down)."""
    query = urllib.parse.urlencode(
        {"query": '{__name__=~"periscope_(stage|silver|gold|model|ingest|consumer)_.*"}'}
    )
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=timeout_s) as answer:
            body = json.loads(answer.read())
    except OSError:
        return {}
    return prometheus_samples(body["data"]["result"])


def _figure(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "" if value is None else fmt.format(value)


def render(rows: Iterable[StageRow], down: Iterable[str], seconds: float) -> Table:
    table = Table(title=f"Periscope stages (rates over {seconds:g} s)")
    for name in (
        "stage",
        "source",
        "in",
        "in/s",
        "out",
        "out/s",
        "behind",
        "batch s",
        "quarantined",
        "gold p95 s",
    ):
        table.add_column(name, justify="left" if name in ("stage", "source", "behind") else "right")
    for r in rows:
        table.add_row(
            r.stage,
            r.source,
            _figure(r.records_in),
            _figure(r.in_per_s, "{:,.1f}"),
            _figure(r.records_out),
            _figure(r.out_per_s, "{:,.1f}"),
            r.behind,
            _figure(r.batch_s, "{:.2f}"),
            _figure(r.quarantined),
            _figure(r.latency_p95_s, "{:.1f}"),
        )
    for stage in down:
        table.add_row(stage, "", "", "", "", "", "[dim]no endpoint: not running[/]", "", "", "")
    return table


def snapshot(
    settings: Settings, interval_s: float, *, groups: bool, prometheus: bool = False
) -> Table:
    """Two scrapes `interval_s` apart (of the stages, or of Prometheus), as a table."""
    urls = stage_urls(settings)
    if prometheus:
        where = f"http://127.0.0.1:{settings.prometheus_port}"
        before = scrape_prometheus(where)
        time.sleep(interval_s)
        after = scrape_prometheus(where)
    else:
        before = scrape_stages(urls)
        time.sleep(interval_s)
        after = scrape_stages(urls)
    rows = stage_rows(before, after, interval_s)
    if groups:
        from periscope.metrics import consumer_groups

        rows += group_rows(ConsumerGroupLag(settings, consumer_groups(settings).values()).lags())
    return render(rows, [s for s in urls if s not in after], interval_s)


monitor_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@monitor_app.callback()
def monitor(
    once: Annotated[bool, typer.Option("--once", help="Print one table and exit.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between scrapes (rates are over this span).")
    ] = 2.0,
    groups: Annotated[
        bool, typer.Option(help="Also ask Kafka for the consumer groups' lag.")
    ] = True,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Read the figures from `periscope services up prometheus` instead of the "
            "stages (use an --interval of at least its scrape interval).",
        ),
    ] = False,
) -> None:
    """Throughput, lag, batch durations, quarantine and gold latency of the running stages,
    from their Prometheus endpoints (bronze, silver, score, ingest)."""
    settings = get_settings()
    console = Console()
    if once:
        print_table(
            snapshot(settings, interval, groups=groups, prometheus=prometheus), console=console
        )
        return
    with Live(
        snapshot(settings, interval, groups=groups, prometheus=prometheus),
        console=console,
        screen=False,
    ) as live:
        try:
            while True:
                live.update(snapshot(settings, interval, groups=groups, prometheus=prometheus))
        except KeyboardInterrupt:
            pass
