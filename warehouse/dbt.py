"""Run dbt on `dbt_project/` with the connection taken from Periscope's settings.

Before dbt runs, `sync_project` writes the files derived from the source contracts
(`warehouse.dbt_models`: lake sources, staging models, seeds, the contracts macro) into the
project's git-ignored `generated/` folders, exactly as `CONTRACTS` holds them now, in this
process: a contract registered at run time gets its models on the next `run_dbt`.

dbt's `profiles.yml` (inside the project) reads `PERISCOPE_POSTGRES_*` with `env_var()`; this
module fills those variables from the settings (`periscope.dbt`, shared with Dagster's dbt
assets), so `.env` works for dbt as for the rest. dbt runs as a subprocess of the venv's own
`dbt`: its logging and exit code stay its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from periscope.contracts import CONTRACTS, SourceContract
from periscope.dbt import DBT_PROJECT_DIR, dbt_env_vars, dbt_executable
from periscope.errors import PeriscopeError
from periscope.settings import Settings, get_settings
from warehouse.dbt_models import GENERATED_DIRS, generated_files

__all__ = [
    "DBT_PROJECT_DIR",
    "ZONE_LOOKUP",
    "SyncResult",
    "dbt_command",
    "dbt_env",
    "entity_locations",
    "run_dbt",
    "sync_project",
]

log = logging.getLogger(__name__)

# The TLC's zone lookup (under the settings' data dir), read into the taxi_zones seed.
ZONE_LOOKUP = Path("nyc_tlc") / "taxi_zone_lookup.csv"


def dbt_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment dbt runs with: `base` (default: ours) plus the warehouse connection."""
    return {**(os.environ if base is None else base), **dbt_env_vars(settings)}


def dbt_command(args: Sequence[str], *, executable: str | None = None) -> list[str]:
    """The dbt command line for `args` (e.g. ["build"]) on the project's dbt folder.

    >>> dbt_command(["build"], executable="dbt")[:2]
    ['dbt', 'build']
    """
    folder = str(DBT_PROJECT_DIR)
    return [
        executable or dbt_executable(),
        *args,
        "--project-dir",
        folder,
        "--profiles-dir",
        folder,
    ]


@dataclass(frozen=True)
class SyncResult:
    """What `sync_project` changed (paths relative to the dbt project)."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def sync_project(
    contracts: Iterable[SourceContract] | None = None,
    *,
    project_dir: Path | None = None,
    data_dir: Path | None = None,
) -> SyncResult:
    """Make the project's generated folders hold exactly the files of `contracts` (default:
    every registered contract): new or changed files are written, unchanged ones left alone
    (dbt's partial parsing keeps them), stale ones (a source no longer registered) removed.
    The zone seed is read from `data_dir` (default: the settings'), empty without the file;
    the entity locations from the contracts' dataset readers that know them."""
    root = DBT_PROJECT_DIR if project_dir is None else project_dir
    data = get_settings().data_dir if data_dir is None else data_dir
    lookup = data / ZONE_LOOKUP
    zones = lookup.read_text(encoding="utf-8") if lookup.is_file() else None
    chosen = list(CONTRACTS.values() if contracts is None else contracts)
    wanted = generated_files(chosen, zones, entity_locations(chosen, data))
    result = SyncResult()
    for relative, text in wanted.items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            result.unchanged.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)  # a dbt run started meanwhile never reads half a file
        result.written.append(relative)
    for folder in GENERATED_DIRS:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative not in wanted:
                path.unlink()
                result.removed.append(relative)
    return result


def entity_locations(
    contracts: Iterable[SourceContract], data_dir: Path
) -> dict[str, dict[str, tuple[float, float]]]:
    """Each source's entity -> (latitude, longitude), from its dataset reader's `locations`
    (weather's stations); sources whose reader has none, or whose data is absent, have none."""
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for contract in contracts:
        if contract.reader is None:
            continue
        locations = getattr(contract.dataset_reader(), "locations", None)
        if locations is None:
            continue
        try:
            found[contract.name] = dict(locations(data_dir))
        except (OSError, PeriscopeError) as exc:  # no dataset here: the map stays empty
            log.warning("no locations of %s's entities (%s)", contract.name, exc)
    return found


def run_dbt(settings: Settings, args: Sequence[str], *, sync: bool = True) -> int:
    """Run dbt with `args` after syncing the generated files from the registered contracts
    (unless `sync` is False); returns dbt's exit code (output goes to the terminal)."""
    if sync:
        sync_project()
    return subprocess.run(dbt_command(args), env=dbt_env(settings), check=False).returncode
