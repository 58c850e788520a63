"""API latency under load: 50 concurrent clients against `periscope api` on a large gold lake.

Builds a weather gold table of `--stations` x `--days` of hourly windows (72 forecasts a window,
like gold's: 3 measures x 24 horizons, with 80% bands and a `method`; about 5% of windows
flagged) in a temporary folder, or uses `--lake` (a lake root holding gold/weather_predictions).
Starts `periscope api` with uvicorn on 127.0.0.1, waits until the lake is warm, then runs
`--clients` httpx async clients in a closed loop (each sends its next request when the last one
answered) and prints p50/p95/p99 for:

- `/predictions/weather/{station}` (a random station per request; target p95 <= 50 ms)
- `/anomalies?since=<a random day>&limit=100` (target p95 <= 200 ms)

The clients run in this process, on the same machine as the server: their own CPU time is
in the figures (on a 2-core laptop about half of it).

    nice -n 10 .venv/bin/python bench/api_latency.py
    nice -n 10 .venv/bin/python bench/api_latency.py --stations 100 --days 30 --seconds 10
    nice -n 10 .venv/bin/python bench/api_latency.py --lake lake     # the project's own lake
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)

MEASURES = ("temperature", "humidity", "pressure")
HORIZONS = 24
TS = pa.timestamp("us", tz="UTC")
FORECAST = pa.struct(
    [
        pa.field("measure", pa.string(), nullable=False),
        pa.field("horizon_h", pa.int32(), nullable=False),
        pa.field("target_time", TS, nullable=False),
        pa.field("yhat", pa.float64(), nullable=False),
        pa.field("yhat_lower", pa.float64(), nullable=False),
        pa.field("yhat_upper", pa.float64(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
    ]
)
SCHEMA = pa.schema(
    [
        pa.field("station_id", pa.string(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("anomaly_score", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
        pa.field("anomaly_kind", pa.string()),
        pa.field("forecast_origin", TS, nullable=False),
        pa.field("forecasts", pa.list_(FORECAST), nullable=False),
        pa.field("forecast_model", pa.string()),
        pa.field("forecast_version", pa.int64()),
        pa.field("anomaly_model", pa.string()),
        pa.field("anomaly_version", pa.int64()),
        pa.field("scored_at", TS, nullable=False),
    ]
)


def station_ids(n: int) -> list[str]:
    return [f"station_{i:04d}" for i in range(n)]


def gold_day(stations: list[str], day_start: datetime, rng: np.random.Generator) -> pa.Table:
    """One day of hourly gold windows for every station, built column-wise (fast)."""
    n_st, per = len(stations), len(MEASURES) * HORIZONS
    hours = np.arange(24)
    start_us = int(day_start.timestamp() * 1e6) + hours * 3_600_000_000
    starts = np.tile(start_us, n_st)  # station-major: all hours of station 0, then 1, ...
    n = starts.size
    keys = _strings(stations, np.repeat(np.arange(n_st, dtype=np.int32), 24))
    scores = rng.random(n)
    flagged = scores > 0.95
    origin = starts + 2 * 3_600_000_000
    # forecasts: flat arrays, then one list per row
    horizon = np.tile(np.arange(1, HORIZONS + 1, dtype=np.int32), len(MEASURES) * n)
    measure = _strings(
        MEASURES, np.tile(np.repeat(np.arange(len(MEASURES), dtype=np.int32), HORIZONS), n)
    )
    target = np.repeat(origin, per) + horizon.astype(np.int64) * 3_600_000_000
    yhat = rng.normal(15.0, 8.0, n * per)
    width = rng.uniform(2.0, 6.0, n * per)
    method = _strings(("seasonal_naive", "prophet"), (horizon > 6).astype(np.int32))
    items = pa.StructArray.from_arrays(
        [
            measure,
            pa.array(horizon, pa.int32()),
            pa.array(target, pa.int64()).cast(TS),
            pa.array(yhat),
            pa.array(yhat - width),
            pa.array(yhat + width),
            method,
        ],
        fields=list(FORECAST),
    )
    forecasts = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * per + 1, per, dtype=np.int32)), items
    )
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    columns = {
        "station_id": keys,
        "window_start": pa.array(starts, pa.int64()).cast(TS),
        "window_end": pa.array(starts + 3 * 3_600_000_000, pa.int64()).cast(TS),
        "anomaly_score": pa.array(scores),
        "is_anomaly": pa.array(flagged),
        "anomaly_kind": pa.array(np.full(n, "isolation_forest"), pa.string(), mask=~flagged),
        "forecast_origin": pa.array(origin, pa.int64()).cast(TS),
        "forecasts": forecasts.cast(pa.list_(FORECAST)),
        "forecast_model": pa.array(["weather_forecast"] * n, pa.string()),
        "forecast_version": pa.array(np.full(n, 3), pa.int64()),
        "anomaly_model": pa.array(["weather_anomaly"] * n, pa.string()),
        "anomaly_version": pa.array(np.full(n, 2), pa.int64()),
        "scored_at": pa.array(np.full(n, now_us), pa.int64()).cast(TS),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _strings(values: tuple[str, ...] | list[str], codes: np.ndarray) -> pa.Array:
    """Strings from codes into `values` (much faster than from a numpy object array)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(values, pa.string())).cast(
        pa.string()
    )


