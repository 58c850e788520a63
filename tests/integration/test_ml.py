"""ML on a real slice: silver built by the real Spark code, models trained on Ray, MLflow registry.

One module-scoped lake: 16 days of two real weather stations go through silver's batch code;
training reads that lake like `periscope train` does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingest.datasets import read_weather
from ingest.producer import encode_record
from ml import anomaly
from ml.data import LakeSlice, feature_windows, hourly_observations, observations_between
from ml.forecast import ForecastBundle
from ml.registry import Registry
from ml.training import TrainConfig, promote_version, run_training
from ml.windows import window_features
from periscope.contracts import get_contract
from spark_streaming.silver import process_batch
from tests.integration.silver_helpers import bronze_frame, silver_tables

# In-process training and scoring join the session's Ray (conftest.ray_runtime).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_runtime")]

PERISCOPE = str(Path(sys.executable).parent / "periscope")

STATIONS = ["denver", "boston"]
CONFIG = TrainConfig(test_days=2, validation_days=2, max_train_days=None, anomaly_estimators=100)


@pytest.fixture(scope="module")
def ml_settings(spark, services, tmp_path_factory):
    """A lake with 16 days of two real stations in silver, and an empty MLflow store."""
    root = tmp_path_factory.mktemp("ml")
    contract = get_contract("weather")
    settings = services.model_copy(
        update={"lake_root": str(root / "lake"), "local_dir": root, "mlflow_tracking_uri": ""}
    )
    history = read_weather(services.data_dir, stations=STATIONS)
    start = history["timestamp"].min() + timedelta(days=1)
    history = history.filter(
        (history["timestamp"] >= start) & (history["timestamp"] < start + timedelta(days=16))
    )
    messages = [
        (
            row["station_id"].encode(),
            encode_record({**row, "timestamp": row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")}),
        )
        for row in history.iter_rows(named=True)
    ]
    session = spark.newSession()
    tables = silver_tables(session, root, services, contract)
    counts = process_batch(
        bronze_frame(session, messages),
        0,
        settings=settings,
        contract=contract,
        tables=tables,
        app_id="ml-test",
        publish=False,
    )
    assert counts["observations"] == len(messages)
    return settings


@pytest.fixture(scope="module")
def first_training(ml_settings):
    return run_training(ml_settings, "weather", config=CONFIG, policy="if-none", workers=2)


def test_window_features_without_spark_equal_silver_features(ml_settings):
    """ml.windows (used to build labelled anomaly sets) computes exactly what Spark wrote."""
    contract = get_contract("weather")
    spark_features = feature_windows(ml_settings, contract)
    hourly = hourly_observations(ml_settings, contract)
    ours = window_features(
        observations_between(hourly, hourly["ds"].min(), hourly["ds"].max() + pd.Timedelta("1h")),
        contract,
    )
    merged = spark_features.merge(ours, on=["station_id", "window_start"], suffixes=("", "_ours"))
    assert len(merged) == len(spark_features) == len(ours) > 700
    for column in [c for c in ours.columns if c not in ("station_id", "window_start")]:
        theirs, mine = merged[column], merged[f"{column}_ours"]
        if column == "window_end":
            assert (theirs == mine).all()
            continue
        both = theirs.notna() & mine.notna()
        assert (theirs.isna() == mine.isna()).all(), column
        assert np.allclose(theirs[both], mine[both], rtol=1e-9, atol=1e-9), column


def test_training_registers_champions_with_finite_forecasts_of_the_right_horizon(
    ml_settings, first_training
):
    report = first_training
    registry = Registry(ml_settings)
    for kind in ("forecast", "anomaly"):
        champion = registry.resolve("weather", kind)
        assert champion is not None and champion.version == report.registered[kind].version
        assert champion.tags["code_version"] and champion.tags["data_until"]
    # 2 stations x temperature, humidity, pressure, each beside both baselines.
    assert len(report.forecast.bundle.series()) == 6
    overall = report.forecast.overall
    for method in ("prophet", "seasonal_naive", "persistence"):
        assert math.isfinite(overall[f"mae_{method}"]) and overall[f"mae_{method}"] > 0

    bundle = ForecastBundle.load(registry.download(registry.resolve("weather", "forecast")))
    hourly = hourly_observations(ml_settings, get_contract("weather"), LakeSlice(("denver",)))
    origin = hourly["ds"].max()
    history = hourly.rename(columns={"temperature": "y"})[["ds", "y"]]
    predicted = bundle.predict("denver", "temperature", history, origin, 24)
    assert list(predicted["horizon_h"]) == list(range(1, 25))
    assert (predicted["ds"] == [origin + pd.Timedelta(hours=h) for h in range(1, 25)]).all()
    values = predicted[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()
    assert np.isfinite(values).all()
    assert (predicted["yhat_lower"] <= predicted["yhat"]).all()
    assert (predicted["yhat"] <= predicted["yhat_upper"]).all()


def test_the_anomaly_champion_flags_injected_spikes_in_real_data(ml_settings, first_training):
    contract = get_contract("weather")
    registry = Registry(ml_settings)
    model = anomaly.AnomalyModel.load(registry.download(registry.resolve("weather", "anomaly")))
    split = first_training.split
    hourly = hourly_observations(ml_settings, contract)
    held_back = observations_between(hourly, split.validation_end, split.test_end)
    injected, labels = anomaly.inject_anomalies(
        held_back, contract, rate=0.03, seed=11, kinds=("spike",)
    )
    features = window_features(injected, contract)
    truth = anomaly.label_windows(features, labels, contract)
    flagged = model.flag(features, injected)  # the hourly detectors read the readings
    assert truth.sum() >= 3
    spike_recall = flagged[truth.to_numpy()].mean()
    false_positive_rate = flagged[~truth.to_numpy()].mean()
    assert spike_recall >= 0.5 and spike_recall > 2 * false_positive_rate


def test_a_worse_challenger_is_kept_out_then_promote_and_rollback_move_the_champion(
    ml_settings, first_training
):
    contract = get_contract("weather")
    registry = Registry(ml_settings)
    champion = registry.resolve("weather", "forecast")
    # A broken feed: every measure shuffled in time, so nothing real is left to learn.
    hourly = hourly_observations(ml_settings, contract)
    rng = np.random.default_rng(3)
    broken = hourly.copy()
    for measure in contract.measure_names:
        broken[measure] = rng.permutation(broken[measure].to_numpy())
    report = run_training(
        ml_settings,
        "weather",
        config=CONFIG,
        kinds=("forecast",),
        policy="if-better",
        workers=2,
        hourly=broken,
    )
    challenger = report.registered["forecast"]
    assert report.decisions["forecast"].startswith("kept the champion"), report.decisions
    assert registry.resolve("weather", "forecast").version == champion.version
    # The comparison alone never promotes it either ...
    assert promote_version(ml_settings, "weather", "forecast", challenger.version).startswith(
        "kept the champion"
    )
    assert registry.resolve("weather", "forecast").version == champion.version
    # ... but an operator can force it, and roll back.
    promote_version(ml_settings, "weather", "forecast", challenger.version, force=True)
    assert registry.resolve("weather", "forecast").version == challenger.version
    assert registry.rollback("weather", "forecast") == (challenger.version, champion.version)
    assert registry.resolve("weather", "forecast").version == champion.version


def test_the_scheduled_retrain_job_runs_once(ml_settings, first_training):
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

    from ml.training.schedule import RETRAIN_JOB_ID, build_scheduler

    registry = Registry(ml_settings)
    before = len(registry.versions("weather_anomaly"))
    scheduler = build_scheduler(
        ml_settings, sources=["weather"], background=True, run_now=True, config=CONFIG
    )
    job = scheduler.get_job(RETRAIN_JOB_ID)
    assert str(job.trigger) == "cron[month='*', day='*', day_of_week='*', hour='3', minute='0']"
    finished = threading.Event()
    events = []

    def listen(event):
        events.append(event)
        finished.set()

    scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        assert finished.wait(600), "the retrain job did not finish"
    finally:
        scheduler.shutdown(wait=True)
    assert events[0].exception is None
    reports = events[0].retval
    assert [r.source for r in reports] == ["weather"]
    assert len(registry.versions("weather_anomaly")) == before + 1
    assert set(reports[0].decisions) == {"forecast", "anomaly"}
    # The job stays scheduled for its next cron time after the run.
    assert job.trigger.get_next_fire_time(None, pd.Timestamp.now(tz="UTC")).hour == 3


def test_models_cli_lists_and_shows_the_champion(ml_settings, first_training):
    env = {**os.environ, "PERISCOPE_LOCAL_DIR": str(ml_settings.local_dir), "COLUMNS": "200"}
    listed = subprocess.run(
        [PERISCOPE, "models", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "weather_forecast" in listed and "weather_anomaly" in listed and "★" in listed
    shown = subprocess.run(
        [PERISCOPE, "models", "show", "weather", "anomaly"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "champion" in shown and "f1" in shown


def test_periscope_evaluate_replays_the_retrain_on_a_week_of_real_history(tmp_path):
    """`periscope evaluate` as a user runs it (issue 16's yardstick): two real stations, the
    last full week of April 2017, one retrain with production's defaults on the dataset read
    as silver would keep it. Every hourly origin is forecast 1-24 h ahead and judged, one
    summary row per measure and horizon bucket and per month, nothing outside the valid range."""
    env = {
        **os.environ,
        "PERISCOPE_LOCAL_DIR": str(tmp_path),
        "PERISCOPE_LAKE_ROOT": str(tmp_path / "lake"),  # an empty lake: the dataset is read
    }
    result = subprocess.run(
        [PERISCOPE, "evaluate", "--source", "weather", "--stations", "denver,boston"]
        + ["--from", "2017-04-20", "--to", "2017-04-27", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "data: dataset" in result.stderr and "1 retrains" in result.stderr
    rows = pd.DataFrame(json.loads(result.stdout))
    measures = {"temperature", "humidity", "pressure"}
    by_horizon = rows[rows["by"] == "horizon"].set_index(["measure", "group"])
    assert set(by_horizon.index) == {
        (m, g) for m in measures for g in ("1-6 h", "7-12 h", "13-24 h", "all")
    }
    # 7 days of hourly origins at 2 stations, each judged at every horizon of its bucket
    # (these stations report every hour of that week).
    origins = 7 * 24 * len(STATIONS)
    for m in measures:
        assert by_horizon.loc[(m, "1-6 h"), "n"] == origins * 6
        assert by_horizon.loc[(m, "13-24 h"), "n"] == origins * 12
        assert by_horizon.loc[(m, "all"), "n"] == origins * 24
    assert (by_horizon["outside_range"] == 0).all()
    assert by_horizon["relative_mae"].between(0, 10).all()
    assert by_horizon["coverage"].between(0, 1).all()
    by_month = rows[rows["by"] == "month"]
    assert sorted(by_month["measure"]) == sorted(measures)
    assert set(by_month["group"]) == {"2017-04"}
