"""Gold's pure planning and its Delta writes (delta-rs on a temporary folder, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from ml.gold import (
    plan_round,
    prediction_messages,
    scored_through,
    split_by_station,
    station_owner,
    write_predictions,
)
from ml.scoring import GOLD_COLUMNS, gold_schema
from periscope import duckdb_lake

T0 = datetime(2013, 3, 1, 12, tzinfo=UTC)


def _batches(*sizes: int) -> pd.DataFrame:
    return pd.DataFrame({"silver_batch_id": range(len(sizes)), "windows": list(sizes)})


@pytest.mark.parametrize(
    ("sizes", "limit", "through"),
    [
        ((10, 10, 10), 25, 1),  # whole batches that fit
        ((10, 10, 10), 30, 2),
        ((50, 10), 20, 0),  # a batch bigger than the limit is still taken, alone
        ((5,), 1000, 0),
    ],
)
def test_plan_round_takes_whole_batches_up_to_the_limit(sizes, limit, through):
    assert plan_round(_batches(*sizes), limit) == through


def test_plan_round_without_batches_is_none():
    assert plan_round(_batches(), 100) is None


def test_split_by_station_keeps_each_station_on_its_own_actor_round_after_round():
    features = pd.DataFrame({"station_id": [f"s{i % 40}" for i in range(400)], "x": range(400)})
    parts = split_by_station(features, 2)
    assert len(parts) == 2 and all(len(p) > 0 for p in parts)
    stations = [set(p["station_id"]) for p in parts]
    assert stations[0].isdisjoint(stations[1])
    assert pd.concat(parts).sort_values("x")["x"].tolist() == list(range(400))
    # A later round with other rows of the same stations sends each one to the same actor.
    later = split_by_station(features.iloc[::7], 2)
    assert all(set(p["station_id"]) <= stations[i] for i, p in enumerate(later))
    assert [station_owner(s, 2) for s in sorted(stations[1])] == [1] * len(stations[1])
    assert [len(p) for p in split_by_station(features.head(0), 3)] == [0, 0, 0]


def _rows(stations: list[str], starts: list[datetime], version: int = 1) -> pa.Table:
    n = len(stations)
    forecast = [
        {
            "measure": "temperature",
            "horizon_h": 1,
            "target_time": s + timedelta(hours=1),
            "yhat": 1.5,
            "yhat_lower": 1.0,
            "yhat_upper": 2.0,
        }
        for s in starts
    ]
    return pa.Table.from_pydict(
        {
            "station_id": stations,
            "window_start": starts,
            "window_end": [s + timedelta(minutes=5) for s in starts],
            "anomaly_score": [0.1 * i for i in range(n)],
            "is_anomaly": [False] * n,
            "forecast_origin": starts,
            "forecasts": [[f] for f in forecast],
            "forecast_model": ["weather_forecast"] * n,
            "forecast_version": [version] * n,
            "anomaly_model": ["weather_anomaly"] * n,
            "anomaly_version": [version] * n,
            "scored_at": [T0] * n,
        },
        schema=gold_schema(),
    )


def _gold(path: str) -> pd.DataFrame:
    con = duckdb_lake.connect()
    try:
        return con.sql(f"select * from delta_scan('{path}') order by all").df()
    finally:
        con.close()


def test_write_predictions_replaces_rescored_windows_and_records_the_mark(tmp_path):
    path = str(tmp_path / "gold" / "weather_predictions")
    assert scored_through(path) is None
    minutes = [T0 + timedelta(minutes=i) for i in range(3)]
    write_predictions(path, _rows(["a", "a", "b"], minutes), through=4)
    assert scored_through(path) == 4
    # b's window is scored again by a newer model, c's is new.
    write_predictions(path, _rows(["b", "c"], minutes[2:] + minutes[:1], version=2), through=7)
    assert scored_through(path) == 7
    gold = _gold(path)
    assert len(gold) == 4
    assert gold.groupby(["station_id", "window_start"]).size().max() == 1
    by_key = gold.set_index(["station_id", "window_start"])["forecast_version"]
    assert by_key.loc[("b", minutes[2])] == 2  # replaced, not duplicated
    assert by_key.loc[("a", minutes[0])] == 1  # untouched
    assert sorted(by_key) == [1, 1, 2, 2]
    assert DeltaTable(path).schema().to_arrow().names == GOLD_COLUMNS


def test_write_predictions_moves_the_mark_even_without_rows(tmp_path):
    path = str(tmp_path / "gold")
    write_predictions(path, _rows(["a"], [T0]), through=1)
    write_predictions(path, gold_schema().empty_table(), through=2)
    assert scored_through(path) == 2
    assert len(_gold(path)) == 1


def test_prediction_messages_are_json_rows_keyed_by_station():
    messages = prediction_messages(_rows(["a", "b"], [T0, T0 + timedelta(minutes=1)]))
    assert [key for key, _ in messages] == [b"a", b"b"]
    first = json.loads(messages[0][1])
    assert set(first) == set(GOLD_COLUMNS)
    assert first["forecasts"][0]["measure"] == "temperature"
    assert first["forecasts"][0]["yhat"] == 1.5
    assert first["window_start"].startswith("2013-03-01 12:00:00")
