"""Superset on the real marts: the bundle provisioned into the project's Superset service, every
chart's data requested through the REST API, every dashboard rendered in headless Chromium.

The marts are conftest.py's `built_marts` (test_warehouse.py's lake: real silver of two weather
stations, the UCI station and the first taxi hours, stand-in gold, loaded and built by
`periscope warehouse load` and `periscope dbt build`), shared with the Tableau test. Superset's venv and metadata are
cached under .local (first run: install and migrations; later runs only start the server).
Screenshots go to a temp folder, or to $PERISCOPE_SUPERSET_SCREENSHOTS (docs/img for the README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import yaml
from psycopg2 import errors

from periscope.services.superset import SupersetServer
from tests.integration.conftest import _INSTANCE, run_periscope
from warehouse.bi.superset import BUNDLE_DIR
from warehouse.bi.superset.client import SupersetClient
from warehouse.bi.superset.provision import (
    bundle_configs,
    check_charts,
    dashboard_titles,
    expected_columns,
    read_bundle,
)

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")
TITLES = ["Forecast accuracy", "Anomalies", "Observations", "Taxi demand"]
# Fixed for the test instance so its cached metadata (admin, encrypted secrets) stays valid.
SUPERSET_ENV = {
    "PERISCOPE_SUPERSET_PORT": str(18088 + 1000 * _INSTANCE),
    "PERISCOPE_SUPERSET_ADMIN_USER": "admin",
    "PERISCOPE_SUPERSET_ADMIN_PASSWORD": "periscope-test-admin",
    "PERISCOPE_SUPERSET_SECRET_KEY": "periscope-test-secret-key-not-for-real-use",
}
# The charts whose metric reads forecast_accuracy.abs_error (renamed in the broken-dataset test).
READS_ABS_ERROR = {"MAE by measure and horizon", "MAE over time by measure"}


@pytest.fixture(scope="module")
def marts(built_marts):
    """The session's built marts (conftest.py); their settings."""
    return built_marts.ensure().settings


@pytest.fixture(scope="module")
def dbt_env(built_marts):
    """The environment of `periscope` subprocesses on that lake and warehouse."""
    return built_marts.env


