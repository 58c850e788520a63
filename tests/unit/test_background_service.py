"""The process life cycle the local services share (BackgroundService), on real small processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from periscope.errors import ServiceError
from periscope.services._process import BackgroundService, pid_alive, port_in_use
from periscope.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _HttpServer(BackgroundService):
    """Python's own HTTP server as a service: healthy once it accepts connections."""

    name = "http"

    def __init__(self, settings: Settings, root: Path, script: str | None = None) -> None:
        self.settings = settings
        self.port = _free_port()
        self.pidfile = root / "http.pid"
        self.log_file = root / "http.log"
        self.script = script

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def detail(self) -> str:
        return f"serves on {self.port}"

    def healthy(self) -> bool:
        return port_in_use("127.0.0.1", self.port)

    def start(self) -> str:
        if running := self._already_running():
            return running
        command = (
            [sys.executable, "-c", self.script]
            if self.script
            else [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"]
        )
        return f"started (pid {self._launch(command).pid})"


@pytest.fixture
def settings() -> Settings:
    return Settings(service_start_timeout_s=20.0)  # type: ignore[call-arg]


def test_start_status_restart_and_stop(settings, tmp_path):
    server = _HttpServer(settings, tmp_path)
    assert server.status().running is False
    assert server.stop() == "not running"

    started = server.start()
    pid = server.running_pid()
    assert started == f"started (pid {pid})" and pid_alive(pid)
    status = server.status()
    assert (status.running, status.healthy, status.pid) == (True, True, pid)
    assert (status.address, status.detail) == (server.address, f"serves on {server.port}")
    assert server.start() == f"already running (pid {pid})"

    assert server.stop() == f"stopped (pid {pid})"
    assert not pid_alive(pid) and not server.pidfile.exists()
    assert server.status().running is False


def test_a_stale_pid_file_is_ignored(settings, tmp_path):
    server = _HttpServer(settings, tmp_path)
    server.pidfile.write_text("999999999\n")  # no such process
    assert server.running_pid() is None
    assert server.start().startswith("started")
    assert server.stop().startswith("stopped")


def test_a_process_that_exits_during_start_up_fails_with_its_log(settings, tmp_path):
    server = _HttpServer(settings, tmp_path, script="print('no port today'); raise SystemExit(3)")
    with pytest.raises(ServiceError, match="exited during start-up(.|\n)*no port today"):
        server.start()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(settings, tmp_path):
    script = (
        "import signal, socket, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    server = _HttpServer(settings, tmp_path)
    server.script = script.format(port=server.port)
    server.kill_group_on_timeout = True
    server.start()
    pid = server.running_pid()
    assert server.stop(timeout_s=0.5) == f"stopped (pid {pid})"
    assert not pid_alive(pid)
