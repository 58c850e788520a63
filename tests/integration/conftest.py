"""Integration fixtures: the project's real Kafka broker and PostgreSQL server, real Spark.

The tests run their own service instances (state in `.local/test`, ports 19092/19093/15433 and
the others of `periscope.settings.instance_ports`) so they never touch the data of a `make demo`
that may be running beside them. Services the session starts it also stops; one that already
ran (a previous `--keep` session, say) is reused and left running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from periscope.services import KafkaBroker, PostgresServer
from periscope.settings import PROJECT_DIR, Settings, get_settings, instance_ports
from periscope.topics import recreate_topics

# A second test run beside the first (PERISCOPE_TEST_INSTANCE=1, 2, ...) gets its own state
# folder and ports, so two checkouts or two developers' runs never stop each other's services.
_INSTANCE = int(os.environ.get("PERISCOPE_TEST_INSTANCE", "0"))
_SUFFIX = str(_INSTANCE) if _INSTANCE else ""

TEST_ENV = {
    "PERISCOPE_LOCAL_DIR": str(PROJECT_DIR / ".local" / f"test{_SUFFIX}"),
    "PERISCOPE_JARS_DIR": str(PROJECT_DIR / ".local" / "jars"),
    "PERISCOPE_KAFKA_BOOTSTRAP_SERVERS": "",
    **instance_ports(_INSTANCE),
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


@pytest.fixture(scope="session")
def ray_runtime(test_settings: Settings) -> Iterator[None]:
    """One local Ray for the whole run's in-process training and scoring: `ray_session` inside a
    test joins it instead of starting and stopping its own (10-20 s each on two cores). The
    `periscope` processes that tests start run their own Ray, as they do for a user."""
    from ml.ray_session import ray_session

    with ray_session(test_settings, workers=2):
        yield


def land(
    settings: Settings,
    contracts: list,
    *,
    batch_records: int | None = None,
    files_per_batch: int | None = None,
) -> None:
    """Bronze and silver caught up with the raw topics, by the direct engines in-process (the
    local default: no JVM). For set-ups that are not about an engine; the engines' own
    guarantees are tested on both in test_bronze.py and test_silver_*.py. Small
    `batch_records`/`files_per_batch` give many small bronze commits and silver batches."""
    from spark_streaming.bronze_direct import run_bronze_direct
    from spark_streaming.silver.direct import run_silver_direct

    run_bronze_direct(settings, contracts, available_now=True, batch_records=batch_records)
    run_silver_direct(
        settings, contracts, available_now=True, max_files_per_trigger=files_per_batch
    )


# The session's small real weather pipeline, read by the lineage and the dashboard tests.
PIPELINE_STATIONS = ["denver", "boston"]
PIPELINE_UNTIL = datetime(2012, 10, 12, tzinfo=UTC)  # the history starts 2012-10-01 13:00


@pytest.fixture(scope="session")
def scored_weather(services: Settings, ray_runtime, tmp_path_factory) -> Settings:
    """Eleven days of two real weather stations replayed into fresh topics (3% malformed),
    landed by the direct bronze and silver engines in small batches (so a window is one of many,
    written by one of many batches), champions trained on Ray, windows scored into gold.
    The settings of that lake; read it, do not change it."""
    from ingest.replay import replay
    from ml.gold import run_scoring
    from ml.ray_session import ray_session
    from ml.training import TrainConfig, run_training
    from periscope.contracts import WEATHER

    root = tmp_path_factory.mktemp("scored_weather")
    settings = services.model_copy(
        update={"lake_root": str(root / "lake"), "local_dir": root, "mlflow_tracking_uri": ""}
    )
    # Earlier modules of the session replay into the same `weather-raw`, and this bronze reads
    # from the earliest offset: it starts from empty topics.
    recreate_topics(settings, [WEATHER])
    replay(
        settings,
        WEATHER.name,
        stations=PIPELINE_STATIONS,
        until=PIPELINE_UNTIL,
        bad_rate=0.03,
        seed=5,
        progress=False,
    )
    land(settings, [WEATHER], batch_records=100, files_per_batch=1)
    config = TrainConfig(test_days=2, validation_days=2, max_train_days=None, anomaly_estimators=50)
    with ray_session(settings, workers=2):
        training = run_training(settings, WEATHER.name, config=config, policy="if-none", workers=2)
        assert set(training.registered) == {"forecast", "anomaly"}
        run_scoring(settings, [WEATHER], available_now=True, actors=1, publish=False)
    return settings


def fresh_warehouse(settings: Settings) -> Settings:
    """The test database without the schemas of earlier tests, bootstrapped as `services up`
    does (roles, grants)."""
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for schema in ("lake", "staging", "intermediate", "marts", "analytics"):
            cur.execute(f"drop schema if exists {schema} cascade")
    PostgresServer(settings).bootstrap()
    return settings


def run_periscope(env: dict[str, str], *args: str) -> str:
    """`periscope <args>` as a user runs it; its output, or a failure that shows it."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "periscope"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"periscope {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def warehouse_lake(spark, services: Settings, tmp_path_factory):
    """test_warehouse.py's lake (silver of two weather stations, the UCI station and the first
    taxi hours; stand-in gold), built once by the real silver batch code. Shared: read it, or
    copy it before adding to it (test_warehouse.py does)."""
    from tests.integration.test_warehouse import build_lake

    return build_lake(spark, services, tmp_path_factory.mktemp("warehouse_lake"))


@dataclass
class BuiltMarts:
    """`warehouse_lake` loaded and modelled by `periscope warehouse load` and `dbt build`."""

    settings: Settings
    env: dict[str, str]  # the environment of `periscope` subprocesses on this lake
    rows: dict[str, int] = field(default_factory=dict)  # mart -> rows, as built

    def _marts(self) -> dict[str, int]:
        with psycopg2.connect(self.settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
            cur.execute(
                "select table_name from information_schema.tables "
                "where table_schema = 'marts' and table_type = 'BASE TABLE'"
            )
            tables = [t for (t,) in cur.fetchall()]
            rows = {}
            for table in tables:
                cur.execute(f"select count(*) from marts.{table}")
                rows[table] = cur.fetchone()[0]
        return rows

    def build(self) -> None:
        fresh_warehouse(self.settings)
        run_periscope(self.env, "warehouse", "load")
        run_periscope(self.env, "dbt", "build")
        self.rows = self._marts()

    def ensure(self) -> BuiltMarts:
        """Rebuilt if a module in between dropped or changed the marts (test_warehouse does)."""
        if self._marts() != self.rows:
            self.build()
        return self


@pytest.fixture(scope="session")
def built_marts(warehouse_lake, tmp_path_factory) -> BuiltMarts:
    """The marts of `warehouse_lake`, for the BI tests (Superset, Tableau), which only read
    them (a test that renames a column renames it back). Use `built_marts.ensure()`."""
    out = tmp_path_factory.mktemp("built_marts")
    env = {
        **os.environ,
        "COLUMNS": "200",  # rich tables at full width
        "PERISCOPE_LAKE_ROOT": warehouse_lake.settings.lake_root,
        "DBT_TARGET_PATH": str(out / "target"),
        "DBT_LOG_PATH": str(out / "logs"),
    }
    marts = BuiltMarts(warehouse_lake.settings, env)
    marts.build()
    return marts
