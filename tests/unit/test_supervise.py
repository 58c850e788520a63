"""`periscope up/down/ps`: the program list, the supervisord config, restarts, sockets, repeat."""

from __future__ import annotations

import configparser
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from periscope.supervise import (
    IngestPlan,
    SupervisePaths,
    count_restarts,
    plan_programs,
    render_config,
)
from periscope.supervise.repeat import repeat
from periscope.supervise.sockets import Listener, parse_proc_net_tcp


def every_command(_path: tuple[str, ...]) -> bool:
    return True


def test_programs_start_readers_first_and_stop_ingest_first() -> None:
    names = [p.name for p in plan_programs(IngestPlan(), every_command)]
    stop_order = list(reversed(names))
    assert stop_order[:5] == ["ingest-air_quality", "ingest-weather", "bronze", "silver", "score"]
    # the services' watchdog first and last: Kafka and PostgreSQL outlive every stage
    assert names[0] == "services" and stop_order[-1] == "services"
    assert set(names[1:4]) == {"api", "dashboard", "dagster"}


def test_programs_whose_command_is_missing_are_left_out() -> None:
    installed = {("api",), ("score",), ("silver", "run"), ("bronze", "run"), ("ingest", "replay")}
    names = [p.name for p in plan_programs(IngestPlan(), lambda path: path in installed)]
    assert names == ["api", "score", "silver", "bronze", "ingest-weather", "ingest-air_quality"]


def test_live_polls_open_meteo_for_weather_and_replays_the_rest() -> None:
    programs = {p.name: p for p in plan_programs(IngestPlan(live=True), every_command)}
    assert programs["ingest-weather"].argv[:2] == ("ingest", "live")
    assert programs["ingest-weather"].every_s is None
    assert programs["ingest-air_quality"].argv[:2] == ("ingest", "replay")
    assert "--follow-clock" in programs["ingest-air_quality"].argv
    assert programs["ingest-air_quality"].every_s == 60.0


def test_stages_run_the_chosen_sources() -> None:
    programs = {p.name: p for p in plan_programs(IngestPlan(sources=("taxi",)), every_command)}
    assert programs["bronze"].argv == ("bronze", "run", "--source", "taxi")
    assert programs["score"].argv == ("score", "--source", "taxi")
    assert "ingest-weather" not in programs and "ingest-taxi" in programs


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_config_controls_over_a_unix_socket_only(tmp_path: Path) -> None:
    paths = SupervisePaths(root=tmp_path / "supervisor", logs=tmp_path / "logs")
    programs = plan_programs(IngestPlan(), every_command)
    config = _parse(render_config(programs, paths, directory=tmp_path))
    assert not config.has_section("inet_http_server")  # no TCP port for the control API
    assert config.get("unix_http_server", "file") == str(paths.socket)
    assert config.get("unix_http_server", "chmod") == "0700"


def test_config_orders_logs_and_stops_each_program(tmp_path: Path) -> None:
    paths = SupervisePaths(root=tmp_path / "supervisor", logs=tmp_path / "logs")
    programs = plan_programs(IngestPlan(sources=("weather",)), every_command)
    config = _parse(render_config(programs, paths, directory=tmp_path))
    priority = {p.name: config.getint(f"program:{p.name}", "priority") for p in programs}
    # supervisord stops higher priorities first: ingest, bronze, silver, score, readers.
    assert priority["ingest-weather"] > priority["bronze"] > priority["silver"] > priority["score"]
    assert priority["score"] > priority["api"]
    bronze = f"program:{'bronze'}"
    assert config.get(bronze, "stopsignal") == "TERM"  # drain the micro-batch, then stop
    assert config.get(bronze, "killasgroup") == "true"  # a stop that times out leaves no JVM
    assert config.get(bronze, "autorestart") == "true"
    assert config.get(bronze, "stdout_logfile") == str(tmp_path / "logs" / "bronze.log")
    assert config.get("program:score", "stopsignal") == "INT"  # finishes its round
    assert config.get("program:api", "stopsignal") == "TERM"
    assert config.get(bronze, "stopasgroup") == "false"  # bronze drains, then stops its JVM
    assert config.get("program:dagster", "stopasgroup") == "true"  # code server, runs too


def test_config_escapes_percent_and_writes_no_secret(tmp_path: Path) -> None:
    paths = SupervisePaths(root=tmp_path / "s", logs=tmp_path / "l")
    programs = plan_programs(IngestPlan(stations="a%b"), every_command)
    text = render_config(programs, paths, directory=tmp_path)
    assert "a%%b" in text
    assert "password" not in text.lower()


