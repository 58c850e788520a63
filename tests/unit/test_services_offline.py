"""Service behaviour that needs no running service: bad set-ups fail fast and clearly."""

from __future__ import annotations

import re
import socket

import pytest

from periscope.errors import MissingDependencyError, ServiceError
from periscope.services import KafkaBroker, PostgresServer, get_service
from periscope.services import postgres as postgres_module
from periscope.services._process import tail, wait_until
from periscope.services.kafka import _new_cluster_id
from periscope.settings import Settings


@pytest.fixture
def busy_port():
    """A port on which something else is listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def local_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path / "local"))
    return Settings()


def test_kafka_port_taken_is_a_clear_error(busy_port, local_settings, monkeypatch):
    monkeypatch.setenv("PERISCOPE_KAFKA_PORT", str(busy_port))
    with pytest.raises(
        ServiceError, match=rf"port 127.0.0.1:{busy_port} is already in use.*PERISCOPE_KAFKA_PORT"
    ):
        KafkaBroker(Settings()).start()


def test_postgres_port_taken_is_a_clear_error(busy_port, local_settings, monkeypatch):
    monkeypatch.setenv("PERISCOPE_POSTGRES_PORT", str(busy_port))
    with pytest.raises(
        ServiceError, match=rf"{busy_port} is already in use.*PERISCOPE_POSTGRES_PORT"
    ):
        PostgresServer(Settings()).start()


def test_missing_java_names_make_setup(local_settings, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingDependencyError, match=r"java was not found.*make setup"):
        KafkaBroker(local_settings).start()


def test_missing_kafka_jars_name_make_setup(local_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PERISCOPE_JARS_DIR", str(tmp_path / "nojars"))
    with pytest.raises(MissingDependencyError, match=r"Kafka broker jars are missing.*make setup"):
        KafkaBroker(Settings()).start()


def test_missing_postgres_binaries_name_make_setup(local_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(postgres_module, "_DEBIAN_PG_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match=r"initdb, pg_ctl, postgres.*make setup"):
        PostgresServer(Settings()).bin_dir()


def test_stopping_what_does_not_run_is_a_no_op(local_settings):
    assert KafkaBroker(local_settings).stop() == "not running"
    assert PostgresServer(local_settings).stop() == "not running"
    status = get_service("kafka", local_settings).status()
    assert not status.running and not status.healthy and status.pid is None


def test_broker_config_comes_from_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PERISCOPE_KAFKA_PORT", "19092")
    monkeypatch.setenv("PERISCOPE_KAFKA_CONTROLLER_PORT", "19093")
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path))
    props = dict(
        line.split("=", 1)
        for line in KafkaBroker(Settings())._server_properties().splitlines()
        if line and not line.startswith("#")
    )
    assert props["auto.create.topics.enable"] == "false"
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")


def test_cluster_ids_look_like_kafka_uuids():
    ids = {_new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)


def test_wait_until_reports_the_log_tail_on_timeout(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    with pytest.raises(ServiceError) as excinfo:
        wait_until(lambda: False, service="svc", timeout_s=0.6, log=log)
    message = str(excinfo.value)
    assert "did not become healthy" in message and str(log) in message
    assert "line 99" in message and "line 50" not in message
    with pytest.raises(ServiceError, match="exited during start-up"):
        wait_until(lambda: False, service="svc", timeout_s=5, log=log, still_starting=lambda: False)
    assert tail(tmp_path / "missing.log") == f"(no log at {tmp_path / 'missing.log'})"


def test_deep_checkouts_get_a_short_socket_dir(monkeypatch, tmp_path):
    deep = tmp_path / ("d" * 120)
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(deep))
    server = PostgresServer(Settings())
    assert len(str(server.socket_dir)) + len("/.s.PGSQL.65535") <= 100
