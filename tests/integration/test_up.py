"""`periscope up` / `ps` / `down` for real: every listening socket on loopback, a SIGKILLed stage
restarted by supervisord, a SIGKILLed Kafka and PostgreSQL restarted by the services' watchdog,
and nothing left running after `down`.

One short run on this test instance's ports (about 2 minutes on two cores): Kafka, Postgres,
ingest (follow-clock replay of half a day of one station), bronze, silver (the direct engine: a fresh
lake), score and the API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from periscope.contracts import get_contract
from periscope.services import KafkaBroker, PostgresServer
from periscope.services._process import pid_alive
from periscope.settings import Settings
from periscope.supervise import SupervisePaths, Supervisor
from periscope.supervise.sockets import descendants, listening_sockets

PERISCOPE = str(Path(sys.executable).parent / "periscope")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PERISCOPE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _wait_for(condition, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def up_env(test_settings: Settings) -> Settings:
    """The test instance's settings: its ports for the API, the UIs and the stages' metrics
    too (conftest's `instance_ports`), so runs never collide."""
    return test_settings


def test_up_listens_on_loopback_restarts_a_killed_stage_and_down_stops_everything(
    up_env: Settings,
) -> None:
    settings = up_env
    kafka, postgres = KafkaBroker(settings), PostgresServer(settings)
    # Services another test of this session started stay up for it (down --keep-services).
    services_were_running = kafka.status().running or postgres.status().running
    paths = SupervisePaths.from_settings(settings)
    supervisor = Supervisor(paths)
    # A fresh follow-clock replay: this session's lake is new, and an earlier run's state
    # (other stations, say) would be refused.
    (settings.local_dir / "replay" / "weather.json").unlink(missing_ok=True)
    up = _run(
        "up", "--source", "weather", "--stations", "portland", "--days", "0.5",
        "--every", "20", "--wait", "240",
        timeout=600,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        programs = {p.name: p for p in supervisor.programs()}
        assert set(programs) >= {"services", "api", "score", "silver", "bronze", "ingest-weather"}
        assert all(p.state == "RUNNING" for p in programs.values()), programs
        for name in programs:
            assert paths.program_log(name).exists()

        # A SIGKILLed stage comes back under a new pid, and ps counts the restart.
        bronze_pid, bronze_restarts = programs["bronze"].pid, programs["bronze"].restarts
        assert bronze_pid is not None
        os.kill(bronze_pid, signal.SIGKILL)
        restarted = _wait_for(
            lambda: next(
                (
                    p
                    for p in supervisor.programs()
                    if p.name == "bronze" and p.state == "RUNNING" and p.pid != bronze_pid
                ),
                None,
            ),
            120,
            "supervisord to restart bronze",
        )
        assert restarted.restarts == bronze_restarts + 1
        ps = _run("ps", "--source", "weather", timeout=120)
        assert ps.returncode == 0, ps.stdout + ps.stderr
        assert "bronze" in ps.stdout and "RUNNING" in ps.stdout

        # Score's Ray runtime and silver's tables are up before the sockets are read, so
        # none is missed for not having started yet.
        def ray_servers_listening() -> bool:
            # score's pid now: a Ray start that timed out under load makes supervisord restart it
            score_pid = next((p.pid for p in supervisor.programs() if p.name == "score"), None)
            names = {
                name
                for listener in listening_sockets(descendants(score_pid) if score_pid else [])
                for name in ("gcs_server", "raylet")
                if name in _cmdline(listener.pid)
            }
            return names == {"gcs_server", "raylet"}

        _wait_for(ray_servers_listening, 420, "score's Ray runtime (GCS and raylet listening)")
        # A fresh local lake gets the direct silver engine (no JVM), which creates its tables.
        observations = settings.lake_path(get_contract("weather").table("silver", "observations"))
        _wait_for(lambda: DeltaTable.is_deltatable(observations), 240, "silver's tables")
        assert "the direct engine (a fresh lake" in paths.program_log("silver").read_text()
        supervisord_pid = int(paths.pidfile.read_text())
        tree = descendants(supervisord_pid)
        service_pids = [kafka.status().pid, postgres.status().pid]
        listeners = listening_sockets([*tree, *(pid for pid in service_pids if pid)])
        ports = {listener.port for listener in listeners}
        assert {settings.kafka_port, settings.postgres_port, settings.api_port} <= ports
        # Ray's servers are among them (PERISCOPE_RAY_HOST keeps them on loopback).
        assert any("gcs_server" in _cmdline(listener.pid) for listener in listeners)
        assert any("raylet" in _cmdline(listener.pid) for listener in listeners)
        exposed = [
            (listener, _cmdline(listener.pid)[:120])
            for listener in listeners
            if not listener.loopback
        ]
        assert not exposed, f"listening beyond loopback: {exposed}"

        # The services' watchdog (supervised like the stages) restarts a crashed Kafka and
        # PostgreSQL: each SIGKILLed comes back under a new pid and answers again.
        for service in (kafka, postgres):
            crashed_pid = service.status().pid
            assert crashed_pid is not None
            os.kill(crashed_pid, signal.SIGKILL)
            _wait_for(
                lambda service=service, crashed_pid=crashed_pid: (
                    (st := service.status()).healthy and st.pid != crashed_pid
                ),
                180,
                f"the watchdog to restart {service.name}",
            )
        assert "restarted" in paths.program_log("services").read_text()
    finally:
        # A service the watchdog restarted is its child, yet a service: down may keep it.
        services_now = {
            pid
            for service_pid in (kafka.status().pid, postgres.status().pid)
            if service_pid
            for pid in descendants(service_pid)
        }
        pids_before_down = [
            pid
            for pid in (
                descendants(int(paths.pidfile.read_text())) if paths.pidfile.exists() else []
            )
            if pid not in services_now
        ]
        down_args = ["down", "--keep-services"] if services_were_running else ["down"]
        down = _run(*down_args, timeout=900)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not supervisor.running()
    left = [pid for pid in pids_before_down if pid_alive(pid)]
    assert not left, [(pid, _cmdline(pid)) for pid in left]
    if not services_were_running:
        assert not kafka.status().running and not postgres.status().running
