"""What every dbt run needs, whoever starts it (`periscope dbt`, Dagster's dbt assets): the
project folder, the venv's `dbt`, and the environment its `profiles.yml` reads.

dbt's `profiles.yml` (inside the project) reads `PERISCOPE_POSTGRES_*` with `env_var()`; these
come from the settings, so `.env` works for dbt as for the rest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from periscope.errors import MissingDependencyError
from periscope.settings import PROJECT_DIR, Settings

__all__ = ["DBT_PROJECT_DIR", "dbt_env_vars", "dbt_executable"]

DBT_PROJECT_DIR = PROJECT_DIR / "dbt_project"


def dbt_env_vars(settings: Settings) -> dict[str, str]:
    """The variables dbt's profiles.yml reads (the warehouse connection), from the settings.

    >>> env = dbt_env_vars(Settings(postgres_owner_password="o", postgres_bi_password="b",
    ...     shared_dir=".", postgres_port=15433))
    >>> env["PERISCOPE_POSTGRES_PORT"], env["PERISCOPE_POSTGRES_OWNER_PASSWORD"]
    ('15433', 'o')
    """
    return {
        "PERISCOPE_POSTGRES_HOST": settings.postgres_host,
        "PERISCOPE_POSTGRES_PORT": str(settings.postgres_port),
        "PERISCOPE_POSTGRES_DB": settings.postgres_db,
        "PERISCOPE_POSTGRES_OWNER_USER": settings.postgres_owner_user,
        "PERISCOPE_POSTGRES_OWNER_PASSWORD": settings.postgres_owner_password.get_secret_value(),
        "PERISCOPE_POSTGRES_BI_USER": settings.postgres_bi_user,
        # dbt's anonymous usage statistics would try to reach the internet.
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def dbt_executable() -> str:
    """The venv's `dbt` (even when the venv is not on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found:
        return found
    raise MissingDependencyError("dbt was not found; `make setup` installs dbt-postgres")
