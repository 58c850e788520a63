"""What the live dashboard shows, as plain functions over the API's read layer and the lake.

The pages (serving/dashboard_app.py) only lay these out. Gold is read through `serving.reads`
(the warm tables the API keeps), accuracy through `serving.marts`, dependencies through
`serving.health`; what no stage reports yet comes from the lake's own records: each Delta
table's commit history (rows and time per commit), silver's batches and quarantine tables,
and gold's `scored_at`. Figures a stage's Prometheus endpoint may add (offsets behind latest)
are scraped when the endpoint answers and shown as "not reported" when it does not.

`periscope dashboard` (serving/cli.py) starts Streamlit on `serving/dashboard_app.py`.
"""

from __future__ import annotations

import statistics
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from periscope.contracts import CONTRACTS, ForecastTarget, SourceContract
from periscope.lake import delta_dataset
from periscope.settings import Settings
from serving import reads

__all__ = [
    "APP_PATH",
    "MAX_STYLED_ROWS",
    "NOT_REPORTED",
    "STAGE_TABLES",
    "TOP_ROWS",
    "anomaly_feed",
    "commit_history",
    "entity_frame",
    "entity_locations",
    "forecast_band",
    "hourly_target",
    "latency_percentiles",
    "model_versions",
    "observed_series",
    "quarantine_by_reason",
    "read_history",
    "scrape_metrics",
    "score_colour",
    "silver_progress",
    "stage_metrics",
    "stage_throughput",
    "warm_gold_tables",
]

APP_PATH = Path(__file__).with_name("dashboard_app.py")
NOT_REPORTED = "not reported"
# The table each stage writes per source: its commits are that stage's micro-batches.
STAGE_TABLES: tuple[tuple[Literal["bronze", "silver", "gold"], str], ...] = (
    ("bronze", "raw"),
    ("silver", "observations"),
    ("gold", "predictions"),
)
# An Entities grid of more than MAX_STYLED_ROWS is a coloured table of the TOP_ROWS most
# anomalous (the first paint) and a plain (virtualised) data frame of all behind a toggle:
# a page showing a data frame, even in a closed expander, waits for its code (~1.5 MB of JavaScript Streamlit fetches with
# the first one: 1-2 s of a busy 2-core machine), and a styled table of 1,000 rows takes 15 s.
MAX_STYLED_ROWS = 300
TOP_ROWS = 20
# Stages that may serve Prometheus metrics (settings `metrics_<stage>_port`, 0 = none).
METRIC_STAGES = ("ingest", "bronze", "silver", "score")


def warm_gold_tables(settings: Settings) -> dict[str, int | None]:
    """Read every source's gold table into this process's shared warm tables, and import what
    the pages draw with: `periscope dashboard` runs this beside Streamlit's start, so the first
    visitor's page does not wait for them. Returns the windows read per source (0: no gold
    table yet; None: the table is there but could not be read, see the log)."""
    from deltalake import DeltaTable

    windows: dict[str, int | None] = {}
    for contract in CONTRACTS.values():
        path = reads.gold_path(settings, contract)
        table = reads.shared_gold(path, contract, refresh_s=settings.dashboard_refresh_s)
        snapshot = table.snapshot()
        unread = snapshot.version is None and DeltaTable.is_deltatable(path)
        windows[contract.name] = None if unread else snapshot.index.num_rows
    import altair  # noqa: F401  (the Series page's charts: ~1 s to import on a busy core)
    import pydeck  # noqa: F401  (the Entities map)

    return windows


# --- entities ----------------------------------------------------------------------------------
def entity_locations(contract: SourceContract, data_dir: Path) -> dict[str, tuple[float, float]]:
    """Each entity's (latitude, longitude) when the source's reader knows them, else {}.

    Readers are duck-typed: one with a `locations(data_dir)` method has coordinates (weather's
    cities); the others are drawn as a grid."""
    try:
        locate = getattr(contract.dataset_reader(), "locations", None)
        return dict(locate(data_dir)) if locate is not None else {}
    except Exception:  # no reader, or its files are not here: no map, not an error
        return {}


