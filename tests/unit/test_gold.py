"""Gold's pure planning and its Delta writes (delta-rs on a temporary folder, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from ml.gold import (
    entity_owner,
    gold_columns,
    gold_schema,
    plan_round,
    prediction_messages,
    scored_through,
    split_by_entity,
    write_predictions,
)
from periscope import duckdb_lake

T0 = datetime(2013, 3, 1, 12, tzinfo=UTC)

KEY = "station_id"  # the weather contract's key


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
    parts = split_by_entity(features, 2, KEY)
    assert len(parts) == 2 and all(len(p) > 0 for p in parts)
    stations = [set(p["station_id"]) for p in parts]
    assert stations[0].isdisjoint(stations[1])
    assert pd.concat(parts).sort_values("x")["x"].tolist() == list(range(400))
    # A later round with other rows of the same stations sends each one to the same actor.
    later = split_by_entity(features.iloc[::7], 2, KEY)
    assert all(set(p["station_id"]) <= stations[i] for i, p in enumerate(later))
    assert [entity_owner(s, 2) for s in sorted(stations[1])] == [1] * len(stations[1])
    assert [len(p) for p in split_by_entity(features.head(0), 3, KEY)] == [0, 0, 0]


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
            "method": "gbm",
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
            "anomaly_kind": [None] * n,
            "forecast_origin": starts,
            "forecasts": [[f] for f in forecast],
            "forecast_model": ["weather_forecast"] * n,
            "forecast_version": [version] * n,
            "anomaly_model": ["weather_anomaly"] * n,
            "anomaly_version": [version] * n,
            "scored_at": [T0] * n,
        },
        schema=gold_schema(KEY),
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
    write_predictions(path, _rows(["a", "a", "b"], minutes), through=4, key=KEY)
    assert scored_through(path) == 4
    # b's window is scored again by a newer model, c's is new.
    write_predictions(
        path, _rows(["b", "c"], minutes[2:] + minutes[:1], version=2), through=7, key=KEY
    )
    assert scored_through(path) == 7
    gold = _gold(path)
    assert len(gold) == 4
    assert gold.groupby(["station_id", "window_start"]).size().max() == 1
    by_key = gold.set_index(["station_id", "window_start"])["forecast_version"]
    assert by_key.loc[("b", minutes[2])] == 2  # replaced, not duplicated
    assert by_key.loc[("a", minutes[0])] == 1  # untouched
    assert sorted(by_key) == [1, 1, 2, 2]
    assert DeltaTable(path).schema().to_arrow().names == gold_columns(KEY)


def test_write_predictions_moves_the_mark_even_without_rows(tmp_path):
    path = str(tmp_path / "gold")
    write_predictions(path, _rows(["a"], [T0]), through=1, key=KEY)
    write_predictions(path, gold_schema(KEY).empty_table(), through=2, key=KEY)
    assert scored_through(path) == 2
    assert len(_gold(path)) == 1


def _forecast_rows(stations: list[str], measures: list[str], horizon: int) -> pa.Table:
    """Gold rows whose forecasts are listed measure by measure, horizons 1..horizon, with
    values that tell where they belong: yhat = row * 1000 + measure * 100 + horizon."""
    rows = _rows(stations, [T0 + timedelta(minutes=i) for i in range(len(stations))])
    forecasts = [
        [
            {
                "measure": measure,
                "horizon_h": h,
                "target_time": T0 + timedelta(hours=h),
                "yhat": r * 1000 + m * 100 + h + 0.25,
                "yhat_lower": r * 1000 + m * 100 + h,
                "yhat_upper": r * 1000 + m * 100 + h + 0.5,
                "method": "gbm" if h <= 12 else "seasonal_naive",
            }
            for m, measure in enumerate(measures)
            for h in range(1, horizon + 1)
        ]
        for r in range(len(stations))
    ]
    index = rows.schema.get_field_index("forecasts")
    return rows.set_column(index, "forecasts", pa.array(forecasts, rows.schema.field(index).type))


def test_prediction_messages_are_gold_rows_with_forecasts_by_measure():
    rows = _forecast_rows(["a", "b", "c"], ["temperature", "humidity"], horizon=24)
    rows = rows.set_column(
        rows.schema.get_field_index("anomaly_score"),
        "anomaly_score",
        pa.array([0.5, float("nan"), None], pa.float64()),
    )
    messages = prediction_messages(rows, KEY)
    assert [key for key, _ in messages] == [b"a", b"b", b"c"]
    decoded = [json.loads(value) for _, value in messages]
    assert all(set(m) == set(gold_columns(KEY)) for m in decoded)
    assert [m["anomaly_score"] for m in decoded] == [0.5, None, None]  # NaN is not JSON
    assert decoded[1]["window_start"] == "2013-03-01T12:01:00.000000Z"
    assert decoded[0]["forecast_version"] == 1 and decoded[0]["is_anomaly"] is False
    for r, message in enumerate(decoded):
        assert list(message["forecasts"]) == ["temperature", "humidity"]
        for m, measure in enumerate(["temperature", "humidity"]):
            base = r * 1000 + m * 100
            assert message["forecasts"][measure] == {
                "yhat": [base + h + 0.25 for h in range(1, 25)],
                "yhat_lower": [float(base + h) for h in range(1, 25)],
                "yhat_upper": [base + h + 0.5 for h in range(1, 25)],
                "method": ["gbm"] * 12 + ["seasonal_naive"] * 12,
            }


def test_prediction_messages_put_forecasts_in_horizon_order_and_refuse_gaps():
    rows = _forecast_rows(["a", "b"], ["temperature"], horizon=3)
    shuffled = [list(reversed(f)) for f in rows.column("forecasts").to_pylist()]
    index = rows.schema.get_field_index("forecasts")
    reordered = rows.set_column(
        index, "forecasts", pa.array(shuffled, rows.schema.field(index).type)
    )
    assert prediction_messages(reordered, KEY) == prediction_messages(rows, KEY)
    # A row's slice (what a Table.slice hands over) encodes as the row alone.
    assert prediction_messages(rows.slice(1), KEY) == prediction_messages(rows, KEY)[1:]
    gap = [[f for f in forecasts if f["horizon_h"] != 2] for forecasts in shuffled]
    with pytest.raises(ValueError, match="horizons"):
        prediction_messages(
            rows.set_column(index, "forecasts", pa.array(gap, rows.schema.field(index).type)),
            KEY,
        )
    assert prediction_messages(rows.slice(0, 0), KEY) == []


def test_rows_sharing_a_forecast_list_each_carry_it_and_a_differing_one_keeps_its_own():
    # A station's overlapping windows share one origin, so one forecast list: it is encoded
    # once, and a row whose list differs in a single value still gets its own.
    rows = _forecast_rows(["a", "a", "a", "b"], ["temperature"], horizon=3)
    index = rows.schema.get_field_index("forecasts")
    lists = rows.column("forecasts").to_pylist()
    lists[1] = lists[2] = lists[0]
    lists[3] = [dict(item) for item in lists[0]]
    lists[3][1]["yhat_upper"] = 99.0
    rows = rows.set_column(index, "forecasts", pa.array(lists, rows.schema.field(index).type))
    decoded = [
        json.loads(value)["forecasts"]["temperature"] for _, value in prediction_messages(rows, KEY)
    ]
    assert (
        decoded[0]
        == decoded[1]
        == decoded[2]
        == {
            "yhat": [1.25, 2.25, 3.25],
            "yhat_lower": [1.0, 2.0, 3.0],
            "yhat_upper": [1.5, 2.5, 3.5],
            "method": ["gbm"] * 3,
        }
    )
    assert decoded[3]["yhat_upper"] == [1.5, 99.0, 3.5]


def test_write_predictions_adds_the_forecast_method_to_a_gold_table_written_before_it(tmp_path):
    from deltalake import write_deltalake

    from ml.gold.table import FORECAST_TYPE

    path = str(tmp_path / "gold")
    item_fields = [f for f in FORECAST_TYPE.value_type if f.name != "method"]
    old_type = pa.list_(pa.struct([pa.field(f.name, f.type, nullable=False) for f in item_fields]))
    schema = gold_schema(KEY)
    old_schema = pa.schema(
        [
            pa.field("forecasts", old_type, nullable=False) if f.name == "forecasts" else f
            for f in schema
        ]
    )
    rows = _rows(["a", "b"], [T0, T0])
    old_rows = (
        rows.drop_columns(["forecasts"])
        .append_column(
            old_schema.field("forecasts"),
            pa.array(
                [
                    [{k: v for k, v in f.items() if k != "method"} for f in fs]
                    for fs in rows.column("forecasts").to_pylist()
                ],
                old_type,
            ),
        )
        .select(old_schema.names)
        .cast(old_schema)
    )
    write_deltalake(path, old_rows)

    write_predictions(path, _rows(["b"], [T0]), through=1, key=KEY)

    table = DeltaTable(path).to_pyarrow_table().sort_by(KEY)
    methods = [[f["method"] for f in fs] for fs in table.column("forecasts").to_pylist()]
    assert methods == [[None], ["gbm"]]  # the old row keeps no method; the new one names it


def test_the_scoring_pool_starts_only_when_a_round_uses_it() -> None:
    """A scorer with nothing new never starts Ray; one with work starts it once."""
    from ml.gold.rounds import _PoolWhenNeeded

    started: list[object] = []

    class Pool:
        def score(self) -> str:
            return "scored"

    def start() -> Pool:
        started.append(Pool())
        return started[-1]  # type: ignore[return-value]

    pool = _PoolWhenNeeded(start)  # type: ignore[arg-type]
    assert started == []
    assert pool.score() == "scored"
    assert pool.score() == "scored"
    assert len(started) == 1