@pytest.fixture(scope="module")
def superset(marts, dbt_env):
    """The Superset service of this test instance, started (installed on the first run)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SUPERSET_ENV.items():
            mp.setenv(key, value)
        server = SupersetServer(marts)
        started = not server.status().running
        began = time.monotonic()
        outcome = server.start()
        print(f"superset: {outcome} in {time.monotonic() - began:.0f} s")
        yield server
        if started:
            server.stop()


@pytest.fixture(scope="module")
def cli_env(dbt_env, superset):
    return {**dbt_env, **SUPERSET_ENV}


@pytest.fixture(scope="module")
def client(superset, cli_env) -> SupersetClient:
    run_periscope(cli_env, "bi", "provision")
    return SupersetClient(superset.url, superset.admin_user, superset.admin_password)


def _counts(client: SupersetClient) -> dict[str, list[str]]:
    """What Superset holds, by kind: the names, sorted (a duplicate shows twice)."""
    listing = {
        "dashboard": "dashboard_title",
        "chart": "slice_name",
        "dataset": "table_name",
        "database": "database_name",
    }
    return {
        kind: sorted(
            row[name]
            for row in client.get(f"/api/v1/{kind}/", q=f"(columns:!({name}),page_size:100)")[
                "result"
            ]
        )
        for kind, name in listing.items()
    }


def test_provisioning_twice_updates_and_never_duplicates(client, cli_env):
    first = _counts(client)
    assert sorted(first["dashboard"]) == sorted(TITLES)
    assert first["database"] == ["Periscope marts"]
    assert len(first["chart"]) == len(set(first["chart"])) == 12
    run_periscope(cli_env, "bi", "provision")
    assert _counts(client) == first


def test_every_chart_returns_rows_with_its_columns(client):
    charts = {
        config["slice_name"]: config
        for name, config in bundle_configs(read_bundle(BUNDLE_DIR)).items()
        if name.startswith("charts/")
    }
    checks = check_charts(client, TITLES)
    assert {c.chart for c in checks} == set(charts)
    for check in checks:
        assert check.ok and check.rows > 0, (check.dashboard, check.chart, check.error)
        assert set(expected_columns(charts[check.chart])) <= set(check.columns), check


def render_dashboards(superset: SupersetServer, titles: list[str], shots: Path) -> dict[str, str]:
    """Open each dashboard in headless Chromium; the error text of every chart that shows one,
    by '<dashboard> / <chart>'. Saves a full-page PNG of each dashboard in `shots`."""
    from playwright.sync_api import sync_playwright

    slugs = {
        c["dashboard_title"]: c["slug"]
        for name, c in bundle_configs(read_bundle(BUNDLE_DIR)).items()
        if name.startswith("dashboards/")
    }
    failures: dict[str, str] = {}
    with sync_playwright() as playwright:
        # As root Chromium's sandbox cannot start; the page only renders without it.
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{superset.url}/login/")
        page.fill("#username", superset.admin_user)
        page.fill("#password", superset.admin_password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
        for title in titles:
            page.goto(f"{superset.url}/superset/dashboard/{slugs[title]}/?standalone=1")
            page.wait_for_selector("[data-test-chart-name]", timeout=120_000)
            charts = page.locator("[data-test-chart-name]")
            # Each chart ends as drawn content or as an error alert; wait for all of them.
            for i in range(charts.count()):
                charts.nth(i).locator(
                    "[data-test=chart-container], .ant-alert-error"
                ).first.wait_for(timeout=120_000)
            page.wait_for_function(
                "document.querySelectorAll('.loading, [data-test=loading-indicator]').length == 0",
                timeout=120_000,
            )
            for i in range(charts.count()):
                chart = charts.nth(i)
                alert = chart.locator(".ant-alert-error")
                if alert.count():
                    name = chart.get_attribute("data-test-chart-name")
                    failures[f"{title} / {name}"] = alert.first.inner_text()
            page.screenshot(path=str(shots / f"superset_{slugs[title]}.png"), full_page=True)
        browser.close()
    return failures


def test_every_dashboard_renders_in_chromium_without_a_chart_error(superset, client, tmp_path):
    shots = Path(os.environ.get("PERISCOPE_SUPERSET_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    assert render_dashboards(superset, TITLES, shots) == {}
    for title in TITLES:
        slug = title.lower().replace(" ", "-")
        assert (shots / f"superset_{slug}.png").stat().st_size > 20_000


def test_a_renamed_column_fails_the_checks_with_the_charts_names(superset, client, cli_env):
    [dataset] = client.get(
        "/api/v1/dataset/", q="(filters:!((col:table_name,opr:eq,value:forecast_accuracy)))"
    )["result"]
    sql = client.get(f"/api/v1/dataset/{dataset['id']}")["result"]["sql"]
    assert "a.abs_error," in sql
    client.put(
        f"/api/v1/dataset/{dataset['id']}",
        {"sql": sql.replace("a.abs_error,", "a.abs_error as abs_err,")},
    )
    try:
        broken = {c.chart: c.error for c in check_charts(client, TITLES) if not c.ok}
        assert set(broken) == READS_ABS_ERROR
        assert all("abs_error" in error for error in broken.values()), broken
        failures = render_dashboards(superset, ["Forecast accuracy"], Path("/tmp"))
        assert set(failures) == {f"Forecast accuracy / {name}" for name in READS_ABS_ERROR}
        check = subprocess.run(
            [PERISCOPE, "bi", "check"],
            env={**cli_env, "COLUMNS": "300"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert check.returncode == 1
        assert all(name in check.stdout for name in READS_ABS_ERROR), check.stdout
    finally:
        # A rerun of provisioning puts the bundle's SQL back: it updates, it does not skip.
        run_periscope(cli_env, "bi", "provision")
    assert all(c.ok for c in check_charts(client, TITLES))


def test_export_writes_the_dashboards_back_as_committed_and_with_an_edit(client, cli_env, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR, bundle)
    run_periscope(cli_env, "bi", "export", "--bundle", str(bundle))
    committed, exported = read_bundle(BUNDLE_DIR), read_bundle(bundle)
    assert sorted(exported) == sorted(committed)
    for name in committed:
        if name != "metadata.yaml":  # its export timestamp changes
            assert yaml.safe_load(exported[name]) == yaml.safe_load(committed[name]), name
    assert "XXXXXXXXXX" in exported["databases/Periscope_marts.yaml"]
    assert marts_password(cli_env) not in "".join(exported.values())

    # An edit made in Superset lands in the bundle.
    [chart] = client.get(
        "/api/v1/chart/", q="(filters:!((col:slice_name,opr:eq,value:'Anomaly timeline')))"
    )["result"]
    client.put(f"/api/v1/chart/{chart['id']}", {"description": "edited in Superset"})
    try:
        run_periscope(cli_env, "bi", "export", "--bundle", str(bundle))
        edited = [
            c
            for c in bundle_configs(read_bundle(bundle)).values()
            if c.get("slice_name") == "Anomaly timeline"
        ]
        assert [c["description"] for c in edited] == ["edited in Superset"]
        assert dashboard_titles(read_bundle(bundle)) == dashboard_titles(committed)
    finally:
        run_periscope(cli_env, "bi", "provision")


def marts_password(env: dict[str, str]) -> str:
    return env["PERISCOPE_POSTGRES_BI_PASSWORD"]


def test_superset_connects_as_bi_reader_who_still_reads_only_the_marts(client, marts):
    [database] = client.get("/api/v1/database/")["result"]
    detail = client.get(f"/api/v1/database/{database['id']}/connection")["result"]
    assert detail["sqlalchemy_uri"].startswith(f"postgresql+psycopg2://{marts.postgres_bi_user}:")
    with psycopg2.connect(marts.postgres_dsn("bi")) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.fct_forecast_accuracy")
        assert cur.fetchone()[0] > 0
        with pytest.raises(errors.InsufficientPrivilege):
            cur.execute("select count(*) from lake.weather_observations")
