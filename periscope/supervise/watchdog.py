"""The services' watchdog: `periscope up` runs it under supervisord, first to start and last to
stop, so Kafka and PostgreSQL are restarted when they crash, as the stages are.

Kafka and PostgreSQL stay the project's background services (`periscope services` starts and
stops them, the tests and benches restart them on purpose); the watchdog only restarts a service
that *crashed*: its pid file names a process that is gone. A stop removes the pid file, so a
service stopped on purpose stays stopped. A crash is confirmed on a second look a moment later
(a stop removes the pid file just after its process exits), and a restart that fails is tried
again with a doubling delay (up to a minute).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Watched", "watch"]

log = logging.getLogger(__name__)

CONFIRM_S = 2.0  # a crash must still show after this long
MAX_BACKOFF_S = 60.0


class Service(Protocol):
    name: str

    def crashed(self) -> bool: ...

    def start(self) -> str: ...


@dataclass
class Watched:
    """One service under watch: its restarts so far and when a failed restart may be retried."""

    service: Service
    restarts: int = 0
    backoff_s: float = 0.0
    retry_at: float = 0.0


def _check(watched: Watched, now: Callable[[], float], sleep: Callable[[float], object]) -> None:
    service = watched.service
    if now() < watched.retry_at or not service.crashed():
        return
    sleep(CONFIRM_S)
    if not service.crashed():  # a stop was removing its pid file
        return
    log.warning("%s crashed (its process is gone): restarting it", service.name)
    try:
        outcome = service.start()
    except Exception as exc:  # any failure: log it, back off, try again
        watched.backoff_s = min(max(2 * watched.backoff_s, 5.0), MAX_BACKOFF_S)
        watched.retry_at = now() + watched.backoff_s
        log.error(
            "%s did not restart (%s); trying again in %.0f s", service.name, exc, watched.backoff_s
        )
        return
    watched.restarts += 1
    watched.backoff_s, watched.retry_at = 0.0, 0.0
    log.warning("%s restarted: %s (restarts so far: %d)", service.name, outcome, watched.restarts)


def watch(
    services: Sequence[Service],
    *,
    every_s: float,
    stop: threading.Event,
    now: Callable[[], float] = time.monotonic,
) -> list[Watched]:
    """Check every `every_s` seconds until `stop` is set; returns what happened to each."""
    watched = [Watched(s) for s in services]
    log.info("watching %s every %.0f s", ", ".join(s.name for s in services), every_s)
    while not stop.is_set():
        for w in watched:
            _check(w, now, stop.wait)
            if stop.is_set():
                break
        stop.wait(every_s)
    return watched
