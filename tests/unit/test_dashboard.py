"""The live dashboard's pages run by Streamlit's AppTest over a small real Delta lake.

The lake is the API tests' (tests/unit/test_api_lake.py: 3 weather stations x 48 windows, one
air-quality station, no taxi gold) plus silver observations, batches and quarantine written
here. Kafka and Postgres point at ports where nothing listens: pages must say what is missing
instead of failing. Station coordinates come from the shared weather data (read in place).
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from streamlit.testing.v1 import AppTest

from periscope.contracts import CONTRACTS
from periscope.settings import PROJECT_DIR, get_settings
from serving import dashboard, reads
from tests.unit.test_api_lake import (
    HOURS,
    STATIONS,
    T0,
    closed_port,
    gold_rows,
    score,
    write_gold_lake,
    yhat,
)

APP = str(dashboard.APP_PATH)
SHARED = PROJECT_DIR.parent / "shared"
TS = pa.timestamp("us", tz="UTC")
QUARANTINED = {"out_of_range": 3, "unparseable": 1}


def temperature(station: str, hour: int) -> float:
    return 10.0 + STATIONS.index(station) + hour / 10


def write_silver(root) -> None:
    """Hourly weather observations of the gold windows' span (two readings an hour), one batch
    row and a quarantine with known reasons."""
    rows = [
        {
            "station_id": s,
            "event_time": T0 + timedelta(hours=h, minutes=m),
            "temperature": temperature(s, h) + (0.5 if m else -0.5),
            "humidity": 50.0,
            "pressure": 1000.0,
        }  # fmt: skip
        for s in STATIONS
        for h in range(HOURS + 8)
        for m in (0, 30)
    ]
    schema = pa.schema(
        [
            ("station_id", pa.string()),
            ("event_time", TS),
            ("temperature", pa.float64()),
            ("humidity", pa.float64()),
            ("pressure", pa.float64()),
        ]  # fmt: skip
    )
    write_deltalake(
        str(root / "silver" / "weather_observations"), pa.Table.from_pylist(rows, schema)
    )
    reasons = [r for r, n in QUARANTINED.items() for _ in range(n)]
    write_deltalake(
        str(root / "silver" / "weather_quarantine"),
        pa.table({"reason": reasons, "station_id": ["denver"] * len(reasons)}),
    )
    now = datetime.now(UTC)
    batch = {
        "batch_id": [7], "bronze_rows": [len(rows) + 4], "observations": [len(rows)],
        "quarantined": [4], "duplicates": [0], "late": [0], "windows_updated": [10],
        "max_event_time": [now - timedelta(minutes=5)], "watermark": [now - timedelta(hours=6, minutes=5)],
        "processed_at": [now - timedelta(seconds=30)],
    }  # fmt: skip
    write_deltalake(str(root / "silver" / "weather_batches"), pa.table(batch))


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashlake")
    write_gold_lake(root)
    write_silver(root)
    return root


@pytest.fixture
def app(lake, monkeypatch):
    """The dashboard's settings come from the environment, as when `periscope dashboard` runs."""
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(lake))
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(lake / ".local"))
    monkeypatch.setenv("PERISCOPE_SHARED_DIR", str(SHARED))
    monkeypatch.setenv("PERISCOPE_KAFKA_PORT", str(closed_port()))
    monkeypatch.setenv("PERISCOPE_POSTGRES_PORT", str(closed_port()))
    for stage in dashboard.METRIC_STAGES:  # no stage serves metrics here
        monkeypatch.setenv(f"PERISCOPE_METRICS_{stage.upper()}_PORT", str(closed_port()))
    get_settings.cache_clear()
    yield AppTest.from_file(APP, default_timeout=60)
    get_settings.cache_clear()


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    at.sidebar.radio[0].set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def table_text(at: AppTest) -> str:
    return "\n".join(str(t.value) for t in at.table)


