"""The live dashboard rendered in a real browser after a small real pipeline run.

The lake is conftest.py's `scored_weather` (shared with the lineage test): ten days of two real
weather stations through Kafka, bronze, silver, champions trained on Ray, gold scored. Then
`periscope dashboard` runs as a subprocess and headless Chromium (Debian's, driven by Playwright) opens each page:
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

from periscope.settings import Settings
from tests.integration.conftest import PIPELINE_STATIONS as STATIONS

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
    # This run scored without publishing: the feed says nothing has arrived (an info box).
    "Live feed": ("Live feed", '[data-testid="stAlert"], [data-testid="stDataFrame"]'),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dashboard_url(scored_weather: Settings) -> Iterator[str]:
    """`periscope dashboard` over the scored lake, until the module ends."""
    port = _free_port()
    env = {
        **os.environ,
        "PERISCOPE_LAKE_ROOT": scored_weather.lake_root,
        "PERISCOPE_LOCAL_DIR": str(scored_weather.local_dir),
        "PERISCOPE_DASHBOARD_REFRESH_S": "5",
    }
    log = scored_weather.local_dir / "dashboard.log"
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


def test_every_page_renders_in_chromium_with_the_stations_and_no_error(dashboard_url, services):
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
            shown: dict[str, str] = {}
            for name, (heading, drawn) in PAGES.items():
                page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
                page.get_by_role("heading", name=heading).wait_for(timeout=90_000)
                page.locator(drawn).first.wait_for(timeout=90_000)
                page.wait_for_timeout(1500)  # let the charts and the map draw
                assert page.locator(ERRORS).count() == 0, page.locator(ERRORS).all_inner_texts()
                page.screenshot(path=artifacts / f"dashboard-{name.lower().replace(' ', '-')}.png")
                shown[name] = page.locator("body").inner_text()
            assert "weather" in shown["System health"]
            assert "Records/s per stage" in shown["System health"]
            # This run published nothing: the feed says so, and shows no error.
            assert "No prediction has arrived" in shown["Live feed"], shown["Live feed"]
        finally:
            browser.close()
