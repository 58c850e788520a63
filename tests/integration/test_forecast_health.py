"""Forecast health on the real warehouse: real weather and air-quality readings loaded into
Postgres beside forecasts of known accuracy, modelled by dbt; the warn test returns the breach,
`periscope models health` reports it, and the scheduler's health job retrains that source only.

Gold is written as Delta by hand (a stand-in for `periscope score`, as in test_warehouse.py), with
forecasts made from the actuals themselves so their accuracy is known exactly: each forecast's
error is a fixed share of seasonal naive's (the same hour yesterday), 2x for weather (it loses to
the baseline: relative MAE 2.0) and 0.3x for air quality (healthy: 0.3). Of each origin's five
horizons, four intervals hold the actual and the fifth lies beside it: coverage 0.8 for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from ingest.datasets import read_air_quality, read_weather
from ml.gold import gold_schema
from ml.health import read_forecast_health, sources_to_retrain
from periscope.contracts import get_contract
from periscope.predictions import FORECAST_METHODS
from tests.integration.test_warehouse import _query, warehouse  # noqa: F401  (a fixture)
from warehouse.loader import load_tables
from warehouse.plan import table_specs

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")
DAYS = 9
HORIZONS = (1, 2, 3, 4, 5)
# Forecast error as a share of seasonal naive's: what each source's relative MAE comes to.
ERROR_SHARE = {"weather": 2.0, "air_quality": 0.3}


def _readings(settings, source: str) -> pd.DataFrame:
    """DAYS days of a source's real hourly readings (two weather stations)."""
    if source == "weather":
        frame = read_weather(settings.data_dir, stations=["denver", "boston"])
    else:
        frame = read_air_quality(settings.data_dir)
    readings = frame.to_pandas()
    start = readings["timestamp"].min().ceil("D") + pd.Timedelta(days=1)
    in_span = (readings["timestamp"] >= start) & (
        readings["timestamp"] < start + pd.Timedelta(days=DAYS)
    )
    return readings[in_span].reset_index(drop=True)


def _forecasts(
    source: str, readings: pd.DataFrame, measures: tuple[str, ...], share: float
) -> list[dict]:
    """Gold rows: from every hour, forecasts 1-5 h ahead of each measure whose target hour and
    the hour a day before it have readings; yhat = actual + share x (the day before - actual)."""
    value = readings.set_index(["station_id", "timestamp"])
    scored_at = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for (station, origin), _ in value.iterrows():
        forecasts = []
        for measure in measures:
            for h in HORIZONS:
                target = origin + pd.Timedelta(hours=h)
                actual = value[measure].get((station, target))
                day_before = value[measure].get((station, target - pd.Timedelta(days=1)))
                if actual is None or day_before is None or pd.isna(actual) or pd.isna(day_before):
                    continue
                yhat = actual + share * (day_before - actual)
                spread = abs(yhat - actual) + 1.0
                # The fifth horizon's interval lies wholly above the actual: 4 of 5 inside.
                low, high = (
                    (yhat - spread, yhat + spread) if h < 5 else (yhat + spread, yhat + 2 * spread)
                )
                forecasts.append(
                    {
                        "measure": measure,
                        "horizon_h": h,
                        "target_time": target,
                        "yhat": float(yhat),
                        "yhat_lower": float(low),
                        "yhat_upper": float(high),
                    }
                )
        rows.append(
            {
                "station_id": station,
                "window_start": origin - pd.Timedelta(hours=1),
                "window_end": origin,
                "forecast_origin": origin,
                "forecasts": forecasts,
                "scored_at": scored_at,
                "forecast_model": f"{source}_forecast",
                "forecast_version": 1,
            }
        )
    return rows


def _write_lake(settings, source: str) -> None:
    contract = get_contract(source)
    readings = _readings(settings, source)
    measures = contract.forecast_names
    observations = readings.rename(columns={"timestamp": "event_time"})[
        ["station_id", "event_time", *(m.name for m in contract.measures)]
    ]
    write_deltalake(
        settings.lake_path(contract.table("silver", "observations")),
        pa.Table.from_pandas(observations, preserve_index=False),
        mode="overwrite",
    )
    schema = gold_schema("station_id")
    rows = _forecasts(source, readings, measures, ERROR_SHARE[source])
    # The forecaster named on each value: one the marts accept (this test judges values only).
    for row in rows:
        for forecast in row["forecasts"]:
            forecast.setdefault("method", FORECAST_METHODS[0])
    gold = pa.Table.from_pylist(rows, schema=schema)
    write_deltalake(
        settings.lake_path(contract.table("gold", "predictions")), gold, mode="overwrite"
    )


