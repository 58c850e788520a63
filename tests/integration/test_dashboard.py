"""The live dashboard rendered in a real browser after a small real pipeline run.

Silver is built by the real batch code from 10 days of two real weather stations (test_gold's
`Lake`), champions are trained on Ray and `run_scoring` writes gold. Then `periscope dashboard`
runs as a subprocess and headless Chromium (Debian's, driven by Playwright) opens each page:
the stations must show and no page may show an exception or an error box. Screenshots are kept
in <local_dir>/artifacts/ (the entities page is docs/img/dashboard.png in the README).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.gold import run_scoring
from ml.ray_session import ray_session
from ml.training import run_training
from tests.integration.test_gold import CONFIG, CONTRACT, FIRST_DAYS, STATIONS, Lake

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")
CHROMIUM = "/usr/bin/chromium"
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
PAGES = {  # page -> its heading, and what shows once it has drawn its data
    "Entities": ("Entities", '[data-testid="stTable"]'),
    "Series": ("Series", '[data-testid="stVegaLiteChart"]'),
    "Anomalies": ("Anomaly feed", '[data-testid="stMetric"], [data-testid="stAlert"]'),
    "Models": ("Models", '[data-testid="stTable"]'),
    "System health": ("System health", '[data-testid="stTable"]'),
}


@pytest.fixture(scope="module")
def scored_lake(spark, services, tmp_path_factory) -> Lake:
    lake = Lake(spark, services, tmp_path_factory.mktemp("dashboard"))
    lake.add_days(0, FIRST_DAYS)
    with ray_session(lake.settings, workers=2):
        report = run_training(lake.settings, "weather", config=CONFIG, policy="if-none", workers=2)
        assert set(report.registered) == {"forecast", "anomaly"}
        rounds = run_scoring(lake.settings, [CONTRACT], available_now=True, actors=1, publish=False)
    assert sum(r.windows for r in rounds) > 0
    return lake


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dashboard_url(scored_lake: Lake) -> Iterator[str]:
    """`periscope dashboard` over the scored lake, until the module ends."""
    port = _free_port()
    env = {
        **os.environ,
        "PERISCOPE_LAKE_ROOT": scored_lake.settings.lake_root,
        "PERISCOPE_LOCAL_DIR": str(scored_lake.settings.local_dir),
        "PERISCOPE_DASHBOARD_REFRESH_S": "5",
    }
    log = scored_lake.settings.local_dir / "dashboard.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [PERISCOPE, "dashboard", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no dashboard at {url}: {log.read_text()}"
            time.sleep(0.5)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_every_page_renders_in_chromium_with_the_stations_and_no_error(
    dashboard_url, scored_lake, services
):
    from playwright.sync_api import sync_playwright

    artifacts = Path(services.local_dir) / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            started = time.monotonic()
            page.goto(dashboard_url)
            # The entities grid names each station the pipeline scored.
            table = page.locator('[data-testid="stTable"]').first
            for station in STATIONS:
                table.get_by_text(station, exact=True).wait_for(timeout=90_000)
            print(f"first paint with the stations: {time.monotonic() - started:.1f} s")
            for name, (heading, drawn) in PAGES.items():
                page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
                page.get_by_role("heading", name=heading).wait_for(timeout=90_000)
                page.locator(drawn).first.wait_for(timeout=90_000)
                page.wait_for_timeout(1500)  # let the charts and the map draw
                assert page.locator(ERRORS).count() == 0, page.locator(ERRORS).all_inner_texts()
                page.screenshot(path=artifacts / f"dashboard-{name.lower().replace(' ', '-')}.png")
            health = page.locator("body").inner_text()
            assert "weather" in health and "Records/s per stage" in health
        finally:
            browser.close()
