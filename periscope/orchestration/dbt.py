"""dbt_project as Dagster assets (dagster-dbt), run with Periscope's settings as `periscope dbt` is.

The manifest Dagster reads is parsed into `<local_dir>/dagster/dbt/` (not dbt_project/target, so
a developer's own dbt runs and Dagster's never share a target folder) after `periscope dbt sync`
has written the files the contracts generate. `periscope orchestrate` prepares it on every start;
the definitions prepare it when it is missing. The connection and the dbt executable are
`periscope.dbt`'s, the ones `periscope dbt` uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from periscope.dbt import DBT_PROJECT_DIR, dbt_env_vars, dbt_executable
from periscope.orchestration.commands import run_periscope
from periscope.orchestration.graph import warehouse_key
from periscope.settings import Settings

if TYPE_CHECKING:
    from dagster_dbt import DbtCliResource, DbtProject

__all__ = [
    "DBT_PROJECT_DIR",
    "dbt_env_vars",
    "dbt_key",
    "dbt_project",
    "dbt_resource",
    "dbt_target_dir",
    "prepare_dbt_project",
    "with_env",
]


@contextmanager
def with_env(values: Mapping[str, str]) -> Iterator[None]:
    """These environment variables set while the block runs (dagster-dbt hands os.environ to
    the dbt subprocess it starts), the previous ones back after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dbt_target_dir(settings: Settings) -> Path:
    return settings.local_dir / "dagster" / "dbt"


def dbt_project(settings: Settings) -> DbtProject:
    """The dbt project with its manifest under `<local_dir>/dagster/dbt/`."""
    from dagster_dbt import DbtProject

    return DbtProject(project_dir=DBT_PROJECT_DIR, target_path=dbt_target_dir(settings))


def dbt_resource(settings: Settings) -> DbtCliResource:
    """dagster-dbt's resource running the venv's dbt on the project (profiles.yml inside it)."""
    from dagster_dbt import DbtCliResource

    return DbtCliResource(project_dir=dbt_project(settings), dbt_executable=dbt_executable())


def prepare_dbt_project(settings: Settings, *, log: Any) -> Path:
    """`periscope dbt sync`, then `dbt parse` into the Dagster target folder; the manifest path."""
    run_periscope(["dbt", "sync"], log=log)
    project = dbt_project(settings)
    with with_env(dbt_env_vars(settings)):
        dbt_resource(settings).cli(["parse", "--quiet"], target_path=project.target_path).wait()
    return project.manifest_path


def dbt_key(props: Mapping[str, Any]) -> tuple[str, ...]:
    """The asset key of a dbt node: a `lake` source is the loader's table (the warehouse load's
    asset), a model or seed is `<folder>/<name>` (staging/stg_weather__observations,
    marts/fct_forecast, seeds/...).

    >>> dbt_key({"resource_type": "source", "source_name": "lake", "name": "weather_features"})
    ('warehouse', 'lake', 'weather_features')
    >>> dbt_key({"resource_type": "model", "name": "fct_forecast",
    ...          "fqn": ["periscope", "marts", "fct_forecast"]})
    ('marts', 'fct_forecast')
    """
    if props["resource_type"] == "source":
        if props.get("source_name") == "lake":
            return warehouse_key(props["name"])
        return (props["source_name"], props["name"])
    if props["resource_type"] == "seed":
        return ("seeds", props["name"])
    fqn = props.get("fqn") or []
    folder = fqn[1] if len(fqn) > 2 else "models"
    return (folder, props["name"])