@pytest.fixture(scope="module")
def health_marts(services, warehouse, tmp_path_factory):  # noqa: F811  (the fixture above)
    """The test lake loaded and modelled; the settings and the `periscope` environment."""
    root = tmp_path_factory.mktemp("health")
    settings = warehouse.model_copy(update={"lake_root": str(root / "lake")})
    for source in ERROR_SHARE:
        _write_lake(settings, source)
    loaded = load_tables(settings, table_specs(list(ERROR_SHARE)))
    assert {r.table for r in loaded if r.status == "loaded"} == {
        f"{s}_{e}" for s in ERROR_SHARE for e in ("observations", "predictions")
    }
    env = {
        **os.environ,
        "COLUMNS": "200",
        "PERISCOPE_LAKE_ROOT": settings.lake_root,
        "DBT_TARGET_PATH": str(root / "dbt" / "target"),
        "DBT_LOG_PATH": str(root / "dbt" / "logs"),
    }
    # A breach warns: the build still succeeds.
    build = subprocess.run(
        [PERISCOPE, "dbt", "build"], env=env, capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARN 4 assert_forecast_health_within_bounds" in build.stdout, build.stdout
    return settings, env


def test_the_mart_holds_each_sources_relative_mae_and_coverage(health_marts):
    settings, _ = health_marts
    rows = {(r.source, r.measure): r for r in read_forecast_health(settings)}
    assert set(rows) == {
        ("weather", None),
        ("weather", "temperature"),
        ("weather", "humidity"),
        ("weather", "pressure"),
        ("air_quality", None),
        ("air_quality", "co_gt"),
        ("air_quality", "no2_gt"),
    }
    for (source, measure), row in rows.items():
        assert row.relative_mae == pytest.approx(ERROR_SHARE[source], rel=1e-6), (source, measure)
        # Almost every forecast finds the actual of the day before its target in the mart (an
        # hour no forecast targeted, for a missing reading two days before, has none).
        assert row.forecasts >= row.forecasts_judged > 0.9 * row.forecasts
        assert 0.75 <= row.coverage <= 0.85, (source, measure, row.coverage)
        assert row.window_end - row.window_start == timedelta(days=7)
        if measure is not None:
            assert row.mae == pytest.approx(ERROR_SHARE[source] * row.mae_seasonal_naive)
    assert sources_to_retrain(rows.values()) == ["weather"]
    assert [m for (s, m), r in rows.items() if r.is_breached] == [
        m for (s, m) in rows if s == "weather"
    ]


def test_the_warn_test_returns_the_breaching_rows(health_marts):
    settings, env = health_marts
    done = subprocess.run(
        [
            PERISCOPE,
            "dbt",
            "test",
            "--select",
            "assert_forecast_health_within_bounds",
            "--store-failures",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    assert "Got 4 results, configured to warn if != 0" in done.stdout, done.stdout
    [(schema,)] = _query(
        settings,
        "select table_schema from information_schema.tables "
        "where table_name = 'assert_forecast_health_within_bounds'",
    )
    breaches = _query(
        settings,
        f"select source, measure, is_relative_mae_breached, is_coverage_breached "
        f"from {schema}.assert_forecast_health_within_bounds order by measure",
    )
    assert breaches == [
        ("weather", "all measures", True, False),
        ("weather", "humidity", True, False),
        ("weather", "pressure", True, False),
        ("weather", "temperature", True, False),
    ]


def _breached_gauges(text: str) -> dict[tuple[str, str], float]:
    """periscope_forecast_health_breached per (source, measure), parsed from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["source"], s.labels["measure"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "periscope_forecast_health_breached"
        for s in family.samples
    }


def test_models_health_reports_the_breach_and_exits_3(health_marts):
    _, env = health_marts
    table = subprocess.run(
        [PERISCOPE, "models", "health"], env=env, capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 3, table.stdout + table.stderr
    assert "relative MAE 2.00 > 1" in table.stdout and "ok" in table.stdout

    as_json = subprocess.run(
        [PERISCOPE, "models", "health", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_json.returncode == 3
    rows = json.loads(as_json.stdout)
    status = {(r["source"], r["measure"]): r["status"] for r in rows}
    assert status[("weather", "all")] == "relative MAE 2.00 > 1"
    assert status[("air_quality", "all")] == status[("air_quality", "co_gt")] == "ok"

    healthy = subprocess.run(
        [PERISCOPE, "models", "health", "--source", "air_quality", "--prometheus"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    breached = _breached_gauges(healthy.stdout)
    assert breached == {
        ("air_quality", "all"): 0,
        ("air_quality", "co_gt"): 0,
        ("air_quality", "no2_gt"): 0,
    }


def test_the_scheduled_health_job_reads_the_warehouse_and_retrains_weather_only(
    health_marts, tmp_path
):
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

    from ml.training.schedule import HEALTH_JOB_ID, build_scheduler

    settings, _ = health_marts
    settings = settings.model_copy(update={"local_dir": tmp_path})
    retrained: list[list[str]] = []

    def retrain(sources, settings, config, last_retrained):
        # Training itself is test_ml.py's; here: which sources the check hands it.
        retrained.append(list(sources))
        return []

    scheduler = build_scheduler(settings, background=True, retrain=retrain)
    finished = threading.Event()
    events = []

    def listen(event):
        if event.job_id == HEALTH_JOB_ID:
            events.append(event)
            finished.set()

    scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start(paused=True)
    try:
        scheduler.modify_job(HEALTH_JOB_ID, next_run_time=datetime.now(UTC))
        scheduler.resume()
        assert finished.wait(60), "the health job did not run"
    finally:
        scheduler.shutdown(wait=True)
    assert events[0].exception is None
    assert retrained == [["weather"]]
    breached = _breached_gauges((tmp_path / "metrics" / "forecast_health.prom").read_text())
    assert breached[("weather", "all")] == breached[("weather", "pressure")] == 1
    assert breached[("air_quality", "all")] == 0
