"""The live dashboard's first paint: how long until a browser shows each page's data.

Builds the API benchmark's weather gold table (`--stations` x `--days` of hourly windows, 72
forecasts a window; bench/api_latency.py's `build_lake`) in a temporary folder, or uses `--lake`.
Starts `periscope dashboard` on 127.0.0.1 and opens it in headless Chromium (Debian's, driven by
Playwright). Prints, for each page, the seconds until its data shows: in the first browser
session after the server started (`periscope dashboard` reads the gold tables into memory as it
starts, so this one may wait for the rest of that read), then for `--visitors` new visitors one
after another (empty browser caches: their median and the slowest), and for the last of them
again in a new tab (a returning visitor, Streamlit's code in its cache). Entities is where a
visit opens (its time counts from navigation: the first paint, target <= 3 s; with more than
300 entities its table of the most anomalous; "open every entity" times its grid of all from
the click on its "Show every" toggle); the other pages count from the click that opens them.
On a lake it built, it then appends a day of windows to gold while a session shows Entities and
prints how long the open page takes to show the new version (target: data at most 15 s old).

    nice -n 10 .venv/bin/python bench/dashboard_paint.py
    nice -n 10 .venv/bin/python bench/dashboard_paint.py --stations 1000 --days 14
    nice -n 10 .venv/bin/python bench/dashboard_paint.py --lake lake     # the project's own lake
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from api_latency import build_lake, free_port, gold_day, station_ids  # noqa: E402  (a sibling script)

console = Console(width=None if sys.stdout.isatty() else 160)
CHROMIUM = "/usr/bin/chromium"
# page -> what shows once it has drawn its data
PAGES = {
    # with more than 300 entities: an HTML table of the most anomalous
    "Entities": '[data-testid="stTable"], [data-testid="stDataFrame"], [data-testid="stHtml"]',
    "Series": '[data-testid="stVegaLiteChart"]',
    "Anomalies": '[data-testid="stDataFrame"], [data-testid="stAlert"]',
    "Models": '[data-testid="stTable"], [data-testid="stAlert"]',
    "System health": '[data-testid="stTable"]',
}


def start_dashboard(lake_root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PERISCOPE_LAKE_ROOT=str(lake_root.resolve()))
    env.setdefault("PERISCOPE_POSTGRES_OWNER_PASSWORD", "unused")
    env.setdefault("PERISCOPE_POSTGRES_BI_PASSWORD", "unused")
    periscope = Path(sys.executable).with_name("periscope")
    with log.open("wb") as out:  # a file: an unread pipe would block the server once full
        return subprocess.Popen(
            [str(periscope), "dashboard", "--port", str(port)], env=env, stdout=out, stderr=out
        )


def wait_until_up(url: str, server: subprocess.Popen[bytes], timeout_s: float = 300) -> float:
    started = time.monotonic()
    with console.status("starting Streamlit ..."):
        while time.monotonic() - started < timeout_s:
            if server.poll() is not None:
                raise SystemExit("the dashboard exited: see its log")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.3)
    raise SystemExit("the dashboard did not answer in time")


def paint(page, name: str, started: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds since `started` until page `name` shows its heading and its data."""
    heading = "Anomaly feed" if name == "Anomalies" else name
    page.get_by_role("heading", name=heading).wait_for(timeout=600_000)
    page.locator(PAGES[name]).first.wait_for(timeout=600_000)
    return time.monotonic() - started


def measure(url: str, visitors: int) -> dict[str, dict[str, list[float]]]:
    """Per page: `cold` (the first session after the server started), `warm` (`visitors` new
    visitors afterwards, one after another, nothing cached) and `cached` (the last of them again
    in a new tab, Streamlit's code in the browser's cache); Entities is the page a visit opens
    on, the others one click away."""
    from playwright.sync_api import sync_playwright

    figures: dict[str, dict[str, list[float]]] = {name: {} for name in PAGES}
    grid: dict[
        str, list[float]
    ] = {}  # Entities' grid of every entity, when it has more than a table
    # Entities' heading: Streamlit's front-end has loaded and the script's first output arrived
    # (what any page costs before its data, on this machine at its present load)
    heading: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            context = None
            for kind in ("cold", *["warm"] * visitors, "cached"):
                if kind != "cached":  # a new visitor: an empty browser cache
                    if context is not None:
                        context.close()
                    context = browser.new_context(viewport={"width": 1400, "height": 1200})
                assert context is not None
                page = context.new_page()
                started = time.monotonic()
                page.goto(url)
                page.get_by_role("heading", name="Entities").wait_for(timeout=600_000)
                heading.setdefault(kind, []).append(time.monotonic() - started)
                figures["Entities"].setdefault(kind, []).append(paint(page, "Entities", started))
                # Many entities: the first paint is a table of the most anomalous; the grid of
                # all of them opens from an expander (timed from the click)
                if page.get_by_text("most anomalous of", exact=False).count():
                    started = time.monotonic()
                    page.get_by_text("Show every", exact=False).first.click()
                    page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(
                        timeout=600_000
                    )
                    grid.setdefault(kind, []).append(time.monotonic() - started)
                for name in list(PAGES)[1:]:
                    started = time.monotonic()
                    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
                    figures[name].setdefault(kind, []).append(paint(page, name, started))
                page.close()
        finally:
            browser.close()
    entities = {"Entities: heading only": heading, "Entities": figures.pop("Entities")}
    if grid:
        entities["Entities: open every entity (grid)"] = grid
    return entities | figures