def test_entities_page_shows_every_source_and_colours_stations_by_score(app):
    at = open_page(app, "Entities")
    assert [t.label for t in at.tabs] == list(CONTRACTS)
    weather_tab, air_tab, taxi_tab = at.tabs
    metrics = {m.label: m.value for m in weather_tab.metric}
    assert metrics["stations"] == "3"
    # every 10th hour is flagged: hour 47 is not, so no station is anomalous now
    assert metrics["anomalous now"] == "0"
    assert {m.label: m.value for m in air_tab.metric}["stations"] == "1"
    weather = weather_tab.table[0].value
    assert sorted(weather["station_id"]) == sorted(STATIONS)
    by_station = dict(zip(weather["station_id"], weather["anomaly_score"], strict=True))
    assert by_station["seattle"] == pytest.approx(score("seattle", HOURS - 1))
    # weather's stations are cities with coordinates: a map; taxi has no gold yet: said so
    (deck,) = weather_tab.get("deck_gl_json_chart")
    dots = next(
        x for x in json.loads(deck.proto.json)["layers"] if x["@@type"] == "ScatterplotLayer"
    )
    points = dots["data"]
    assert len(points) == 3 and all(-180 <= p["longitude"] <= 180 for p in points)
    assert not air_tab.get("deck_gl_json_chart")  # no coordinates: a grid only
    assert [i.value for i in taxi_tab.info] == ["No zone of taxi has a gold window yet."]


def test_many_entities_show_the_most_anomalous_first_then_all_in_a_grid(tmp_path, monkeypatch):
    many = [f"s{i:04d}" for i in range(dashboard.MAX_STYLED_ROWS + 1)]
    scores = [(i * 7919) % len(many) / len(many) for i in range(len(many))]  # shuffled
    many[1], scores[1] = "s<b>&", 1.0  # the most anomalous, named with markup
    rows = gold_rows("station_id", tuple(many), range(0, 1), new_columns=True)
    rows = rows.set_column(
        rows.schema.get_field_index("anomaly_score"), "anomaly_score", pa.array(scores)
    )
    write_deltalake(str(tmp_path / "gold" / "weather_predictions"), rows)
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path))
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path / ".local"))
    monkeypatch.setenv("PERISCOPE_SHARED_DIR", str(tmp_path))  # no coordinates: no map
    get_settings.cache_clear()
    try:
        at = open_page(AppTest.from_file(APP, default_timeout=60), "Entities")
    finally:
        get_settings.cache_clear()
    weather_tab = at.tabs[0]
    by_score = [s for _, s in sorted(zip(scores, many, strict=True), reverse=True)]
    # The top table is plain HTML (no Arrow code to fetch first): its rows in score order
    (top,) = weather_tab.get("html")
    shown = re.findall(r">(s\d{4}|s&lt;b&gt;&amp;)<", top.value)
    assert shown == [html.escape(s) for s in by_score[: dashboard.TOP_ROWS]]
    assert "<b>" not in top.value  # a name is text, never markup
    assert "background-color: #" in top.value  # each score's cell in its colour
    # No grid until asked for: the table paints without waiting for the grid's code
    assert not weather_tab.dataframe
    (every,) = weather_tab.toggle
    assert every.label == f"Show every station ({len(many)})"
    every.set_value(True).run()
    grid = at.tabs[0].dataframe[0].value
    assert sorted(grid["station_id"]) == sorted(many)


def test_series_page_draws_observations_forecasts_and_flags(app):
    at = open_page(app, "Series")
    assert at.selectbox[0].value == "weather"
    at.selectbox[1].set_value("portland").run()
    metrics = {m.label: m.value for m in at.metric}
    # 72 hours of window starts back from the last (hour 47): all 48 windows, 5 flagged (0..40)
    assert metrics["windows"] == "48"
    assert metrics["flagged"] == "5"
    assert int(metrics["observed hours"]) >= HOURS
    (chart,) = at.get("vega_lite_chart")
    marks = [layer["mark"]["type"] for layer in json.loads(chart.proto.spec)["layer"]]
    assert marks == [
        "area",
        "line",
        "line",
        "line",
        "rule",
    ]  # band, yhat, newest path, observed, flags