def build_lake(root: Path, n_stations: int, days: int, seed: int = 7) -> str:
    """gold/weather_predictions under `root`: one commit, files in time order (as gold's are)."""
    from deltalake import write_deltalake

    path = str(root / "gold" / "weather_predictions")
    stations = station_ids(n_stations)
    rng = np.random.default_rng(seed)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    first = end - timedelta(days=days)

    with Progress(console=console) as progress:
        task = progress.add_task(f"writing {n_stations} stations x {days} days", total=days)

        def batches() -> Iterator[pa.RecordBatch]:
            for d in range(days):
                yield from gold_day(stations, first + timedelta(days=d), rng).to_batches()
                progress.advance(task)

        reader = pa.RecordBatchReader.from_batches(SCHEMA, batches())
        write_deltalake(path, reader)
    return path


# --- the server ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(lake_root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PERISCOPE_LAKE_ROOT=str(lake_root.resolve()))
    # The API reads no password in this benchmark, but settings require them.
    env.setdefault("PERISCOPE_POSTGRES_OWNER_PASSWORD", "unused")
    env.setdefault("PERISCOPE_POSTGRES_BI_PASSWORD", "unused")
    periscope = Path(sys.executable).with_name("periscope")
    # Its log goes to a file: an unread pipe would block the server once full.
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(periscope), "api", "--port", str(port)], env=env, stdout=out, stderr=out
        )


