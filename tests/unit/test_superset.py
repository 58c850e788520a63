"""The Superset bundle as committed, and the pure parts of provisioning and exporting it."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import yaml

from periscope.services.superset import LOCK_FILE, SupersetServer, SupersetSettings, lock_digest
from periscope.settings import Settings
from warehouse.bi.superset import BUNDLE_DIR
from warehouse.bi.superset.provision import (
    COMMITTED_URI,
    PASSWORD_MASK,
    bundle_configs,
    dashboard_titles,
    database_uri,
    expected_columns,
    exported_files,
    read_bundle,
    upload_zip,
    write_bundle,
)

TITLES = {"Forecast accuracy", "Anomalies", "Observations", "Taxi demand"}


def _configs(kind: str) -> list[dict]:
    return [c for n, c in bundle_configs(read_bundle(BUNDLE_DIR)).items() if n.startswith(kind)]


def test_the_bundle_holds_exactly_the_four_dashboards_the_exposures_name():
    assert sorted(dashboard_titles(read_bundle(BUNDLE_DIR))) == sorted(TITLES)


def test_every_dataset_caches_for_less_than_every_dashboard_refreshes():
    refreshes = [d["metadata"]["refresh_frequency"] for d in _configs("dashboards/")]
    timeouts = [d["cache_timeout"] for d in _configs("datasets/")]
    assert len(timeouts) == 5 and all(t for t in timeouts)
    assert all(r > 0 for r in refreshes)
    assert max(timeouts) < min(refreshes)


def test_every_reference_in_the_bundle_resolves():
    databases = {d["uuid"] for d in _configs("databases/")}
    datasets = {d["uuid"]: d for d in _configs("datasets/")}
    charts = {c["uuid"]: c for c in _configs("charts/")}
    assert all(d["database_uuid"] in databases for d in datasets.values())
    on_dashboards = []
    for dashboard in _configs("dashboards/"):
        for item in dashboard["position"].values():
            if isinstance(item, dict) and item.get("type") == "CHART":
                assert item["meta"]["uuid"] in charts, item
                on_dashboards.append(item["meta"]["uuid"])
    assert sorted(on_dashboards) == sorted(charts)  # each chart on exactly one dashboard
    for chart in charts.values():
        dataset = datasets[chart["dataset_uuid"]]
        names = {c["column_name"] for c in dataset["columns"]}
        names |= {m["metric_name"] for m in dataset["metrics"]}
        assert set(expected_columns(chart)) <= names, chart["slice_name"]


def test_the_committed_bundle_has_no_password_and_reads_only_the_marts():
    [database] = _configs("databases/")
    assert database["sqlalchemy_uri"] == COMMITTED_URI
    assert "password" not in database
    assert all(d["schema"] == "marts" for d in _configs("datasets/"))
    for dataset in _configs("datasets/"):
        tables = re.findall(r"\b(?:from|join)\s+([\w.]+)", dataset["sql"], flags=re.IGNORECASE)
        assert tables and all(t.startswith("marts.") for t in tables), dataset["table_name"]


def test_the_lock_pins_superset_and_what_it_needs_to_start():
    lock = LOCK_FILE.read_text()
    for pin in ("apache-superset==6.1.0", "psycopg2-binary==", "cachetools==", "rich=="):
        assert pin in lock
    flask_caching = next(line for line in lock.splitlines() if line.startswith("flask-caching=="))
    assert tuple(int(p) for p in flask_caching.split("==")[1].split(".")[:2]) < (2, 5)


def test_the_upload_carries_the_settings_connection_and_each_pass_type():
    files = read_bundle(BUNDLE_DIR)
    uri = database_uri("bi_reader", "127.0.0.1", 15433, "periscope")
    with zipfile.ZipFile(io.BytesIO(upload_zip(files, "SqlaTable", uri))) as bundle:
        names = bundle.namelist()
        assert len(names) == len(files) and all(n.startswith("periscope_bundle/") for n in names)
        meta = yaml.safe_load(bundle.read("periscope_bundle/metadata.yaml"))
        database = yaml.safe_load(bundle.read("periscope_bundle/databases/Periscope_marts.yaml"))
    assert meta["type"] == "SqlaTable"
    assert database["sqlalchemy_uri"] == uri and f":{PASSWORD_MASK}@127.0.0.1:15433/" in uri


def _export_zip(files: dict[str, dict]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, config in files.items():
            bundle.writestr(f"dashboard_export_20261129/{name}", yaml.safe_dump(config))
    return buffer.getvalue()


def test_an_export_drops_passwords_and_instance_ids(tmp_path):
    chart_params = {"viz_type": "table", "datasource": "7__table", "slice_id": 42}
    export = _export_zip(
        {
            "metadata.yaml": {"version": "1.0.0", "type": "Dashboard"},
            "databases/Periscope_marts.yaml": {
                "sqlalchemy_uri": "postgresql+psycopg2://bi_reader:secret@db:5433/periscope",
                "password": "secret",
            },
            "charts/Top_zones_42.yaml": {
                "slice_name": "Top zones",
                "params": chart_params,
                "query_context": json.dumps(
                    {"datasource": {"id": 7, "type": "table"}, "form_data": dict(chart_params)}
                ),
            },
            "datasets/Periscope_marts/trips_7.yaml": {
                "table_name": "trips",
                "columns": [{"column_name": "b"}, {"column_name": "a"}],
                "metrics": [],
            },
            "dashboards/Taxi_demand_3.yaml": {
                "position": {"CHART-1": {"type": "CHART", "meta": {"chartId": 42}}}
            },
        }
    )
    files = exported_files(export)
    assert sorted(files) == [
        "charts/Top_zones.yaml",
        "dashboards/Taxi_demand.yaml",
        "databases/Periscope_marts.yaml",
        "datasets/Periscope_marts/trips.yaml",
        "metadata.yaml",
    ]
    assert "secret" not in "".join(files.values())
    chart = yaml.safe_load(files["charts/Top_zones.yaml"])
    assert chart["params"]["datasource"] == "0__table" and chart["params"]["slice_id"] == 0
    assert json.loads(chart["query_context"])["datasource"]["id"] == 0
    dataset = yaml.safe_load(files["datasets/Periscope_marts/trips.yaml"])
    assert [c["column_name"] for c in dataset["columns"]] == ["a", "b"]
    dashboard = yaml.safe_load(files["dashboards/Taxi_demand.yaml"])
    assert dashboard["position"]["CHART-1"]["meta"]["chartId"] == 0

    # Writing it replaces the bundle: a chart gone from Superset is gone from the bundle.
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "Deleted_chart.yaml").write_text("slice_name: gone\n")
    write_bundle(tmp_path, files)
    assert sorted(read_bundle(tmp_path)) == sorted(files)


def test_an_env_without_superset_values_derives_stable_distinct_secrets(tmp_path):
    settings = Settings(
        local_dir=tmp_path,
        postgres_owner_password="owner-pw",
        postgres_bi_password="bi-pw",
    )
    bare = SupersetSettings(admin_password=None, secret_key=None, _env_file=None)
    first, again = SupersetServer(settings, bare), SupersetServer(settings, bare)
    assert first.admin_password == again.admin_password
    assert first.secret_key == again.secret_key != first.admin_password
    assert "owner-pw" not in first.admin_password + first.secret_key
    given = SupersetSettings(admin_password="pw", secret_key="key", _env_file=None)
    chosen = SupersetServer(settings, given)
    assert (chosen.admin_password, chosen.secret_key) == ("pw", "key")


def test_the_venv_is_reinstalled_only_when_the_lock_or_python_changes():
    lock = LOCK_FILE.read_text()
    assert lock_digest(lock, "/usr/bin/python3.11") == lock_digest(lock, "/usr/bin/python3.11")
    assert lock_digest(lock, "/usr/bin/python3.11") != lock_digest(
        lock + "x==1\n", "/usr/bin/python3.11"
    )
    assert lock_digest(lock, "/usr/bin/python3.11") != lock_digest(lock, "/opt/python3.11")


def test_two_instances_installing_at_once_install_the_venv_once(tmp_path):
    # Test instances share the venv; the second waits for the first and finds it installed.
    # (The install itself, ~50 s of uv, is what the integration tier runs for real.)
    settings = Settings(
        local_dir=tmp_path, postgres_owner_password="owner-pw", postgres_bi_password="bi-pw"
    )
    venv = tmp_path / "superset" / "venv"
    config = SupersetSettings(venv=venv, _env_file=None)
    installs: list[str] = []

    class Slow(SupersetServer):
        def _install_venv(self, python: str) -> None:
            installs.append(python)
            venv.mkdir(parents=True, exist_ok=True)
            time.sleep(0.3)  # long enough for the other thread to arrive meanwhile

    servers = [Slow(settings, config), Slow(settings, config)]
    with ThreadPoolExecutor(2) as pool:
        installed = sorted(pool.map(lambda server: server.install(), servers))
    assert installed == [False, True]
    assert len(installs) == 1
    assert servers[0].install() is False  # and later starts reuse it
