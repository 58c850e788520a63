"""Lineage on a small real pipeline (conftest.py's `scored_weather`): ten days of two weather
stations replayed into Kafka (with malformed records mixed in), landed by the bronze and silver
queries in several micro-batches, champions trained, windows scored into gold. One gold row is
followed back: its readings must be exactly the bronze records at the coordinates lineage
names, its versions must be the commits that wrote it, and the API and the CLI must answer
the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from periscope.contracts import WEATHER
from periscope.lake import read_delta
from serving.api import create_app
from serving.lineage import lineage

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")


def _path(settings, layer: str, entity: str) -> str:
    return settings.lake_path(WEATHER.table(layer, entity))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scored(scored_weather):
    """The session's small real weather pipeline (conftest.py), shared with the dashboard test."""
    return scored_weather


@pytest.fixture(scope="module")
def followed(scored) -> tuple[dict, dict]:
    """A gold row of denver in the middle of the run, and its lineage."""
    gold = read_delta(
        _path(scored, "gold", "predictions"), None, pc.field("station_id") == "denver"
    )
    rows = sorted(gold.to_pylist(), key=lambda r: r["window_start"])
    row = rows[len(rows) // 2]
    found = lineage(scored, WEATHER, "denver", row["window_start"])
    assert found is not None
    return row, found


def test_the_readings_are_the_bronze_records_at_the_coordinates_lineage_names(scored, followed):
    row, found = followed
    readings = found["observations"]
    assert readings and len(readings) == found["silver"]["reading_count"]
    bronze = read_delta(_path(scored, "bronze", "raw")).to_pylist()
    at = {(r["topic"], r["partition"], r["offset"]): r for r in bronze}
    start = row["window_start"]
    for reading in readings:
        record = at[(reading["topic"], reading["partition"], reading["offset"])]
        sent = json.loads(record["value"])
        assert sent["station_id"] == "denver"
        event_time = datetime.fromisoformat(reading["event_time"])
        assert datetime.fromisoformat(sent["timestamp"].replace("Z", "+00:00")) == event_time
        assert start <= event_time < start + timedelta(hours=3)
        for measure in WEATHER.measures:
            if sent.get(measure.name) is not None and reading.get(measure.name) is not None:
                assert reading[measure.name] == pytest.approx(float(sent[measure.name]))


def test_the_silver_batch_and_versions_are_the_commits_that_wrote_the_row(scored, followed):
    row, found = followed
    silver, gold = found["silver"], found["gold"]
    # Filtered on window_start in the scan, on the station after: delta-rs' MERGE writes string
    # views, which Arrow's scan filter cannot compare with a string.
    window = pc.field("window_start") == row["window_start"]

    def denver_at(layer: str, entity: str, version: int, column: str):
        table = DeltaTable(_path(scored, layer, entity), version=version)
        hits = table.to_pyarrow_dataset().to_table(filter=window, columns=["station_id", column])
        values = [r[column] for r in hits.to_pylist() if r["station_id"] == "denver"]
        return values[0] if values else None

    features_version = silver["features_version"]
    assert (
        denver_at("silver", "features", features_version, "silver_batch_id") == silver["batch_id"]
    )
    assert (
        denver_at("silver", "features", features_version - 1, "silver_batch_id")
        != silver["batch_id"]
    )
    assert silver["batch"]["batch_id"] == silver["batch_id"] and silver["batch"]["observations"] > 0

    def scored_at(version: int):
        return denver_at("gold", "predictions", version, "scored_at")

    assert scored_at(gold["version"]) == row["scored_at"]
    # The commit before it did not hold this row yet (version 0: the round that created gold).
    assert gold["version"] == 0 or scored_at(gold["version"] - 1) != row["scored_at"]


def test_the_models_are_the_ones_in_the_gold_row(followed):
    row, found = followed
    assert found["models"] == {
        "forecast": {"model": "weather_forecast", "version": row["forecast_version"]},
        "anomaly": {"model": "weather_anomaly", "version": row["anomaly_version"]},
    }
    assert row["forecast_version"] is not None and row["anomaly_version"] is not None


def test_the_api_and_the_cli_answer_the_same(scored, followed):
    row, found = followed
    start = row["window_start"].isoformat()
    with TestClient(create_app(scored)) as client:
        answer = client.get(f"/lineage/weather/denver/{start}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == orjson.loads(orjson.dumps(found))
        assert client.get(f"/lineage/weather/nowhere/{start}").status_code == 404
        assert client.get("/lineage/weather/denver/not-a-time").status_code == 422
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": scored.lake_root}
    shown = subprocess.run(
        [PERISCOPE, "lineage", "weather", "denver", start, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert json.loads(shown.stdout) == found
