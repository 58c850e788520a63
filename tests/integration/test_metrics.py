"""Each long-running stage's Prometheus endpoint, scraped while the stages really run.

A paced replay of real weather history (with malformed records) feeds `bronze run` (the
default direct writer; the Spark engine exports the same series from its query progress),
`silver run` and `score`, each a `periscope` process of its own on a port of its own.
The test scrapes the four endpoints until every stage's counters have moved, checks the
figures against each other, and reads them through `periscope monitor --once`.
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

from periscope.contracts import WEATHER
from periscope.metrics import STAGES
from periscope.topics import create_topics, topic_specs
from serving.monitor import Samples, parse_exposition

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")
TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> Samples:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return parse_exposition(answer.read().decode())
    except OSError:
        return {}


def _value(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, key), v in samples.items() if n == name and wanted <= set(key))


# The counter each stage's progress is read from.
COUNTERS = {
    "ingest": ("periscope_ingest_records_produced_total", {"topic": "weather-raw"}),
    "bronze": ("periscope_stage_records_in_total", {"stage": "bronze", "source": "weather"}),
    "silver": ("periscope_stage_records_out_total", {"stage": "silver", "source": "weather"}),
    "score": ("periscope_stage_records_out_total", {"stage": "score", "source": "weather"}),
}


def _counts(scrapes: dict[str, Samples]) -> dict[str, float]:
    return {
        stage: _value(scrapes.get(stage, {}), name, **labels)
        for stage, (name, labels) in COUNTERS.items()
    }


@pytest.fixture(scope="module")
def running(services, tmp_path_factory) -> Iterator[dict]:
    """The four stages running on a fresh lake; stopped (SIGINT, like Ctrl-C) at the end."""
    root = tmp_path_factory.mktemp("metrics")
    settings = services.model_copy(
        update={"lake_root": str(root / "lake"), "local_dir": root, "mlflow_tracking_uri": ""}
    )
    create_topics(settings, topic_specs(settings, [WEATHER]))
    ports = {stage: _free_port() for stage in STAGES}
    env = {
        **os.environ,
        "PERISCOPE_LAKE_ROOT": settings.lake_root,
        "PERISCOPE_LOCAL_DIR": str(root),
        "PERISCOPE_MLFLOW_TRACKING_URI": "",
        "PERISCOPE_SPARK_DRIVER_MEMORY": "1g",
        "PERISCOPE_STREAM_TRIGGER_INTERVAL": "1 second",
        **{f"PERISCOPE_METRICS_{stage.upper()}_PORT": str(port) for stage, port in ports.items()},
    }
    commands = {
        # About 4,300 records of two stations over ~80 s: the producer counts every 1,024.
        "ingest": ["ingest", "replay", "--source", "weather", "--stations", "denver,boston",
                   "--until", "2013-01-01", "--speedup", "100000", "--bad-rate", "0.03"],
        "bronze": ["bronze", "run", "--source", "weather"],
        "silver": ["silver", "run", "--source", "weather"],
        "score": ["score", "--source", "weather", "--actors", "1", "--no-publish"],
    }  # fmt: skip
    logs = {stage: (root / f"{stage}.log").open("wb") for stage in commands}
    procs: dict[str, subprocess.Popen] = {}

    def start(stage: str) -> None:
        procs[stage] = subprocess.Popen(
            [PERISCOPE, *commands[stage]], env=env, stdout=logs[stage], stderr=subprocess.STDOUT
        )

    try:
        start("ingest")
        start("bronze")
        # Silver streams from the bronze table: it starts once bronze has created it.
        bronze_log = Path(settings.lake_path(WEATHER.table("bronze", "raw"))) / "_delta_log"
        deadline = time.monotonic() + TIMEOUT_S
        while not bronze_log.is_dir() and time.monotonic() < deadline:
            assert procs["bronze"].poll() is None, f"bronze exited: see {root / 'bronze.log'}"
            time.sleep(1)
        start("silver")
        start("score")
        yield {"ports": ports, "procs": procs, "env": env, "root": root}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()


def test_every_stage_endpoint_shows_its_counters_move(running):
    ports, root = running["ports"], running["root"]
    scrapes: dict[str, Samples] = {}
    first: dict[str, float] | None = None
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        # The last answer of each stage (the replay ends, and its endpoint with it).
        scrapes |= {s: found for s, port in ports.items() if (found := _scrape(port))}
        counts = _counts(scrapes)
        first = first or counts
        if all(counts[s] > first[s] for s in STAGES):
            break
        failed = [s for s, p in running["procs"].items() if s != "ingest" and p.poll() is not None]
        assert not failed, f"{failed} exited: see the logs in {root}"
        time.sleep(2)
    assert first is not None
    assert all(counts[s] > first[s] for s in STAGES), f"from {first} to {counts}; logs in {root}"

    bronze, silver, score = (scrapes[s] for s in ("bronze", "silver", "score"))
    # How far bronze is behind the end of the topic: min, max and avg over partitions.
    stats = {
        dict(key)["stat"]
        for (name, key) in bronze
        if name == "periscope_stage_offsets_behind_latest"
    }
    assert stats == {"min", "max", "avg"}
    # Bronze lands what it reads; silver's input and batches show up too.
    assert _value(bronze, "periscope_stage_records_out_total", stage="bronze") > 0
    assert _value(silver, "periscope_stage_records_in_total", stage="silver") > 0
    assert _value(silver, "periscope_stage_batch_duration_seconds_count", stage="silver") > 0
    reasons = {
        dict(key)["reason"]
        for (name, key) in silver
        if name == "periscope_silver_quarantined_total"
    }
    assert reasons and "unknown" not in reasons  # each malformed record under its reason code
    # Score: no champion yet, so no model version series, but every window read is timed.
    assert _value(score, "periscope_gold_latency_seconds_count", kind="window") == _value(
        score, "periscope_stage_records_in_total", stage="score"
    )
    assert not any(name == "periscope_model_version" for (name, _) in score)


def test_monitor_once_shows_the_running_stages(running):
    shown = subprocess.run(
        [PERISCOPE, "monitor", "--once", "--interval", "1", "--no-groups"],
        env={**running["env"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in shown.splitlines()]
    stages = {row[0]: row for row in rows if len(row) == 10 and row[1] == "weather"}
    assert {"bronze", "silver", "score"} <= set(stages), shown
    assert stages["bronze"][6].endswith("offsets"), shown  # how far bronze is behind Kafka
    assert int(stages["silver"][4].replace(",", "")) > 0, shown  # observations out
