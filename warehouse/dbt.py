"""Run dbt on `dbt_project/` with the connection taken from Periscope's settings.

dbt's `profiles.yml` (inside the project) reads `PERISCOPE_POSTGRES_*` with `env_var()`; this
module fills those variables from `get_settings()`, so `.env` works for dbt as for the rest.
dbt runs as a subprocess of the venv's own `dbt`: its logging and exit code stay its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from periscope.errors import MissingDependencyError
from periscope.settings import PROJECT_DIR, Settings

__all__ = ["DBT_PROJECT_DIR", "dbt_command", "dbt_env", "run_dbt"]

DBT_PROJECT_DIR = PROJECT_DIR / "dbt_project"


def dbt_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment dbt runs with: `base` (default: ours) plus the warehouse connection."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "PERISCOPE_POSTGRES_HOST": settings.postgres_host,
            "PERISCOPE_POSTGRES_PORT": str(settings.postgres_port),
            "PERISCOPE_POSTGRES_DB": settings.postgres_db,
            "PERISCOPE_POSTGRES_OWNER_USER": settings.postgres_owner_user,
            "PERISCOPE_POSTGRES_OWNER_PASSWORD": settings.postgres_owner_password.get_secret_value(),
            "PERISCOPE_POSTGRES_BI_USER": settings.postgres_bi_user,
            # dbt's anonymous usage statistics would try to reach the internet.
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        }
    )
    return env


def dbt_command(args: Sequence[str], *, executable: str | None = None) -> list[str]:
    """The dbt command line for `args` (e.g. ["build"]) on the project's dbt folder.

    >>> dbt_command(["build"], executable="dbt")[:2]
    ['dbt', 'build']
    """
    folder = str(DBT_PROJECT_DIR)
    return [
        executable or _dbt_executable(),
        *args,
        "--project-dir",
        folder,
        "--profiles-dir",
        folder,
    ]


def run_dbt(settings: Settings, args: Sequence[str]) -> int:
    """Run dbt with `args`; returns its exit code (output goes to the terminal)."""
    return subprocess.run(dbt_command(args), env=dbt_env(settings), check=False).returncode


def _dbt_executable() -> str:
    beside = Path(sys.executable).parent / "dbt"  # the venv's dbt, even when not on PATH
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found:
        return found
    raise MissingDependencyError("dbt was not found; `make setup` installs dbt-postgres")