def test_follow_clock_replay_is_repeated_by_the_wrapper(tmp_path: Path) -> None:
    paths = SupervisePaths(root=tmp_path / "s", logs=tmp_path / "l")
    programs = plan_programs(IngestPlan(sources=("weather",), every_s=30), every_command)
    command = _parse(render_config(programs, paths, directory=tmp_path)).get(
        "program:ingest-weather", "command"
    )
    assert "-m periscope.supervise.repeat --every 30 --" in command
    assert command.split(" -- ", 1)[1].split()[1:4] == ["ingest", "replay", "--source"]


SUPERVISORD_LOG = """\
2026-11-29 10:00:00,000 INFO supervisord started with pid 10
2026-11-29 10:00:01,000 INFO spawned: 'bronze' with pid 11
2026-11-29 10:00:01,000 INFO spawned: 'silver' with pid 12
2026-11-29 10:05:00,000 INFO exited: bronze (terminated by SIGKILL; not expected)
2026-11-29 10:05:01,000 INFO spawned: 'bronze' with pid 13
2026-11-29 11:00:00,000 INFO supervisord started with pid 20
2026-11-29 11:00:01,000 INFO spawned: 'bronze' with pid 21
2026-11-29 11:00:02,000 INFO spawned: 'silver' with pid 22
2026-11-29 11:01:00,000 INFO spawned: 'silver' with pid 23
2026-11-29 11:02:00,000 INFO spawned: 'silver' with pid 24
"""


def test_restarts_count_spawns_since_supervisord_last_started() -> None:
    assert count_restarts(SUPERVISORD_LOG) == {"bronze": 0, "silver": 2}


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1
   2: 0200000A:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1
   1: 00000000000000000000000000000000:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1
"""


def test_listening_sockets_are_decoded_from_proc() -> None:
    assert parse_proc_net_tcp(PROC_NET_TCP, ipv6=False) == {
        1001: ("127.0.0.1", 8080),
        1002: ("0.0.0.0", 3306),  # an established connection (st 01) is not listed
    }
    assert parse_proc_net_tcp(PROC_NET_TCP6, ipv6=True) == {2001: ("::1", 80), 2002: ("::", 81)}
    assert Listener("127.0.0.1", 1, 1).loopback and Listener("::1", 1, 1).loopback
    assert not Listener("0.0.0.0", 1, 1).loopback and not Listener("::", 1, 1).loopback


def test_repeat_reruns_until_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    stop = threading.Event()
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    timer = threading.Timer(1.2, stop.set)
    timer.start()
    runs = repeat(command, every_s=0.3, stop=stop)
    assert runs >= 2
    assert len(marker.read_text()) == runs


def test_repeat_lets_the_current_run_finish_on_sigterm(tmp_path: Path) -> None:
    started, done = tmp_path / "started", tmp_path / "done"
    slow = (
        f"import time; open({str(started)!r}, 'w').close(); time.sleep(2); "
        f"open({str(done)!r}, 'w').write('ok')"
    )
    command = [sys.executable, "-m", "periscope.supervise.repeat", "--every", "60", "--"]
    proc = subprocess.Popen([*command, sys.executable, "-c", slow])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # inside the first run
    assert proc.wait(timeout=30) == 0
    assert done.read_text() == "ok"  # the run was not cut short


def test_repeat_needs_a_command() -> None:
    with pytest.raises(SystemExit):
        from periscope.supervise.repeat import main

        main(["--every", "5"])


def test_spark_stages_turn_a_stop_signal_into_a_flag_and_restore_the_handlers() -> None:
    import os

    from spark_streaming.progress import stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor's stop: no exception, a flag
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):  # a second one forces the stop
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stopped_programs_leftover_children_are_waited_for_then_killed() -> None:
    from periscope.supervise.control import _reap_group, group_members

    # A group leader that exits at once, leaving a child that ignores SIGTERM and would
    # otherwise run for a minute: what `dagster dev` did with its code server.
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
            "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])",
        ],
        start_new_session=True,
    )
    leader.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not group_members(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_members(leader.pid)
    assert left and leader.pid not in left  # only the child is left
    started = time.monotonic()
    _reap_group(leader.pid, timeout_s=0.5)
    assert group_members(leader.pid) == []
    assert time.monotonic() - started < 5
