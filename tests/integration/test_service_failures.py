"""A service that cannot start says so, with the end of its log."""

from __future__ import annotations

import socket

import pytest

from periscope.errors import ServiceError
from periscope.services import KafkaBroker
from periscope.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_broker_that_dies_at_start_shows_its_log(test_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("PERISCOPE_KAFKA_PORT", str(_free_port()))
    monkeypatch.setenv("PERISCOPE_KAFKA_CONTROLLER_PORT", str(_free_port()))
    broker = KafkaBroker(Settings())
    # Storage formatted for another node: the broker refuses it and exits at start-up.
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=99\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAA\n"
    )
    with pytest.raises(ServiceError) as excinfo:
        broker.start()
    message = str(excinfo.value)
    assert "kafka exited during start-up" in message
    assert str(tmp_path / "kafka" / "kafka.log") in message
    assert "99" in message  # the broker's own complaint, from the log
    assert broker.stop() == "not running"