def score_colour(score: float | None) -> str:
    """A hex colour from green (0) through amber to red (1); grey for no score.

    >>> score_colour(0.0), score_colour(1.0), score_colour(None)
    ('#1a9850', '#d73027', '#9e9e9e')
    """
    if score is None or score != score:  # None or NaN
        return "#9e9e9e"
    t = min(max(float(score), 0.0), 1.0)
    low, mid, high = (0x1A, 0x98, 0x50), (0xFE, 0xE0, 0x8B), (0xD7, 0x30, 0x27)
    a, b, u = (low, mid, t * 2) if t <= 0.5 else (mid, high, (t - 0.5) * 2)
    r, g, bl = (round(x + (y - x) * u) for x, y in zip(a, b, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


def entity_frame(
    snapshot: reads.GoldSnapshot, locations: Mapping[str, tuple[float, float]]
) -> pd.DataFrame:
    """One row per entity with gold windows: latest score and flag, windows, last window,
    its colour, and latitude/longitude where known. Most anomalous first."""
    rows = reads.entities(snapshot)
    frame = pd.DataFrame(
        rows,
        columns=[
            "entity_id",
            "windows",
            "first_window_start",
            "last_window_start",
            "anomaly_score",
            "is_anomaly",
        ],
    )
    frame["colour"] = [score_colour(s) for s in frame["anomaly_score"]]
    frame["latitude"] = [locations.get(e, (None, None))[0] for e in frame["entity_id"]]
    frame["longitude"] = [locations.get(e, (None, None))[1] for e in frame["entity_id"]]
    return frame.sort_values(
        ["anomaly_score", "entity_id"], ascending=[False, True], na_position="last"
    ).reset_index(drop=True)


# --- the series view ---------------------------------------------------------------------------
def read_history(
    snapshot: reads.GoldSnapshot, entity_id: str, *, hours: int
) -> list[dict[str, Any]]:
    """The entity's newest windows over `hours` hours of window starts, with their forecasts."""
    latest = snapshot.latest.get(entity_id)
    if latest is None:
        return []
    end = latest[reads.WINDOW_START]
    found = reads.history(
        snapshot,
        entity_id,
        end - timedelta(hours=hours),
        end,
        limit=10_000,
        read_forecasts=reads.read_forecasts,
    )
    return found or []


def forecast_band(
    windows: Iterable[Mapping[str, Any]], measure: str, horizon_h: int
) -> pd.DataFrame:
    """The `horizon_h`-hour-ahead forecasts of one measure made by these windows: target_time,
    yhat and its 80% band (yhat_lower, yhat_upper). Later windows win a shared target time."""
    points: dict[Any, dict[str, Any]] = {}
    for window in windows:
        for f in window.get(reads.FORECASTS) or ():
            if f["measure"] == measure and f["horizon_h"] == horizon_h:
                points[f["target_time"]] = {
                    "target_time": _naive(f["target_time"]),
                    "yhat": f["yhat"],
                    "yhat_lower": f["yhat_lower"],
                    "yhat_upper": f["yhat_upper"],
                }
    frame = pd.DataFrame(
        list(points.values()), columns=["target_time", "yhat", "yhat_lower", "yhat_upper"]
    )
    return frame.sort_values("target_time").reset_index(drop=True)


def hourly_target(
    observations: pd.DataFrame, target: ForecastTarget, time_column: str = "event_time"
) -> pd.DataFrame:
    """The series a forecast target predicts, from observations: per hour, the mean or sum of
    its field or the count of events (or of the field's values). Columns: hour, value.

    >>> obs = pd.DataFrame({"event_time": pd.to_datetime(["2026-01-01 00:10", "2026-01-01 00:50",
    ...                     "2026-01-01 01:05"]), "t": [1.0, 3.0, 5.0]})
    >>> hourly_target(obs, ForecastTarget("t")).value.tolist()
    [2.0, 5.0]
    >>> hourly_target(obs, ForecastTarget(None, "count")).value.tolist()
    [2, 1]
    """
    if observations.empty:
        return pd.DataFrame({"hour": pd.Series(dtype="datetime64[us]"), "value": []})
    hours = observations[time_column].dt.floor("h")
    if target.field is None:
        values = observations.groupby(hours).size()
    else:
        grouped = observations.groupby(hours)[target.field]
        values = getattr(grouped, target.aggregate)()
    return pd.DataFrame({"hour": values.index, "value": values.to_numpy()}).reset_index(drop=True)


def observed_series(
    settings: Settings,
    contract: SourceContract,
    entity_id: str,
    target: ForecastTarget,
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    """One entity's hourly observed values of a forecast target, from silver observations
    (delta-rs with the entity and time pushed down as a filter; no SQL)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = settings.lake_path(contract.table("silver", "observations"))
    columns = [contract.key_field, "event_time"]
    if target.field is not None:
        columns.append(target.field)
    start_s, end_s = (
        pa.scalar(start, pa.timestamp("us", "UTC")),
        pa.scalar(end, pa.timestamp("us", "UTC")),
    )
    try:
        # Only the files that may hold the span: a live table gains one every micro-batch.
        dataset = delta_dataset(DeltaTable(path), {"event_time": (start_s, end_s)})
    except TableNotFoundError:
        return hourly_target(pd.DataFrame(), target)
    key = pc.field(contract.key_field)
    when = pc.field("event_time")
    table = dataset.to_table(
        columns=columns, filter=(key == entity_id) & (when >= start_s) & (when < end_s)
    )
    frame = table.to_pandas()
    frame["event_time"] = frame["event_time"].dt.tz_convert(None)
    return hourly_target(frame, target)


def anomaly_feed(snapshots: Iterable[reads.GoldSnapshot], *, limit: int) -> pd.DataFrame:
    """Flagged windows of every source, newest first (the API's /anomalies)."""
    rows = reads.anomalies(snapshots, None, limit)
    columns = ["window_start", "source", "entity_id", "anomaly_score", "anomaly_kind",
               "anomaly_model", "anomaly_version", "scored_at"]  # fmt: skip
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def model_versions(
    snapshots: Iterable[reads.GoldSnapshot], champions: Mapping[str, int | None]
) -> pd.DataFrame:
    """Per source and model: the versions scoring the newest window of its entities (how many
    entities each) beside the registry's champion (None: unknown yet or none)."""
    counts: dict[tuple[str, str, str, int | None], int] = {}
    for snap in snapshots:
        for row in snap.latest.values():
            for kind in ("forecast", "anomaly"):
                name = row.get(f"{kind}_model")
                if name:
                    key = (snap.source, kind, name, row.get(f"{kind}_version"))
                    counts[key] = counts.get(key, 0) + 1
    rows = [
        {
            "source": s,
            "kind": k,
            "model": m,
            "version": v,
            "entities": n,
            "champion": champions.get(m),
        }  # fmt: skip
        for (s, k, m, v), n in sorted(counts.items(), key=lambda i: (i[0][:3], i[0][3] or 0))
    ]
    return pd.DataFrame(
        rows, columns=["source", "kind", "model", "version", "entities", "champion"]
    )


# --- system health -----------------------------------------------------------------------------
def commit_history(path: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """A Delta table's newest commits (newest first), or [] when it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return list(DeltaTable(path).history(limit))
    except TableNotFoundError:
        return []


def _rows_written(commit: Mapping[str, Any]) -> int:
    """Rows a commit added: Spark's streaming appends say numOutputRows, delta-rs writes
    num_added_rows, delta-rs MERGEs num_target_rows_inserted (+ updated: rescored windows)."""
    m = commit.get("operationMetrics") or {}
    for name in ("numOutputRows", "num_added_rows"):
        if name in m:
            return int(m[name])
    return int(m.get("num_target_rows_inserted", 0)) + int(m.get("num_target_rows_updated", 0))


def _duration_ms(commit: Mapping[str, Any]) -> float | None:
    m = commit.get("operationMetrics") or {}
    value = m.get("execution_time_ms", m.get("executionTimeMs"))
    return None if value is None else float(value)


def stage_throughput(
    commits: Sequence[Mapping[str, Any]], now: datetime, *, window_s: float = 300.0
) -> dict[str, Any]:
    """From a table's commit history: records/s over the last `window_s`, its commits (micro-
    batches) there, the median commit duration where the writer reports one, and how long ago
    the last commit was (how far the stage is behind when its input keeps coming)."""
    data = [c for c in commits if c.get("operation") not in ("CREATE TABLE", "SET TBLPROPERTIES")]
    since = (now.timestamp() - window_s) * 1000
    recent = [c for c in data if c.get("timestamp", 0) >= since]
    durations = [d for d in (_duration_ms(c) for c in recent) if d is not None]
    last = max((c["timestamp"] for c in data if "timestamp" in c), default=None)
    return {
        "records_per_s": round(sum(_rows_written(c) for c in recent) / window_s, 2),
        "batches": len(recent),
        "median_batch_ms": statistics.median(durations) if durations else None,
        "last_commit_age_s": None if last is None else round(now.timestamp() - last / 1000, 1),
    }


def silver_progress(path: str, now: datetime) -> dict[str, Any] | None:
    """Silver's newest batch (its `_batches` table): how long ago it ran, how far its watermark
    trails the newest event time, and its rows. None: silver has not run."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(path).to_pyarrow_table()
    except TableNotFoundError:
        return None
    if table.num_rows == 0:
        return None
    last = table.sort_by([("batch_id", "descending")]).slice(0, 1).to_pylist()[0]
    processed, event, mark = last["processed_at"], last["max_event_time"], last["watermark"]
    return {
        "batch_id": last["batch_id"],
        "last_batch_age_s": round((now - processed).total_seconds(), 1) if processed else None,
        "watermark_delay_s": (event - mark).total_seconds() if event and mark else None,
        "bronze_rows": last["bronze_rows"],
        "observations": last["observations"],
        "quarantined": last["quarantined"],
    }


def quarantine_by_reason(path: str) -> dict[str, int]:
    """Silver's quarantine counted by reason code (only that column is read)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        reasons = DeltaTable(path).to_pyarrow_table(columns=["reason"]).column("reason")
    except TableNotFoundError:
        return {}
    counts = pc.value_counts(reasons).to_pylist()
    return dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda i: -i[1]))


def latency_percentiles(snapshot: reads.GoldSnapshot, *, newest: int = 500) -> dict[str, Any]:
    """Window end -> gold (scored_at) latency of the `newest` windows: p50 and p95 in seconds.
    A replay of history scores old windows, so this means something on a live stream."""
    index = snapshot.index
    if index.num_rows == 0 or "scored_at" not in index.column_names:
        return {"p50_s": None, "p95_s": None, "windows": 0}
    rows = index.sort_by([("window_end", "descending")]).slice(0, newest)
    lag = pc.subtract(rows.column("scored_at"), rows.column("window_end"))
    seconds = pc.divide(pc.cast(lag, pa.int64()), 1_000_000).to_numpy(zero_copy_only=False)
    return {
        "p50_s": round(float(pd.Series(seconds).quantile(0.5)), 1),
        "p95_s": round(float(pd.Series(seconds).quantile(0.95)), 1),
        "windows": len(seconds),
    }


def scrape_metrics(url: str, *, timeout_s: float = 1.0) -> dict[str, float] | None:
    """A Prometheus endpoint's samples as {"name{labels}": value}; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (settings' URL)
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def stage_metrics(settings: Settings, stages: Sequence[str] = METRIC_STAGES) -> pd.DataFrame:
    """What each stage's Prometheus endpoint reports about lag and batch time: samples whose
    name speaks of offsets behind, lag, latency or batch duration. A stage without an endpoint
    setting, or whose endpoint does not answer, is one row saying "not reported"."""
    host = getattr(settings, "metrics_host", "127.0.0.1")
    rows: list[dict[str, Any]] = []
    for stage in stages:
        port = getattr(settings, f"metrics_{stage}_port", 0)
        samples = scrape_metrics(f"http://{host}:{port}/metrics") if port else None
        wanted = {
            name: value
            for name, value in (samples or {}).items()
            if any(w in name for w in ("behind", "lag", "latency", "batch_duration"))
            and not name.split("{")[0].endswith(("_created", "_bucket"))
        }
        if not wanted:
            rows.append({"stage": stage, "metric": NOT_REPORTED, "value": None})
        rows += [{"stage": stage, "metric": n, "value": v} for n, v in _means(wanted).items()]
    return pd.DataFrame(rows, columns=["stage", "metric", "value"])


def _means(samples: Mapping[str, float]) -> dict[str, float]:
    """A histogram's `_sum` and `_count` as one mean (`<name>_mean{labels}`), the rest as they are.

    >>> _means({"x_seconds_sum{a=1}": 6.0, "x_seconds_count{a=1}": 3.0, "y_behind": 2.0})
    {'x_seconds_mean{a=1}': 2.0, 'y_behind': 2.0}
    """
    found: dict[str, float] = {}
    for name, value in sorted(samples.items()):
        base, brace, labels = name.partition("{")
        if base.endswith("_sum"):
            count = samples.get(f"{base.removesuffix('_sum')}_count{brace}{labels}")
            if count:
                found[f"{base.removesuffix('_sum')}_mean{brace}{labels}"] = value / count
                continue
        if (
            base.endswith("_count")
            and f"{base.removesuffix('_count')}_sum{brace}{labels}" in samples
        ):
            continue
        found[name] = value
    return found


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