def test_anomaly_feed_lists_flagged_windows_newest_first(app):
    at = open_page(app, "Anomalies")
    frame = at.dataframe[0].value
    # 3 stations x 5 flagged hours, plus air quality's hour 0
    assert len(frame) == 3 * 5 + 1
    assert list(frame["window_start"]) == sorted(frame["window_start"], reverse=True)
    assert set(frame["anomaly_score"]) == {0.95}


def test_live_feed_page_says_nothing_arrived_while_kafka_is_down(app):
    at = open_page(app, "Live feed")
    assert "dashboard-consumers" in at.caption[0].value
    (note,) = at.info
    assert note.value.startswith("No prediction has arrived since the feed started")


def test_models_page_shows_versions_and_says_the_warehouse_is_unreachable(app):
    at = open_page(app, "Models")
    versions = at.table[0].value
    weather = versions[versions["source"] == "weather"]
    assert set(zip(weather["model"], weather["version"], weather["entities"], strict=True)) == {
        ("weather_forecast", 2, 3),
        ("weather_anomaly", 1, 3),
    }
    assert any("the marts cannot be read" in i.value for i in at.info)


def test_health_page_reports_throughput_lag_latency_and_quarantine(app):
    at = open_page(app, "System health")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Kafka": "down", "Postgres": "down"}
    text = table_text(at)
    assert "out_of_range" in text and "unparseable" in text
    quarantine = at.table[-1].value
    assert dict(zip(quarantine["reason"], quarantine["records"], strict=True)) == QUARANTINED
    behind = next(t.value for t in at.table if "watermark_delay_s" in t.value.columns)
    assert [float(v) for v in behind["watermark_delay_s"]] == [6 * 3600.0]
    assert 25 <= float(behind["last_batch_age_s"][0]) < 600
    # no stage serves Prometheus metrics here: each says so
    scraped = next(t.value for t in at.table if "metric" in t.value.columns)
    assert set(scraped["metric"]) == {dashboard.NOT_REPORTED}
    latency = next(t.value for t in at.table if "p95_s" in t.value.columns)
    weather = latency[latency["source"] == "weather"].iloc[0]
    assert float(weather["p50_s"]) == 60.0  # gold scored each window a minute after it closed


# --- the pure functions ------------------------------------------------------------------------
def test_stage_throughput_counts_rows_of_recent_commits_only():
    now = datetime(2026, 11, 1, 12, tzinfo=UTC)
    ms = lambda seconds_ago: (now.timestamp() - seconds_ago) * 1000  # noqa: E731
    commits = [
        {"timestamp": ms(10), "operation": "WRITE",
         "operationMetrics": {"num_added_rows": 600, "execution_time_ms": 40}},
        {"timestamp": ms(100), "operation": "STREAMING UPDATE",
         "operationMetrics": {"numOutputRows": "900"}},
        {"timestamp": ms(200), "operation": "MERGE",
         "operationMetrics": {"num_target_rows_inserted": 30, "num_target_rows_updated": 0,
                              "execution_time_ms": 20}},
        {"timestamp": ms(1000), "operation": "WRITE", "operationMetrics": {"num_added_rows": 10**6}},
    ]  # fmt: skip
    figures = dashboard.stage_throughput(commits, now, window_s=300)
    assert figures == {
        "records_per_s": round(1530 / 300, 2),
        "batches": 3,
        "median_batch_ms": 30.0,
        "last_commit_age_s": 10.0,
    }


