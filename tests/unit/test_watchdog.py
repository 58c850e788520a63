"""The services' watchdog with a real background process: a crash (SIGKILL) is restarted, a stop
is not, and a restart that fails is retried later."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from periscope.services._process import BackgroundService, pid_alive
from periscope.settings import Settings
from periscope.supervise.watchdog import Watched, _check, watch


class Sleeper(BackgroundService):
    """A service whose process is `sleep`: healthy while it runs."""

    name = "sleeper"

    def __init__(self, root: Path, *, fail_starts: int = 0) -> None:
        self.settings = Settings(local_dir=root)
        self.pidfile = root / "sleeper.pid"
        self.log_file = root / "sleeper.log"
        self.fail_starts = fail_starts

    @property
    def address(self) -> str:
        return "nowhere"

    def healthy(self) -> bool:
        return self.running_pid() is not None

    def start(self) -> str:
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("no room")
        return self._already_running() or f"started (pid {self._launch(['sleep', '600']).pid})"


def _watch_in_thread(service: Sleeper) -> tuple[threading.Event, threading.Thread, list]:
    stop, result = threading.Event(), []  # type: ignore[var-annotated]
    thread = threading.Thread(
        target=lambda: result.extend(watch([service], every_s=0.2, stop=stop)), daemon=True
    )
    thread.start()
    return stop, thread, result


def _until(condition, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_killed_service_is_restarted_and_a_stopped_one_is_left_alone(tmp_path):
    service = Sleeper(tmp_path)
    service.start()
    first = service.running_pid()
    assert first and not service.crashed()
    stop, thread, result = _watch_in_thread(service)
    try:
        os.kill(first, signal.SIGKILL)
        second = _until(lambda: (pid := service.running_pid()) and pid != first and pid)
        assert pid_alive(second)
        service.stop()
        time.sleep(3.0)  # more than the watchdog's confirmation look and a few rounds
        assert service.running_pid() is None and not service.crashed()
    finally:
        stop.set()
        thread.join(timeout=10)
        service.stop()
    (watched,) = result
    assert watched.restarts == 1


def test_a_failed_restart_backs_off_and_is_tried_again(tmp_path):
    service = Sleeper(tmp_path)
    service.start()
    os.kill(service.running_pid(), signal.SIGKILL)  # type: ignore[arg-type]
    _until(service.crashed)
    service.fail_starts = 1
    clock = [100.0]
    watched = Watched(service)
    try:
        _check(watched, lambda: clock[0], lambda _s: None)
        assert watched.restarts == 0 and watched.backoff_s == 5.0
        assert watched.retry_at == 105.0
        _check(watched, lambda: clock[0], lambda _s: None)  # too early: not tried
        assert service.crashed()
        clock[0] = 105.0
        _check(watched, lambda: clock[0], lambda _s: None)
        assert watched.restarts == 1 and watched.backoff_s == 0.0
        assert service.running_pid() is not None
    finally:
        service.stop()