def freshness(url: str, gold: str, stations: int) -> tuple[int, float]:
    """Append a day of windows to gold while a session shows Entities; seconds from the end of
    the commit until the open page shows the new gold version (no reload: the fragments
    re-run on their own). Returns (rows appended, seconds)."""
    import numpy as np
    from deltalake import DeltaTable, write_deltalake
    from playwright.sync_api import sync_playwright

    table = DeltaTable(gold)
    import pyarrow.compute as pc

    last = table.to_pyarrow_dataset().to_table(columns=["window_start"]).column(0)
    day_start = pc.max(last).as_py() + timedelta(hours=1)
    rows = gold_day(station_ids(stations), day_start, np.random.default_rng(11))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(url)
            paint(page, "Entities", time.monotonic())
            write_deltalake(gold, rows, mode="append")
            committed = time.monotonic()
            version = str(DeltaTable(gold).version())
            value = page.locator('[data-testid="stMetric"]', has_text="gold version")
            value = value.locator('[data-testid="stMetricValue"]')
            while value.inner_text().strip() != version:
                page.wait_for_timeout(200)
                if time.monotonic() - committed > 300:
                    raise SystemExit("the dashboard did not show the new gold version in 300 s")
            return rows.num_rows, time.monotonic() - committed
        finally:
            browser.close()


def watch_shown_version(url: str, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    """One session on Entities, noting about every second (time, gold version it shows) until
    `stop` is set: what `bench/score.py --latency --dashboard` samples while its stream runs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(url)
            value = page.locator('[data-testid="stMetric"]', has_text="gold version")
            value = value.locator('[data-testid="stMetricValue"]').first
            value.wait_for(timeout=600_000)
            while not stop.is_set():
                text = value.inner_text().strip()
                if text.isdigit():
                    samples.append((time.time(), int(text)))
                page.wait_for_timeout(1000)
        finally:
            browser.close()


def behind_s(samples: list[tuple[float, int]], commits: list[tuple[int, float]]) -> list[float]:
    """Per (time, version shown): how long the page had been behind then, the time since the
    oldest commit it did not show yet (0 when it showed the newest). `commits`: (version,
    commit time) of the gold table.

    >>> behind_s([(10.0, 1), (12.0, 2)], [(1, 5.0), (2, 8.0), (3, 11.5)])
    [2.0, 0.5]
    """
    found = []
    for at, shown in samples:
        missed = [when for version, when in commits if version > shown and when <= at]
        found.append(at - min(missed) if missed else 0.0)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--lake", type=Path, help="Use this lake root instead of building one.")
    parser.add_argument(
        "--visitors",
        type=lambda text: max(1, int(text)),
        default=5,
        help="New visitors after the first (their median; at least 1).",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="periscope-dashboard-bench-"))
    try:
        root = args.lake
        if root is None:
            root = workdir / "lake"
            build_lake(root, args.stations, args.days)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_dashboard(root, port, workdir / "dashboard.log")
        try:
            up_s = wait_until_up(url, server)
            figures = measure(url, args.visitors)
            fresh = (
                None
                if args.lake
                else freshness(url, str(root / "gold" / "weather_predictions"), args.stations)
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    what = f"lake {args.lake}" if args.lake else f"{args.stations} stations x {args.days} days"
    table = Table(title=f"dashboard paint ({what}; Streamlit answered after {up_s:.1f} s)")
    columns = (
        "page",
        "first session after start (s)",
        f"new visitors later: median of {args.visitors} (s)",
        "slowest of them (s)",
        "returning (cached) (s)",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for name, f in figures.items():
        warm = f["warm"]
        table.add_row(
            name,
            f"{f['cold'][0]:.2f}",
            f"{statistics.median(warm):.2f}",
            f"{max(warm):.2f}",
            f"{f['cached'][0]:.2f}",
        )
    console.print(table)
    console.print(
        "new visitors' Entities first paint, each (s): "
        + ", ".join(f"{v:.2f}" for v in figures["Entities"]["warm"])
    )
    if fresh is not None:
        console.print(
            f"a new gold commit ({fresh[0]:,} windows) showed in an open session after "
            f"{fresh[1]:.1f} s (target: data at most 15 s old)"
        )
    console.print("target: a new visitor's first paint <= 3 s (issue 18)")


if __name__ == "__main__":
    main()