def test_forecast_band_keeps_one_horizon_of_one_measure():
    forecasts = [
        {"measure": m, "horizon_h": h, "target_time": T0 + timedelta(hours=h),
         "yhat": yhat("denver", 0, m, h), "yhat_lower": 0.0, "yhat_upper": 2.0}
        for m in ("temperature", "humidity") for h in (1, 2)
    ]  # fmt: skip
    band = dashboard.forecast_band([{"forecasts": forecasts}], "humidity", 2)
    assert band["yhat"].tolist() == [yhat("denver", 0, "humidity", 2)]
    assert band["target_time"].tolist() == [datetime(2026, 11, 1, 2)]


def test_scrape_metrics_reads_the_prometheus_text_format():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    body = b'# TYPE periscope_bronze_offsets_behind gauge\nperiscope_bronze_offsets_behind{topic="weather-raw"} 42.0\n'

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        assert dashboard.scrape_metrics(url) == {
            "periscope_bronze_offsets_behind{topic=weather-raw}": 42.0
        }
    finally:
        server.shutdown()
    assert dashboard.scrape_metrics(f"http://127.0.0.1:{closed_port()}/metrics") is None


def test_entity_locations_come_from_the_reader_or_not_at_all(tmp_path):
    located = dashboard.entity_locations(CONTRACTS["weather"], SHARED / "data")
    assert located["denver"] == pytest.approx((39.74, -104.98), abs=0.01)
    # air quality's reader has no coordinates; weather's files missing: no map, no error
    assert dashboard.entity_locations(CONTRACTS["air_quality"], SHARED / "data") == {}
    assert dashboard.entity_locations(CONTRACTS["weather"], tmp_path) == {}


def test_health_reads_of_a_lake_that_has_not_run_report_nothing(tmp_path):
    now = datetime.now(UTC)
    assert dashboard.commit_history(str(tmp_path / "silver" / "weather_observations")) == []
    assert dashboard.silver_progress(str(tmp_path / "silver" / "weather_batches"), now) is None
    assert dashboard.quarantine_by_reason(str(tmp_path / "silver" / "weather_quarantine")) == {}
    assert dashboard.stage_throughput([], now) == {
        "records_per_s": 0.0,
        "batches": 0,
        "median_batch_ms": None,
        "last_commit_age_s": None,
    }


def test_observed_series_gives_one_entitys_hourly_means_of_the_span_only(app):
    from periscope.contracts import ForecastTarget

    start = T0 + timedelta(hours=2)
    series = dashboard.observed_series(
        get_settings(), CONTRACTS["weather"], "portland", ForecastTarget("temperature"),
        start, start + timedelta(hours=3),
    )  # fmt: skip
    assert [h.to_pydatetime() for h in series["hour"]] == [
        (start + timedelta(hours=h)).replace(tzinfo=None) for h in range(3)
    ]
    assert series["value"].tolist() == [temperature("portland", h) for h in (2, 3, 4)]


def test_warming_reads_each_gold_table_once_for_every_later_session(tmp_path, monkeypatch):
    # What `periscope dashboard` reads while Streamlit starts is what the pages are then served
    write_gold_lake(tmp_path)
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path))
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path / ".local"))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        windows = dashboard.warm_gold_tables(settings)
        assert windows == {
            "weather": len(STATIONS) * HOURS,
            "air_quality": 5,
            **{name: 0 for name in CONTRACTS if name not in ("weather", "air_quality")},
        }
        weather = CONTRACTS["weather"]
        path = reads.gold_path(settings, weather)
        table = reads.shared_gold(path, weather)
        assert table.snapshot().index.num_rows == len(STATIONS) * HOURS
        # Later sessions get that table: a new commit is not read on the spot (a fresh table
        # would be), it shows once the warm table's background refresh has run
        version = table.snapshot().version
        write_deltalake(
            path, gold_rows("station_id", STATIONS, range(HOURS, HOURS + 1), new_columns=True),
            mode="append",
        )  # fmt: skip
        assert reads.shared_gold(path, weather) is table
        assert reads.shared_gold(path, weather).snapshot().version == version
    finally:
        get_settings.cache_clear()
