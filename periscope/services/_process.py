"""What the local services share: a background process with a pid file and a log file
(`BackgroundService`), and small helpers for ports, pids, log tails and waiting."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from periscope.errors import ServiceError

if TYPE_CHECKING:
    from periscope.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What `periscope services status` shows for one service."""

    name: str
    running: bool
    healthy: bool
    address: str
    pid: int | None
    log: Path
    detail: str = ""


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_ports_free(service: str, host: str, ports: dict[str, int]) -> None:
    """Fail fast, naming the setting to change, when another process holds a port."""
    for setting, port in ports.items():
        if port_in_use(host, port):
            raise ServiceError(
                f"{service}: port {host}:{port} is already in use by another process. "
                f"Stop that process or choose another port with PERISCOPE_{setting.upper()}."
            )


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but owned by another user
        return True
    # A zombie (exited child not yet reaped) still answers kill(0): treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or a note that there is none yet."""
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError:
        return f"(no log at {path})"


def wait_until(
    ready: Callable[[], bool],
    *,
    service: str,
    timeout_s: float,
    log: Path,
    still_starting: Callable[[], bool] = lambda: True,
) -> None:
    """Poll `ready` until true; on timeout or early exit raise with the log's last lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not still_starting():
            raise ServiceError(
                f"{service} exited during start-up. Last lines of {log}:\n{tail(log)}"
            )
        time.sleep(0.5)
    raise ServiceError(
        f"{service} did not become healthy within {timeout_s:.0f} s. "
        f"Last lines of {log}:\n{tail(log)}"
    )


def _exits_within(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for a process to exit; whether it did."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not pid_alive(pid)


class BackgroundService:
    """A service the project runs as one background process, started in a session of its own
    (it survives the CLI; `down` stops it), its pid in `pidfile` and its output in `log_file`.

    A subclass sets `name`, `settings`, `pidfile` and `log_file`, and defines `address`,
    `healthy()` and `detail`; its `start` prepares what the process needs, then calls `_launch`.
    """

    name: str
    settings: Settings
    pidfile: Path
    log_file: Path
    # On a stop that times out, SIGKILL the whole process group (gunicorn's workers too).
    kill_group_on_timeout = False

    @property
    def address(self) -> str:
        raise NotImplementedError

    @property
    def detail(self) -> str:
        """What `periscope services status` says about the service beside its address."""
        return ""

    def healthy(self) -> bool:
        raise NotImplementedError

    def running_pid(self) -> int | None:
        """The pid of the service's process when it runs, else None."""
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid) else None

    def crashed(self) -> bool:
        """True when the pid file names a process that is gone: it died without a stop (a
        stop removes the pid file), which the watchdog of `periscope up` restarts."""
        pid = read_pid(self.pidfile)
        return pid is not None and not pid_alive(pid)

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop the process (SIGTERM: a clean shutdown), forcing it with SIGKILL after a timeout."""
        pid = self.running_pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return "not running"
        os.kill(pid, signal.SIGTERM)
        if not _exits_within(pid, timeout_s):
            what = "group" if self.kill_group_on_timeout else "pid"
            log.warning(
                "%s did not stop within %.0f s; killing %s %d", self.name, timeout_s, what, pid
            )
            if self.kill_group_on_timeout:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            _exits_within(pid, 5.0)  # the kernel takes a moment to tear a process down
        self.pidfile.unlink(missing_ok=True)
        return f"stopped (pid {pid})"

    def status(self) -> ServiceStatus:
        pid = self.running_pid()
        running = pid is not None
        return ServiceStatus(
            name=self.name,
            running=running,
            healthy=running and self.healthy(),
            address=self.address,
            pid=pid,
            log=self.log_file,
            detail=self.detail,
        )

    def _already_running(self) -> str | None:
        """`already running (pid N)` once a running process answers as healthy; None (and a
        stale pid file removed) when none runs."""
        pid = self.running_pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return None
        self._wait_healthy(still_starting=lambda: pid_alive(pid))
        return f"already running (pid {pid})"

    def _launch(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `command` in the background, record its pid and wait until it is healthy."""
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,  # survives the CLI; `down` stops it
            )
        self.pidfile.write_text(f"{process.pid}\n")
        self._wait_healthy(still_starting=lambda: process.poll() is None, timeout_s=timeout_s)
        return process

    def _wait_healthy(
        self, *, still_starting: Callable[[], bool], timeout_s: float | None = None
    ) -> None:
        wait_until(
            self.healthy,
            service=self.name,
            timeout_s=timeout_s or self.settings.service_start_timeout_s,
            log=self.log_file,
            still_starting=still_starting,
        )
