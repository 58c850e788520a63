"""Dashboards as code: the bundle on disk <-> Superset, and a check of every chart's data.

The bundle (`bundle/`) is what Superset's own export writes: metadata.yaml, databases/,
datasets/<database>/, charts/ and dashboards/, one YAML file each. It is committed without a
password: `provision` puts the connection from settings (the read-only `bi_reader`) into the
database file of the zip it uploads and hands the password to the import. Superset's dashboard
import leaves existing datasets and charts alone, so each kind is imported in its own pass
(database, datasets, charts, dashboards), each overwriting by UUID: a rerun updates, never
duplicates.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from warehouse.bi.superset.client import SupersetClient

# Superset's stand-in for a password in a URI; the real one travels beside it in the import.
PASSWORD_MASK = "XXXXXXXXXX"
# What the committed database file says; provisioning replaces it with the settings' URI.
COMMITTED_URI = f"postgresql+psycopg2://bi_reader:{PASSWORD_MASK}@127.0.0.1:5433/periscope"
# The import passes in dependency order and the `type` each pass's metadata.yaml must carry.
IMPORT_PASSES = (
    ("database", "Database"),
    ("dataset", "SqlaTable"),
    ("chart", "Slice"),
    ("dashboard", "Dashboard"),
)
_KINDS = ("databases", "datasets", "charts", "dashboards")
_ZIP_ROOT = "periscope_bundle"


# --- the bundle (pure) ---------------------------------------------------------------------
def read_bundle(folder: Path) -> dict[str, str]:
    """Every YAML file of the bundle by its path inside it, e.g. `charts/Anomaly_timeline.yaml`."""
    return {
        path.relative_to(folder).as_posix(): path.read_text()
        for path in sorted(folder.rglob("*.yaml"))
    }


def bundle_configs(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(text) for name, text in files.items()}


def dashboard_titles(files: dict[str, str]) -> list[str]:
    return [
        config["dashboard_title"]
        for name, config in bundle_configs(files).items()
        if name.startswith("dashboards/")
    ]


def upload_zip(files: dict[str, str], metadata_type: str, database_uri: str) -> bytes:
    """The bundle as one import pass uploads it: its metadata type, the settings' connection."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, text in files.items():
            if name == "metadata.yaml":
                text = yaml.safe_dump({**yaml.safe_load(text), "type": metadata_type})
            elif name.startswith("databases/"):
                config = yaml.safe_load(text)
                text = yaml.safe_dump({**config, "sqlalchemy_uri": database_uri}, sort_keys=False)
            bundle.writestr(f"{_ZIP_ROOT}/{name}", text)
    return buffer.getvalue()


def exported_files(export: bytes) -> dict[str, str]:
    """The files of a Superset export, root folder dropped, ready to commit: no password."""
    files: dict[str, str] = {}
    with zipfile.ZipFile(io.BytesIO(export)) as bundle:
        for member in bundle.namelist():
            if not member.endswith(".yaml"):
                continue
            name = member.split("/", 1)[1]
            config = stable_config(name, yaml.safe_load(bundle.read(member)))
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
            files[_without_id(name, files)] = text
    return files


def stable_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """An exported file without what differs between Superset instances (the numeric ids an
    import assigns afresh, the order of a dataset's columns) and without a password."""
    if name.startswith("databases/"):
        config["sqlalchemy_uri"] = COMMITTED_URI
        config.pop("password", None)
    elif name.startswith("datasets/"):
        config["columns"] = sorted(config.get("columns") or [], key=lambda c: c["column_name"])
        config["metrics"] = sorted(config.get("metrics") or [], key=lambda m: m["metric_name"])
    elif name.startswith("charts/"):
        _zero_ids(config["params"])
        if config.get("query_context"):
            context = json.loads(config["query_context"])
            context["datasource"] = {"id": 0, "type": "table"}
            _zero_ids(context.get("form_data") or {})
            config["query_context"] = json.dumps(context)
    elif name.startswith("dashboards/"):
        for item in config["position"].values():
            if isinstance(item, dict) and item.get("type") == "CHART":
                item["meta"]["chartId"] = 0
    return config


def _zero_ids(form_data: dict[str, Any]) -> None:
    if "datasource" in form_data:
        form_data["datasource"] = "0__table"
    if "slice_id" in form_data:
        form_data["slice_id"] = 0


