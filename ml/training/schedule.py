"""The retrain schedule: APScheduler runs `retrain` for every source on a cron (daily by default),
and an hourly health check retrains a source at once when its forecasts slip.

The health check reads the marts' rolling 7-day accuracy (`marts.mart_forecast_health`: relative
MAE above 1.0, or 80% interval coverage outside 0.7-0.9, is a breach), writes it as Prometheus
gauges to `<local_dir>/metrics/forecast_health.prom`, and retrains the breaching sources (each at
most once a day, since the 7-day figures lag a new champion).

APScheduler rather than Dagster or Airflow: one job on a cron needs no daemon, web server or
metadata database; the schedule is plain Python that a test can load and fire, and
`periscope scheduler run` is the whole deployment (a systemd unit or a container on a cluster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ml.health import (
    ForecastHealth,
    breach_reasons,
    metrics_path,
    read_forecast_health,
    sources_to_retrain,
    write_prometheus,
)
from periscope.contracts import CONTRACTS
from periscope.settings import Settings, get_settings

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from ml.training import TrainConfig, TrainReport

__all__ = [
    "HEALTH_CRON",
    "HEALTH_JOB_ID",
    "RETRAIN_JOB_ID",
    "build_scheduler",
    "retrain_all",
    "retrain_if_unhealthy",
]

RETRAIN_JOB_ID = "retrain"
HEALTH_JOB_ID = "forecast-health"
# Hourly, off the hour: the loader and dbt build of the hour have usually finished by then.
HEALTH_CRON = "20 * * * *"
log = logging.getLogger(__name__)

ReadHealth = Callable[[Settings], Sequence[ForecastHealth]]
Retrain = Callable[..., "list[TrainReport]"]


def retrain_all(
    sources: list[str] | None = None,
    settings: Settings | None = None,
    config: TrainConfig | None = None,
    last_retrained: dict[str, datetime] | None = None,
) -> list[TrainReport]:
    """The scheduled job: a challenger per source on the latest lake data, promoted only if better.

    One source failing (no data yet, say) is logged and does not stop the others. Each source
    retrained is noted in `last_retrained` (shared with the health check) with the time.
    """
    from ml.registry import source_kinds
    from ml.training import TrainConfig, run_training

    reports = []
    for source in sources or list(CONTRACTS):
        try:
            report = run_training(
                settings or get_settings(),
                source,
                kinds=source_kinds(source),  # taxi's trip regressor too
                policy="if-better",
                config=config or TrainConfig(),
            )
        except Exception:
            log.exception("scheduled retrain of %s failed", source)
            continue
        for kind, decision in report.decisions.items():
            log.info("retrain %s %s: %s", source, kind, decision)
        reports.append(report)
        if last_retrained is not None:
            last_retrained[source] = datetime.now(UTC)
    return reports


def _read_health(settings: Settings) -> list[ForecastHealth]:
    return read_forecast_health(settings)


def retrain_if_unhealthy(
    sources: list[str] | None = None,
    settings: Settings | None = None,
    config: TrainConfig | None = None,
    last_retrained: dict[str, datetime] | None = None,
    *,
    read_health: ReadHealth = _read_health,
    retrain: Retrain = retrain_all,
) -> list[str]:
    """The hourly job: read the forecasts' health, publish it, retrain the breaching sources.

    Returns the sources retrained. A warehouse that cannot be read is logged and retrains
    nothing (the daily retrain still runs).
    """
    settings = settings or get_settings()
    try:
        rows = read_health(settings)
    except Exception:
        log.exception("forecast health check could not read the warehouse")
        return []
    write_prometheus(rows, metrics_path(settings))
    for row in rows:
        if row.is_breached:
            log.warning(
                "forecast health %s %s: %s",
                row.source,
                row.measure or "overall",
                "; ".join(breach_reasons(row)),
            )
    chosen = sources_to_retrain(
        rows, sources=sources, last_retrained=last_retrained, now=datetime.now(UTC)
    )
    if chosen:
        log.warning("forecast health: retraining %s", ", ".join(chosen))
        retrain(chosen, settings, config, last_retrained)
    return chosen


def build_scheduler(
    settings: Settings,
    *,
    sources: list[str] | None = None,
    background: bool = False,
    run_now: bool = False,
    config: TrainConfig | None = None,
    health_cron: str = HEALTH_CRON,
    read_health: ReadHealth = _read_health,
    retrain: Retrain = retrain_all,
) -> BaseScheduler:
    """The scheduler with the retrain job on `settings.retrain_cron` and the health check on
    `health_cron` (both UTC); not started.

    `run_now` also fires the retrain job as soon as the scheduler starts, then keeps the cron.
    `read_health` and `retrain` are what the health check reads and runs (the warehouse and
    `retrain_all` unless a test hands in others).
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    # One worker: the daily retrain and a health-check retrain never train at once on the
    # machine's cores; a job due meanwhile waits (misfire grace) and runs after.
    scheduler = (BackgroundScheduler if background else BlockingScheduler)(
        timezone="UTC", executors={"default": ThreadPoolExecutor(1)}
    )
    common = {"sources": sources, "settings": settings, "config": config}
    # When each source was last retrained, by either job: the health check's cooldown.
    last_retrained: dict[str, datetime] = {}
    scheduler.add_job(
        retrain_all,
        CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC"),
        id=RETRAIN_JOB_ID,
        name="retrain every source",
        kwargs={**common, "last_retrained": last_retrained},
        max_instances=1,  # a slow retrain is never run twice at once
        coalesce=True,  # missed runs (machine asleep) collapse into one
        misfire_grace_time=6 * 3600,
        **({"next_run_time": datetime.now(UTC)} if run_now else {}),
    )
    scheduler.add_job(
        retrain_if_unhealthy,
        CronTrigger.from_crontab(health_cron, timezone="UTC"),
        id=HEALTH_JOB_ID,
        name="retrain the sources whose forecasts slipped",
        kwargs={
            **common,
            "last_retrained": last_retrained,
            "read_health": read_health,
            "retrain": retrain,
        },
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    return scheduler
