"""Integration fixtures: the project's real Kafka broker and PostgreSQL server, real Spark.

The tests run their own service instances (state in `.local/test`, ports 19092/19093/15433)
so they never touch the data of a `make demo` that may be running beside them. Services
the session starts it also stops; one that already ran (a previous `--keep` session,
say) is reused and left running.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from periscope.services import KafkaBroker, PostgresServer
from periscope.settings import PROJECT_DIR, Settings, get_settings

# A second test run beside the first (PERISCOPE_TEST_INSTANCE=1, 2, ...) gets its own state
# folder and ports, so two checkouts or two developers' runs never stop each other's services.
_INSTANCE = int(os.environ.get("PERISCOPE_TEST_INSTANCE", "0"))
_SUFFIX = str(_INSTANCE) if _INSTANCE else ""
_PORT_SHIFT = 1000 * _INSTANCE

TEST_ENV = {
    "PERISCOPE_LOCAL_DIR": str(PROJECT_DIR / ".local" / f"test{_SUFFIX}"),
    "PERISCOPE_JARS_DIR": str(PROJECT_DIR / ".local" / "jars"),
    "PERISCOPE_KAFKA_BOOTSTRAP_SERVERS": "",
    "PERISCOPE_KAFKA_PORT": str(19092 + _PORT_SHIFT),
    "PERISCOPE_KAFKA_CONTROLLER_PORT": str(19093 + _PORT_SHIFT),
    "PERISCOPE_POSTGRES_PORT": str(15433 + _PORT_SHIFT),
    "PERISCOPE_SPARK_UI_ENABLED": "false",
    "PERISCOPE_SPARK_SHUFFLE_PARTITIONS": "2",
    "PERISCOPE_SPARK_MASTER": "local[2]",
}


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory) -> Iterator[Settings]:
    """Settings for the test instances; exported to the environment so CLI subprocesses agree."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_ENV.items():
            mp.setenv(key, value)
        mp.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path_factory.mktemp("lake")))
        # Fresh passwords every session: `up` re-applies them to the roles.
        mp.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", secrets.token_urlsafe(16))
        mp.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", secrets.token_urlsafe(16))
        get_settings.cache_clear()
        yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def services(test_settings: Settings) -> Iterator[Settings]:
    """The real broker and Postgres, healthy; stopped at the end if this session started them."""
    started = []
    for service in (KafkaBroker(test_settings), PostgresServer(test_settings)):
        if not service.status().running:
            shutil.rmtree(service.root, ignore_errors=True)  # a clean slate for each run
            started.append(service)
        service.start()
    yield test_settings
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="session")
def spark(test_settings: Settings):
    """One local Spark session for the whole run (start-up is the slow part)."""
    from spark_streaming import build_spark_session

    session = build_spark_session("periscope-tests", settings=test_settings)
    session.sparkContext.setLogLevel("WARN")
    yield session
    session.stop()
