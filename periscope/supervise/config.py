"""The supervisord configuration `periscope up` writes, rendered from settings (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from periscope.settings import Settings
from periscope.supervise.programs import Program, command_line

__all__ = ["SupervisePaths", "render_config"]

# supervisord starts a program's retries 1, 2, 3, ... s apart (its backoff), then gives up (FATAL).
# 30 tries span about 8 minutes: a stage whose start-up keeps failing while Kafka restarts or a
# loaded machine times Ray out is not given up on within 15 s (5 tries did), yet a stage that
# can never start still ends FATAL, where `ps` shows it.
START_RETRIES = 30


@dataclass(frozen=True)
class SupervisePaths:
    """Where the supervisor keeps its state (under the local dir, git-ignored)."""

    root: Path  # <local_dir>/supervisor: config, socket, pid file
    logs: Path  # <local_dir>/logs: one log per program, and supervisord's own

    @classmethod
    def from_settings(cls, settings: Settings) -> SupervisePaths:
        return cls(root=settings.local_dir / "supervisor", logs=settings.local_dir / "logs")

    @property
    def config(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def supervisord_log(self) -> Path:
        return self.logs / "supervisord.log"

    def program_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _escape(value: str) -> str:
    """supervisord expands %(name)s in values: a literal % must be doubled."""
    return value.replace("%", "%%")


def _program_section(
    program: Program, priority: int, paths: SupervisePaths, directory: Path
) -> str:
    lines = {
        "command": _escape(command_line(program)),
        "directory": str(directory),
        "priority": str(priority),
        "autostart": "true",
        "autorestart": "true",  # a crash after start_s is restarted at once
        "startsecs": str(program.start_s),
        "startretries": str(START_RETRIES),
        "stopsignal": program.stop_signal,
        "stopwaitsecs": str(program.stop_wait_s),
        # The signal goes to the stage's own process (it drains, then stops its children);
        # the SIGKILL after stopwaitsecs goes to the whole group, so no JVM or Ray worker is left.
        "stopasgroup": "true" if program.stop_as_group else "false",
        "killasgroup": "true",
        "redirect_stderr": "true",
        "stdout_logfile": str(paths.program_log(program.name)),
        "stdout_logfile_maxbytes": "20MB",
        "stdout_logfile_backups": "3",
    }
    if program.env:
        lines["environment"] = ",".join(
            f'{key}="{_escape(value)}"' for key, value in sorted(program.env.items())
        )
    body = "\n".join(f"{key}={value}" for key, value in lines.items())
    return f"[program:{program.name}]\n{body}\n"


def render_config(programs: Sequence[Program], paths: SupervisePaths, *, directory: Path) -> str:
    """supervisord.conf for `programs` (in start order).

    Control is over a unix socket only (mode 0700): no TCP port, so nothing listens on the
    network. Secrets are not written here: programs inherit the environment and read `.env`.
    """
    header = f"""\
; Written by `periscope up` from its settings at every start; edit settings instead.
[unix_http_server]
file={paths.socket}
chmod=0700

[supervisord]
logfile={paths.supervisord_log}
logfile_maxbytes=20MB
logfile_backups=3
pidfile={paths.pidfile}
childlogdir={paths.logs}
directory={directory}
identifier=periscope

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{paths.socket}
"""
    # Lower priorities start first and stop last: start order gives 10, 20, ...
    sections = [
        _program_section(program, 10 * (index + 1), paths, directory)
        for index, program in enumerate(programs)
    ]
    return "\n".join([header, *sections])
