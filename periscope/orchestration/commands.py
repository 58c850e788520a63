"""Stage work as `periscope ...` subprocesses, with their output in the Dagster run's log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from periscope.errors import MissingDependencyError

__all__ = ["CommandFailed", "json_rows", "periscope_executable", "run_periscope"]


class CommandFailed(RuntimeError):
    """A `periscope` subprocess exited with a status the caller did not accept."""


def periscope_executable() -> str:
    """The venv's `periscope`, even when the venv is not on PATH."""
    beside = Path(sys.executable).parent / "periscope"
    if beside.exists():
        return str(beside)
    found = shutil.which("periscope")
    if found:
        return found
    raise MissingDependencyError("the periscope command was not found; run `make setup`")


def run_periscope(
    args: Sequence[str], *, log: Any, ok: Sequence[int] = (0,), timeout_s: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `periscope <args>` with this process's environment; log its output.

    Raises CommandFailed when the exit status is not in `ok`.
    """
    command = [periscope_executable(), *args]
    log.info("running %s", " ".join(command))
    # Wide rich tables in the run log instead of columns folded at 80 characters.
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=timeout_s
    )
    if result.stdout.strip():
        log.info(result.stdout)
    if result.stderr.strip():
        log.info(result.stderr)
    if result.returncode not in ok:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise CommandFailed(f"periscope {' '.join(args)} exited {result.returncode}: {tail}")
    return result


def json_rows(stdout: str) -> list[dict[str, Any]]:
    """The rows a `--format json` command printed (one JSON array); [] when it printed none.

    >>> json_rows('[{"table": "silver/weather_features", "status": "loaded"}]')[0]["status"]
    'loaded'
    """
    text = stdout.strip()
    start = text.find("[")
    if start < 0:
        return []
    rows = json.loads(text[start:])
    return rows if isinstance(rows, list) else []
