"""Small helpers shared by the local services: ports, pids, log tails, waiting."""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from periscope.errors import ServiceError


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