def _without_id(name: str, taken: dict[str, str]) -> str:
    """Superset names exported files `<title>_<id>.yaml`; ids differ between instances, so the
    bundle drops them (and keeps one only to tell two namesakes apart).

    >>> _without_id("charts/Anomaly_timeline_3.yaml", {})
    'charts/Anomaly_timeline.yaml'
    >>> _without_id("databases/Periscope_marts.yaml", {})
    'databases/Periscope_marts.yaml'
    """
    if name.startswith("databases/") or name == "metadata.yaml":
        return name
    plain = re.sub(r"_\d+\.yaml$", ".yaml", name)
    return name if plain in taken else plain


def write_bundle(folder: Path, files: dict[str, str]) -> None:
    """Replace the bundle's YAML with `files` (a chart deleted in Superset leaves the bundle)."""
    for kind in _KINDS:
        for old in (folder / kind).rglob("*.yaml") if (folder / kind).exists() else ():
            old.unlink()
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for kind in _KINDS:  # folders left empty by a rename
        for sub in sorted((folder / kind).glob("**/"), reverse=True):
            if sub != folder / kind and not any(sub.iterdir()):
                sub.rmdir()


def expected_columns(chart: dict[str, Any]) -> list[str]:
    """The columns a chart's saved query returns: its dimensions' labels, then its metrics."""
    query = yaml.safe_load(chart["query_context"])["queries"][0]  # JSON is YAML
    names = [c["label"] if isinstance(c, dict) else c for c in query.get("columns", [])]
    names += [m if isinstance(m, str) else m["label"] for m in query.get("metrics", [])]
    return names


# --- Superset (I/O) ------------------------------------------------------------------------
def database_uri(user: str, host: str, port: int, database: str) -> str:
    """The URI the bundle's database gets: the password masked (it is sent on its own).

    >>> database_uri("bi_reader", "127.0.0.1", 5433, "periscope")
    'postgresql+psycopg2://bi_reader:XXXXXXXXXX@127.0.0.1:5433/periscope'
    """
    return f"postgresql+psycopg2://{quote(user, safe='')}:{PASSWORD_MASK}@{host}:{port}/{database}"


def provision(client: SupersetClient, folder: Path, database_uri: str, password: str) -> None:
    """Import the bundle, each kind overwriting its namesakes; the connection from settings.

    `database_uri` carries the masked password (`database_uri()`); Superset stores `password`.
    """
    files = read_bundle(folder)
    database_files = [name for name in files if name.startswith("databases/")]
    for kind, metadata_type in IMPORT_PASSES:
        passwords = dict.fromkeys(database_files, password) if kind == "database" else None
        client.import_zip(kind, upload_zip(files, metadata_type, database_uri), passwords)


def export(client: SupersetClient, folder: Path, *, include_new: bool = False) -> list[str]:
    """Write the bundle's dashboards (and with `include_new` every other one) back to disk."""
    wanted = set(dashboard_titles(read_bundle(folder)))
    chosen = [d for d in client.dashboards() if include_new or d["dashboard_title"] in wanted]
    if not chosen:
        return []
    files = exported_files(client.export_dashboards([d["id"] for d in chosen]))
    write_bundle(folder, files)
    return sorted(d["dashboard_title"] for d in chosen)


@dataclass
class ChartCheck:
    """What one chart's data request returned."""

    dashboard: str
    chart: str
    chart_id: int
    columns: list[str] = field(default_factory=list)
    rows: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        """The query ran (no rows is not an error: a source may not have landed yet)."""
        return not self.error


def check_charts(client: SupersetClient, titles: list[str]) -> list[ChartCheck]:
    """Request every chart's data (fresh, not cached) on the dashboards named `titles`."""
    found = {d["dashboard_title"]: d["id"] for d in client.dashboards()}
    checks = []
    for title in titles:
        if title not in found:
            checks.append(ChartCheck(title, "(dashboard)", 0, error="dashboard not found"))
            continue
        for chart in client.dashboard_charts(found[title]):
            check = ChartCheck(title, chart["slice_name"], int(chart["id"]))
            answer = client.raw_get(f"/api/v1/chart/{chart['id']}/data/", force="true")
            body = (
                answer.json()
                if answer.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if answer.status_code >= 400:
                check.error = _error_text(body) or f"HTTP {answer.status_code}"
            else:
                result = body["result"][0]
                check.error = result.get("error") or ""
                check.columns = list(result.get("colnames") or [])
                check.rows = int(result.get("rowcount") or 0)
            checks.append(check)
    return checks


def _error_text(body: dict[str, Any]) -> str:
    if body.get("errors"):
        return "; ".join(str(e.get("message", e)) for e in body["errors"])
    return str(body.get("message", ""))