def wait_until_up(base: str, server: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    import httpx

    started = time.monotonic()
    with console.status("starting the API and warming the lake ..."):
        while time.monotonic() - started < timeout_s:
            if server.poll() is not None:
                raise SystemExit("the API exited: see its log (printed above the table)")
            try:
                if httpx.get(f"{base}/sources", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise SystemExit("the API did not answer in time")


# --- the load --------------------------------------------------------------------------------
async def load(
    base: str, paths: list[str], clients: int, seconds: float, warmup_s: float
) -> tuple[list[float], int, int]:
    """Closed-loop clients for `seconds` (after `warmup_s`): latencies in ms, requests, errors.

    aiohttp, not httpx: the clients share the server's 2 cores, and httpx's async client spent
    6.5 ms of CPU per request (7x the server's), so the figures measured mostly the clients.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:
        warm_until = time.perf_counter() + warmup_s
        stop_at = warm_until + seconds

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with client.get(rng.choice(paths)) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError:  # e.g. a keep-alive connection the server closed
                    errors += 1
                    continue
                took = (time.perf_counter() - now) * 1000
                if status != 200:
                    errors += 1
                elif now >= warm_until:
                    latencies.append(took)

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, len(latencies), errors


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(latencies), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--lake", type=Path, help="Use this lake root instead of building one.")
    parser.add_argument("--keep", action="store_true", help="Keep the built lake (prints where).")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="Measured seconds per endpoint."
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="Unmeasured seconds first.")
    args = parser.parse_args()

    tmp = None
    if args.lake is None:
        tmp = Path(tempfile.mkdtemp(prefix="periscope-api-bench-"))
        started = time.monotonic()
        path = build_lake(tmp, args.stations, args.days)
        size = sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))
        console.print(
            f"built {args.stations * args.days * 24:,} gold rows ({size / 1e9:.2f} GB) in "
            f"{time.monotonic() - started:.0f} s at {path}"
        )
        lake_root = tmp
    else:
        lake_root = args.lake
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"periscope-api-bench-{port}.log"
    server = start_api(lake_root, port, log)
    console.print(f"API log: {log}")
    try:
        warm_s = wait_until_up(base, server)
        import httpx

        stations = [
            e["entity_id"] for e in httpx.get(f"{base}/sources/weather/entities", timeout=60).json()
        ]
        rss_mb = _rss_mb(server.pid)
        console.print(
            f"API up and warm in {warm_s:.1f} s ({len(stations)} stations, server RSS {rss_mb:.0f} MB)"
        )
        first = datetime.fromisoformat(
            httpx.get(
                f"{base}/predictions/weather/{stations[0]}/history?limit=100000", timeout=120
            ).json()[0]["window_start"]
        )
        last = datetime.fromisoformat(
            httpx.get(f"{base}/predictions/weather/{stations[0]}", timeout=60).json()[
                "window_start"
            ]
        )
        # `since` anywhere in the lake's span: from a few hours of anomalies to all of them
        days = [
            (first + timedelta(days=d)).date().isoformat()
            for d in range(0, max((last - first).days, 1))
        ]
        endpoints = {
            "/predictions/weather/{station}": [f"/predictions/weather/{s}" for s in stations],
            "/anomalies?since=&limit=100": [f"/anomalies?since={d}&limit=100" for d in days],
        }
        targets = {"/predictions/weather/{station}": 50.0, "/anomalies?since=&limit=100": 200.0}
        routes = {
            "/predictions/weather/{station}": "/predictions/{source}/{entity_id}",
            "/anomalies?since=&limit=100": "/anomalies",
        }
        table = Table(
            title=f"{args.clients} concurrent clients, {args.seconds:.0f} s each (latency in ms)"
        )
        # CPU per request (server; this process's clients) does not depend much on how busy the
        # machine is; latencies do: on a shared laptop they mostly measure waiting for a core.
        for column in (
            "endpoint",
            "requests",
            "req/s",
            "errors",
            "p50",
            "p95",
            "p99",
            "p95 target",
            "server-side p95",
            "server CPU ms/req",
            "client CPU ms/req",
        ):
            table.add_column(column)
        for name, paths in endpoints.items():
            with console.status(f"loading {name} ..."):
                histogram = server_buckets(base, routes[name])
                server_cpu, client_cpu = _cpu_s(server.pid), time.process_time()
                latencies, n, errors = asyncio.run(
                    load(base, paths, args.clients, args.seconds, args.warmup)
                )
                server_cpu = _cpu_s(server.pid) - server_cpu
                client_cpu = time.process_time() - client_cpu
                server_p95 = bucket_p95_ms(histogram, server_buckets(base, routes[name]))
            p50, p95, p99 = percentiles(latencies)
            ok = "[green]met[/]" if p95 <= targets[name] else "[red]missed[/]"
            # the warm-up's requests are in the CPU time but not in n: a small bias up
            table.add_row(
                name,
                f"{n:,}",
                f"{n / args.seconds:.0f}",
                str(errors),
                f"{p50:.1f}",
                f"{p95:.1f}",
                f"{p99:.1f}",
                f"{targets[name]:.0f} ({ok})",
                server_p95,
                f"{server_cpu * 1000 / max(n, 1):.2f}",
                f"{client_cpu * 1000 / max(n, 1):.2f}",
            )
        console.print(table)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            console.print(f"kept the lake at {tmp}")


def server_buckets(base: str, route: str) -> dict[float, float]:
    """The API's own latency histogram for one route: cumulative count per bucket bound (s)."""
    import httpx

    found: dict[float, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=60).text.splitlines():
        if line.startswith("periscope_api_request_duration_seconds_bucket{") and (
            f'route="{route}"' in line
        ):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found[float(bound)] = float(line.rsplit(" ", 1)[1])
    return found


def bucket_p95_ms(before: dict[float, float], after: dict[float, float]) -> str:
    """The histogram bucket holding the 95th percentile of the requests between two scrapes."""
    counts = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    for bound, cumulative in counts.items():
        if total and cumulative >= 0.95 * total:
            return f"<= {bound * 1000:g}" if bound != float("inf") else "> 5000"
    return "-"


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
