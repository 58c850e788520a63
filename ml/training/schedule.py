"""The retrain schedule: APScheduler runs `retrain` for every source on a cron (daily by default).

APScheduler rather than Dagster or Airflow: one job on a cron needs no daemon, web server or
metadata database; the schedule is plain Python that a test can load and fire, and
`periscope scheduler run` is the whole deployment (a systemd unit or a container on a cluster).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from periscope.contracts import CONTRACTS
from periscope.settings import Settings, get_settings

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from ml.training import TrainConfig, TrainReport

__all__ = ["RETRAIN_JOB_ID", "build_scheduler", "retrain_all"]

RETRAIN_JOB_ID = "retrain"
log = logging.getLogger(__name__)


def retrain_all(
    sources: list[str] | None = None,
    settings: Settings | None = None,
    config: TrainConfig | None = None,
) -> list[TrainReport]:
    """The scheduled job: a challenger per source on the latest lake data, promoted only if better.

    One source failing (no data yet, say) is logged and does not stop the others.
    """
    from ml.training import TrainConfig, run_training

    reports = []
    for source in sources or list(CONTRACTS):
        try:
            report = run_training(
                settings or get_settings(),
                source,
                policy="if-better",
                config=config or TrainConfig(),
            )
        except Exception:
            log.exception("scheduled retrain of %s failed", source)
            continue
        for kind, decision in report.decisions.items():
            log.info("retrain %s %s: %s", source, kind, decision)
        reports.append(report)
    return reports


def build_scheduler(
    settings: Settings,
    *,
    sources: list[str] | None = None,
    background: bool = False,
    run_now: bool = False,
    config: TrainConfig | None = None,
) -> BaseScheduler:
    """The scheduler with the retrain job on `settings.retrain_cron` (UTC); not started.

    `run_now` also fires the job as soon as the scheduler starts, then keeps the cron.
    """
    from datetime import UTC, datetime

    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = (BackgroundScheduler if background else BlockingScheduler)(timezone="UTC")
    scheduler.add_job(
        retrain_all,
        CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC"),
        id=RETRAIN_JOB_ID,
        name="retrain every source",
        kwargs={"sources": sources, "settings": settings, "config": config},
        max_instances=1,  # a slow retrain is never run twice at once
        coalesce=True,  # missed runs (machine asleep) collapse into one
        misfire_grace_time=6 * 3600,
        **({"next_run_time": datetime.now(UTC)} if run_now else {}),
    )
    return scheduler
