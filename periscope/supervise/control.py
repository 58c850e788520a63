"""Start, inspect and stop supervisord over its unix socket (XML-RPC)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from periscope.errors import ServiceError
from periscope.services._process import pid_alive, read_pid, tail
from periscope.supervise.config import SupervisePaths

__all__ = [
    "ProgramInfo",
    "Supervisor",
    "count_restarts",
    "group_members",
]


@dataclass(frozen=True)
class ProgramInfo:
    """One program as supervisord reports it (plus restarts counted from its log)."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int | None
    uptime_s: float | None
    restarts: int
    description: str


_SPAWNED = re.compile(r"spawned: '([^']+)' with pid \d+")
_SUPERVISORD_STARTED = "supervisord started with pid"


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _reap_group(pgid: int, timeout_s: float) -> None:
    """Wait for what is left of a stopped program's process group, then SIGKILL it.

    supervisord counts a program stopped when its main process exits; children it left to
    finish on their own (`dagster dev`'s code server) may outlive `down` by seconds.
    """
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while group_members(pgid) and time.monotonic() < deadline + 5.0:
            time.sleep(0.1)


def count_restarts(log_text: str) -> dict[str, int]:
    """Spawns beyond the first of each program since supervisord last started (from its log)."""
    current = log_text.rsplit(_SUPERVISORD_STARTED, 1)[-1]
    spawns: dict[str, int] = {}
    for match in _SPAWNED.finditer(current):
        spawns[match.group(1)] = spawns.get(match.group(1), 0) + 1
    return {name: count - 1 for name, count in spawns.items()}


class Supervisor:
    """The project's supervisord: one per local dir, controlled through its unix socket."""

    def __init__(self, paths: SupervisePaths) -> None:
        self.paths = paths

    # --- XML-RPC -----------------------------------------------------------------------
    def _rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.paths.socket}")
        # The host part is ignored: the transport talks to the socket.
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        """True when supervisord answers on its socket."""
        if not self.paths.socket.exists():
            return False
        try:
            return cast(str, self._rpc().getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    # --- start -------------------------------------------------------------------------
    def start(self, config_text: str, *, timeout_s: float = 30.0) -> str:
        """Write the config and start supervisord; when it runs already, apply the new config."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(config_text)
        if self.running():
            return self._update()
        self.paths.socket.unlink(missing_ok=True)  # left by a supervisord that was killed
        supervisord = os.path.join(os.path.dirname(sys.executable), "supervisord")
        result = subprocess.run(
            [supervisord, "-c", str(self.paths.config)],
            capture_output=True,
            text=True,
            check=False,
        )  # daemonizes: returns once the daemon forked
        if result.returncode != 0:
            raise ServiceError(f"supervisord did not start: {result.stderr or result.stdout}")
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"supervisord did not answer on {self.paths.socket} within {timeout_s:.0f} s. "
                    f"Last lines of {self.paths.supervisord_log}:\n{tail(self.paths.supervisord_log)}"
                )
            time.sleep(0.2)
        return f"started supervisord (pid {read_pid(self.paths.pidfile)})"

    def _update(self) -> str:
        """`supervisorctl update`: stop and drop removed or changed programs, add new ones."""
        rpc = self._rpc()
        [[added, changed, removed]] = rpc.reloadConfig()
        for name in [*removed, *changed]:
            rpc.stopProcessGroup(name, True)
            rpc.removeProcessGroup(name)
        for name in [*changed, *added]:
            rpc.addProcessGroup(name)  # autostart starts it
        for info in rpc.getAllProcessInfo():
            if info["statename"] in ("STOPPED", "EXITED", "FATAL"):
                rpc.startProcess(info["name"], False)
        return (
            f"supervisord already running (pid {read_pid(self.paths.pidfile)}); "
            f"{len(added)} added, {len(changed)} changed, {len(removed)} removed"
        )

    def wait_started(
        self, *, timeout_s: float, tick: Callable[[list[ProgramInfo]], None]
    ) -> list[ProgramInfo]:
        """Poll until no program is STARTING or BACKOFF (or the timeout); returns the last view."""
        deadline = time.monotonic() + timeout_s
        while True:
            infos = self.programs()
            tick(infos)
            pending = [i for i in infos if i.state in ("STARTING", "BACKOFF")]
            if not pending or time.monotonic() > deadline:
                return infos
            time.sleep(1.0)

    # --- inspect -----------------------------------------------------------------------
    def programs(self) -> list[ProgramInfo]:
        """Every program in start order, with its state, pid, uptime and restarts."""
        infos = self._rpc().getAllProcessInfo()
        try:
            restarts = count_restarts(self.paths.supervisord_log.read_text(errors="replace"))
        except OSError:
            restarts = {}
        order = self._priorities()
        programs = [
            ProgramInfo(
                name=info["name"],
                state=info["statename"],
                pid=info["pid"] or None,
                uptime_s=float(info["now"] - info["start"])
                if info["statename"] == "RUNNING"
                else None,
                restarts=restarts.get(info["name"], 0),
                description=info["description"],
            )
            for info in infos
        ]
        return sorted(programs, key=lambda p: (order.get(p.name, 1 << 30), p.name))

    def _priorities(self) -> dict[str, int]:
        """{program: priority} from the written config (the RPC API does not report it)."""
        priorities: dict[str, int] = {}
        name = None
        for line in self.paths.config.read_text().splitlines():
            if line.startswith("[program:"):
                name = line[len("[program:") : -1]
            elif name and line.startswith("priority="):
                priorities[name] = int(line.split("=", 1)[1])
        return priorities

    # --- stop --------------------------------------------------------------------------
    def stop(self, *, on_program: Callable[[str], None] = lambda _name: None) -> list[str]:
        """Stop every program in reverse start order (each drains first), then supervisord."""
        rpc = self._rpc()
        stopped = []
        for program in reversed(self.programs()):
            if program.state in ("RUNNING", "STARTING", "BACKOFF"):
                on_program(program.name)
                try:
                    rpc.stopProcess(program.name, True)  # waits up to its stopwaitsecs, then kills
                except xmlrpc.client.Fault as fault:
                    if "NOT_RUNNING" not in fault.faultString:
                        raise
                if program.pid:  # supervisord makes each program the leader of its own group
                    _reap_group(program.pid, timeout_s=15.0)
                stopped.append(program.name)
        self.shutdown()
        return stopped

    def shutdown(self, *, timeout_s: float = 60.0) -> None:
        """Stop supervisord itself and wait until its process is gone."""
        pid = read_pid(self.paths.pidfile)
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            if pid_alive(pid):
                os.kill(cast(int, pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            raise ServiceError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f} s")
