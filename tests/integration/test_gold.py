"""Gold on a real slice: silver built by the real Spark code, champions trained on Ray, scored
by Ray actors into a Delta table, published to Kafka, queried with `periscope sql`.

One module-scoped lake: 10 days of two real weather stations as silver batch 0, then single
days as later batches; the tests run in file order and each adds to the same lake.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ingest.datasets import read_weather
from ingest.producer import encode_record
from ml.data import SilverFeed
from ml.gold import (
    ScoringError,
    pending_after,
    predictions_path,
    run_scoring,
    score_round,
    scored_through,
    scoring_pool,
)
from ml.ray_session import ray_session
from ml.registry import Registry
from ml.training import TrainConfig, run_training
from periscope import duckdb_lake
from periscope.contracts import get_contract
from periscope.topics import create_topics, records_written
from spark_streaming.silver import process_batch
from tests.integration.silver_helpers import bronze_frame, silver_tables

# In-process training and scoring join the session's Ray (conftest.ray_runtime).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_runtime")]

PERISCOPE = str(Path(sys.executable).parent / "periscope")
STATIONS = ["denver", "boston"]
CONFIG = TrainConfig(test_days=2, validation_days=2, max_train_days=None, anomaly_estimators=50)
FIRST_DAYS = 10
CONTRACT = get_contract("weather")


class Lake:
    """The test lake: silver batches written by the real batch code, bronze beside them."""

    def __init__(self, spark, services, root: Path) -> None:
        self.settings = services.model_copy(
            update={
                "lake_root": str(root / "lake"),
                "local_dir": root,
                "mlflow_tracking_uri": "",
                "score_poll_interval_s": 1.0,
            }
        )
        self.session = spark.newSession()
        self.tables = silver_tables(self.session, root, services, CONTRACT)
        history = read_weather(services.data_dir, stations=STATIONS)
        self.start = history["timestamp"].min() + timedelta(days=1)
        self.history = history
        self.batch_id = -1
        self.offset = 0
        self.rows_per_batch: list[int] = []

    def add_days(self, first: int, last: int) -> int:
        """Silver (and bronze) batch of the real readings of days [first, last); its id."""
        lo, hi = self.start + timedelta(days=first), self.start + timedelta(days=last)
        part = self.history.filter(
            (self.history["timestamp"] >= lo) & (self.history["timestamp"] < hi)
        )
        messages = [
            (
                row["station_id"].encode(),
                encode_record(
                    {**row, "timestamp": row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")}
                ),
            )
            for row in part.iter_rows(named=True)
        ]
        self.batch_id += 1
        bronze = bronze_frame(self.session, messages, first_offset=self.offset, topic="weather-raw")
        self.offset += len(messages)
        bronze.write.format("delta").mode("append").save(
            self.settings.lake_path(CONTRACT.table("bronze", "raw"))
        )
        counts = process_batch(
            bronze,
            self.batch_id,
            settings=self.settings,
            contract=CONTRACT,
            tables=self.tables,
            app_id="gold-test",
            publish=False,
        )
        assert counts["observations"] == len(messages)
        self.rows_per_batch.append(len(messages))
        return self.batch_id

    def sql(self, query: str) -> list[tuple]:
        con = duckdb_lake.connect()
        try:
            con.sql("set timezone = 'UTC'")
            features = self.settings.lake_path(CONTRACT.table("silver", "features"))
            gold = predictions_path(self.settings, CONTRACT)
            return con.sql(
                query.replace("{features}", f"delta_scan('{features}')").replace(
                    "{gold}", f"delta_scan('{gold}')"
                )
            ).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def lake(spark, services, tmp_path_factory) -> Iterator[Lake]:
    """10 days of two stations in silver, champions for both model kinds, the topics."""
    lake = Lake(spark, services, tmp_path_factory.mktemp("gold"))
    lake.add_days(0, FIRST_DAYS)
    # One Ray runtime for the module: every scoring run and training below joins it.
    with ray_session(lake.settings, workers=2):
        report = run_training(lake.settings, "weather", config=CONFIG, policy="if-none", workers=2)
        assert set(report.registered) == {"forecast", "anomaly"}
        create_topics(lake.settings)
        yield lake


def _gold_versions(lake: Lake) -> dict[str, int]:
    return dict(
        lake.sql("select anomaly_version::varchar, count(*) from {gold} group by all order by all")
    )


def test_scoring_gives_one_gold_row_per_window_and_a_rerun_adds_none(lake):
    topic = CONTRACT.topic("predictions")
    published_before = records_written(lake.settings, topic)
    reports = run_scoring(lake.settings, ["weather"], available_now=True, actors=2)

    (windows,) = lake.sql("select count(*) from {features}")[0]
    assert windows > 400  # about one per hourly reading
    assert sum(r.windows for r in reports) == windows
    assert reports[-1].silver_through == 0 and reports[-1].forecast_version == 1
    gold = lake.sql(
        """select count(*), count(distinct (station_id, window_start)),
                  count(anomaly_score), min(len(forecasts)), max(len(forecasts)),
                  bool_and(list_bool_and(list_transform(forecasts, f -> isfinite(f.yhat)
                           and f.yhat_lower <= f.yhat and f.yhat <= f.yhat_upper))),
                  min(forecast_version), min(anomaly_version)
           from {gold}"""
    )[0]
    # 2 stations x temperature, humidity, pressure x 24 hours ahead, all finite and ordered.
    assert gold == (windows, windows, windows, 72, 72, True, 1, 1)
    (joined,) = lake.sql(
        "select count(*) from {gold} g join {features} f using (station_id, window_start)"
    )[0]
    assert joined == windows
    assert records_written(lake.settings, topic) - published_before == windows

    gold_version = scored_through(predictions_path(lake.settings, CONTRACT))
    assert run_scoring(lake.settings, ["weather"], available_now=True, actors=1) == []
    assert scored_through(predictions_path(lake.settings, CONTRACT)) == gold_version
    assert lake.sql("select count(*) from {gold}")[0][0] == windows


def test_a_new_silver_batch_scores_only_its_windows(lake):
    scored_before = dict(
        lake.sql("select window_start::varchar || station_id, scored_at from {gold}")
    )
    batch = lake.add_days(FIRST_DAYS, FIRST_DAYS + 1)
    (new_windows,) = lake.sql(f"select count(*) from {{features}} where silver_batch_id = {batch}")[
        0
    ]

    reports = run_scoring(lake.settings, ["weather"], available_now=True, publish=False)
    assert [r.windows for r in reports] == [new_windows]
    assert reports[0].silver_after == 0 and reports[0].silver_through == batch
    (windows,) = lake.sql("select count(*) from {features}")[0]
    assert lake.sql("select count(*), count(distinct (station_id, window_start)) from {gold}")[
        0
    ] == (windows, windows)
    # Windows the batch did not touch keep the row scored before.
    untouched = dict(
        lake.sql(
            f"""select g.window_start::varchar || g.station_id, g.scored_at from {{gold}} g
                join {{features}} f using (station_id, window_start)
                where f.silver_batch_id < {batch}"""
        )
    )
    assert untouched == {k: v for k, v in scored_before.items() if k in untouched}
    assert len(untouched) == windows - new_windows


def test_champions_moving_during_a_run_score_the_later_rows(lake, tmp_path, caplog):
    """Promote a new anomaly model mid-run: later rows carry it. Then promote one that cannot
    load: the actors keep the version they hold, and say why."""
    registry = Registry(lake.settings)
    challenger = run_training(
        lake.settings, "weather", config=CONFIG, kinds=("anomaly",), policy="never", workers=2
    ).registered["anomaly"]
    assert registry.champion_version("weather", "anomaly") == 1 and challenger.version == 2
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "model.joblib").write_text("not a model")
    broken = registry.log_model(
        source="weather", kind="anomaly", directory=broken_dir, params={}, metrics={}, tags={}
    )

    stop = threading.Event()
    reports = []
    runner = threading.Thread(
        target=lambda: reports.extend(
            run_scoring(lake.settings, ["weather"], available_now=False, publish=False, stop=stop)
        )
    )
    day = FIRST_DAYS + 1
    batches = []
    with caplog.at_level(logging.WARNING, logger="ml.gold"):
        runner.start()
        try:
            for champion in (None, challenger.version, broken.version):
                if champion is not None:
                    registry.set_champion("weather", "anomaly", champion)
                batches.append(lake.add_days(day, day + 1))
                day += 1
                _wait_for(lambda: _through(lake) == batches[-1])
        finally:
            stop.set()
            runner.join(timeout=120)
            registry.set_champion("weather", "anomaly", challenger.version)
    assert not runner.is_alive()
    by_batch = dict(
        lake.sql(
            """select f.silver_batch_id, list_distinct(list(g.anomaly_version))
               from {gold} g join {features} f using (station_id, window_start)
               group by all"""
        )
    )
    assert [by_batch[b] for b in batches] == [[1], [2], [2]]
    assert [r.anomaly_version for r in reports] == [1, 2, 2]
    assert f"weather_anomaly version {broken.version} could not be loaded" in caplog.text


def _through(lake: Lake) -> int | None:
    return scored_through(predictions_path(lake.settings, CONTRACT))


def _wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the scorer"
        time.sleep(0.5)


def test_a_dead_actor_loses_no_round(lake):
    settings = lake.settings
    (windows,) = lake.sql("select count(*) from {gold}")[0]
    registry = Registry(settings)
    feed = SilverFeed(settings, CONTRACT)
    after = pending_after(feed)
    with scoring_pool(settings, actors=2) as pool:
        # Everything again from the start: the first round fails when an actor dies ...
        pool.kill(0)
        with pytest.raises(ScoringError, match="died"):
            score_round(pool, registry, feed, after=-1)
        assert _through(lake) == after  # nothing committed
        # ... and the same round succeeds on the replacement.
        report = score_round(pool, registry, feed, after=-1)
    assert report is not None and (report.windows, report.silver_through) == (windows, after)
    assert lake.sql("select count(*), count(distinct (station_id, window_start)) from {gold}")[
        0
    ] == (windows, windows)


def _periscope_sql(lake: Lake, *args: str) -> str:
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": lake.settings.lake_root, "COLUMNS": "200"}
    done = subprocess.run(
        [PERISCOPE, "sql", *args, "--format", "csv"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_periscope_sql_joins_bronze_silver_and_gold_and_travels_in_time(lake):
    readings = sum(lake.rows_per_batch)
    (windows,) = lake.sql("select count(*) from {features}")[0]
    joined = _periscope_sql(
        lake,
        """select (select count(*) from bronze.weather_raw) as bronze,
                  (select count(*) from bronze.weather_raw b join silver.weather_observations o
                     using (topic, "partition", "offset")) as bronze_in_silver,
                  (select count(*) from silver.weather_features f join gold.weather_predictions g
                     using (station_id, window_start)) as scored_windows""",
    )
    assert joined.split() == [
        "bronze,bronze_in_silver,scored_windows",
        f"{readings},{readings},{windows}",
    ]
    # Version 0 of the Spark-written observations table is the empty table silver creates,
    # version 1 holds the first batch only.
    first = _periscope_sql(
        lake,
        "select count(*) as n from silver.weather_observations",
        "--as-of-version",
        "1",
        "--table",
        "silver.weather_observations",
    )
    assert first.split() == ["n", str(lake.rows_per_batch[0])]
    assert not math.isclose(lake.rows_per_batch[0], readings)


def test_warehouse_load_and_dbt_build_on_the_scored_lake(lake, services, tmp_path):
    """The real pipeline's output (Spark silver, Ray-scored gold) through the warehouse: dbt
    build passes, marts reconcile with the lake, and every gold prediction is in fct_anomaly."""
    import psycopg2

    from periscope.services import PostgresServer

    settings = lake.settings
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for schema in ("lake", "staging", "intermediate", "marts"):
            cur.execute(f"drop schema if exists {schema} cascade")
    PostgresServer(services).bootstrap()  # the lake's settings keep MLflow elsewhere
    env = {
        **os.environ,
        "COLUMNS": "200",
        "PERISCOPE_LAKE_ROOT": settings.lake_root,
        "DBT_TARGET_PATH": str(tmp_path / "target"),
        "DBT_LOG_PATH": str(tmp_path / "logs"),
    }
    for command in (("warehouse", "load"), ("dbt", "build")):
        done = subprocess.run([PERISCOPE, *command], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    assert "assert_lake_and_marts_reconcile" in done.stdout and "ERROR=0" in done.stdout

    (gold,) = lake.sql("select count(*) from {gold}")[0]
    with psycopg2.connect(settings.postgres_dsn("bi")) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.fct_anomaly where source = 'weather'")
        assert cur.fetchone() == (gold,)
        cur.execute(
            "select count(*), count(distinct horizon_h), bool_and(abs_error >= 0) "
            "from marts.fct_forecast_accuracy"
        )
        accuracy_rows, horizons, errors_valid = cur.fetchone()
    assert accuracy_rows > 1000 and horizons == 24 and errors_valid
