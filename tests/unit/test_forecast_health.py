"""The forecast health check: which sources it retrains, the gauges it writes, and the scheduler
job that fires it (a real APScheduler, fed rows in memory instead of the warehouse)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ml.health import (
    ForecastHealth,
    any_breach,
    breach_reasons,
    sources_to_retrain,
    to_prometheus,
    write_prometheus,
)
from ml.training.schedule import HEALTH_JOB_ID, build_scheduler
from periscope.settings import Settings

END = datetime(2024, 3, 8, tzinfo=UTC)


def _row(source: str, measure: str | None, relative_mae: float, coverage: float) -> ForecastHealth:
    """A row flagged as the mart flags it (relative MAE > 1.0, coverage outside 0.7-0.9)."""
    return ForecastHealth(
        source=source,
        measure=measure,
        window_start=END - timedelta(days=7),
        window_end=END,
        forecasts=100,
        forecasts_judged=90,
        mae=None if measure is None else 2.0 * relative_mae,
        mae_seasonal_naive=None if measure is None else 2.0,
        relative_mae=relative_mae,
        coverage=coverage,
        max_relative_mae=1.0,
        min_coverage=0.7,
        max_coverage=0.9,
        is_relative_mae_breached=relative_mae > 1.0,
        is_coverage_breached=not 0.7 <= coverage <= 0.9,
    )


HEALTHY = [
    _row("air_quality", None, 0.8, 0.8),
    _row("air_quality", "co", 0.8, 0.8),
    _row("weather", None, 0.9, 0.78),
    _row("weather", "temperature", 0.95, 0.8),
    _row("weather", "humidity", 0.85, 0.76),
]
# weather's humidity loses to the same hour yesterday; air quality stays healthy.
WEATHER_SLIPPED = [*HEALTHY[:4], _row("weather", "humidity", 1.3, 0.76)]


def test_a_breaching_source_is_retrained_and_a_healthy_one_is_not():
    assert sources_to_retrain(WEATHER_SLIPPED) == ["weather"]
    assert sources_to_retrain(HEALTHY) == []
    assert any_breach(WEATHER_SLIPPED) and not any_breach(HEALTHY)


def test_coverage_outside_its_band_is_a_breach_on_either_side():
    too_narrow = [_row("air_quality", "co", 0.5, 0.69)]
    too_wide = [_row("air_quality", "co", 0.5, 0.95)]
    assert sources_to_retrain(too_narrow) == sources_to_retrain(too_wide) == ["air_quality"]
    assert breach_reasons(too_wide[0]) == ["coverage 0.95 outside 0.7-0.9"]
    assert breach_reasons(WEATHER_SLIPPED[-1]) == ["relative MAE 1.30 > 1"]
    assert breach_reasons(HEALTHY[0]) == []


def test_only_the_scheduled_sources_and_none_retrained_within_the_cooldown():
    both = [*WEATHER_SLIPPED, _row("air_quality", "co", 0.5, 0.5)]
    assert sources_to_retrain(both) == ["air_quality", "weather"]
    assert sources_to_retrain(both, sources=["weather"]) == ["weather"]
    now = datetime(2024, 3, 8, 12, tzinfo=UTC)
    recently = {"weather": now - timedelta(hours=3), "air_quality": now - timedelta(hours=25)}
    assert sources_to_retrain(both, last_retrained=recently, now=now) == ["air_quality"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text parsed back: (name, sorted labels) -> value, and every family a gauge."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_prometheus_text_has_one_gauge_per_figure_and_row():
    rows = [*WEATHER_SLIPPED[2:], replace(_row('we"ird', None, 0.5, 0.8), coverage=None)]
    samples = _samples(to_prometheus(rows))

    def value(name: str, source: str, measure: str | None = None) -> float:
        labels = {"source": source, **({"measure": measure} if measure else {})}
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("periscope_forecast_relative_mae", "weather", "all") == 0.9
    assert value("periscope_forecast_relative_mae", "weather", "humidity") == 1.3
    assert value("periscope_forecast_mae", "weather", "humidity") == 2.6
    assert value("periscope_forecast_seasonal_naive_mae", "weather", "humidity") == 2.0
    assert math.isnan(value("periscope_forecast_mae", "weather", "all"))
    assert value("periscope_forecast_health_breached", "weather", "humidity") == 1
    assert value("periscope_forecast_health_breached", "weather", "temperature") == 0
    assert math.isnan(value("periscope_forecast_interval_coverage", 'we"ird', "all"))
    assert value("periscope_forecast_health_forecasts", "weather", "all") == 100
    assert (
        value("periscope_forecast_health_window_end_timestamp_seconds", "weather", "all")
        == END.timestamp()
    )
    assert value("periscope_forecast_relative_mae_max", "weather") == 1.0
    assert value("periscope_forecast_interval_coverage_min", "weather") == 0.7
    assert value("periscope_forecast_interval_coverage_max", 'we"ird') == 0.9
    # Seven figures per row, three bounds per source, nothing else.
    assert len(samples) == 7 * len(rows) + 3 * 2


def test_the_gauges_file_is_replaced_whole(tmp_path):
    path = tmp_path / "metrics" / "forecast_health.prom"
    write_prometheus(WEATHER_SLIPPED, path)
    write_prometheus(HEALTHY[:1], path)
    assert path.read_text() == to_prometheus(HEALTHY[:1])
    assert [p.name for p in path.parent.iterdir()] == ["forecast_health.prom"]


def _fire_health_job(settings: Settings, rows: list[ForecastHealth]) -> tuple[list, object]:
    """Start a real background scheduler, fire its health job once now, return what it retrained."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

    retrained: list[list[str]] = []

    def retrain(sources, settings, config, last_retrained):
        retrained.append(list(sources))
        return []

    scheduler = build_scheduler(
        settings, background=True, read_health=lambda _settings: rows, retrain=retrain
    )
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
        assert finished.wait(30), "the health job did not run"
    finally:
        scheduler.shutdown(wait=True)
    assert events[0].exception is None
    return retrained, events[0].retval


@pytest.mark.parametrize(
    ("rows", "expected"), [(WEATHER_SLIPPED, [["weather"]]), (HEALTHY, [])], ids=["slipped", "ok"]
)
def test_the_scheduled_health_job_retrains_the_breaching_source_only(tmp_path, rows, expected):
    settings = Settings(local_dir=tmp_path)
    retrained, returned = _fire_health_job(settings, rows)
    assert retrained == expected
    assert returned == (expected[0] if expected else [])
    # The job also left the gauges for a textfile collector.
    assert (tmp_path / "metrics" / "forecast_health.prom").read_text() == to_prometheus(rows)


def test_the_scheduler_keeps_the_daily_retrain_beside_the_hourly_check():
    scheduler = build_scheduler(Settings(), background=True)
    jobs = {job.id: str(job.trigger) for job in scheduler.get_jobs()}
    assert jobs == {
        "retrain": "cron[month='*', day='*', day_of_week='*', hour='3', minute='0']",
        HEALTH_JOB_ID: "cron[month='*', day='*', day_of_week='*', hour='*', minute='20']",
    }
