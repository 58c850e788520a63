"""The speed layer's pure parts (ml/gold/events.py): the gold event schema from the contract,
silver observations + predictions -> gold rows, the `<source>-predictions` message, and the
idempotent MERGE on the event id (a real local Delta table)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from ml.gold.events import (
    EVENT_SCORE_APP_ID,
    event_kind,
    event_predictions_path,
    event_rows,
    event_schema,
    predict_events,
    scored_events_through,
    write_event_predictions,
)
from ml.gold.messages import event_message_kind, event_prediction_messages
from periscope.contracts import TAXI, Measure, SourceContract, Text, get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings

SCORED_AT = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _observations(n: int = 3) -> pd.DataFrame:
    """Silver taxi observations as the lake gives them: naive UTC times, string ids."""
    return pd.DataFrame(
        {
            "pu_location_id": ["74", "41", "74", "166"][:n],
            "event_time": pd.to_datetime(
                ["2023-01-10 15:00", "2023-01-10 15:01", "2023-01-10 15:02", "2023-01-10 15:03"][:n]
            ),
            "trip_id": [f"t{i}" for i in range(n)],
            "do_location_id": ["75"] * n,
            "passenger_count": [1] * n,
            "trip_distance": [2.0 + i for i in range(n)],
            "rate_code": ["standard"] * n,
            "kafka_timestamp": pd.to_datetime(["2026-01-05 11:59:59.5"] * n).tz_localize(UTC),
        }
    )


def _rows(frame: pd.DataFrame, duration: list[float], fare: list[float]) -> pa.Table:
    predicted = {"duration_min": np.array(duration), "fare_amount": np.array(fare)}
    return event_rows(frame, predicted, TAXI, model="taxi_trip", version=3, scored_at=SCORED_AT)


def test_the_schema_comes_from_the_contract():
    schema = event_schema(TAXI)
    assert schema.names == [
        "pu_location_id",
        "trip_id",
        "event_time",
        "kafka_timestamp",
        "predicted_duration_min",
        "predicted_fare_amount",
        "event_model",
        "event_model_version",
        "scored_at",
    ]
    assert schema.field("predicted_fare_amount").type == pa.float64()
    assert schema.field("event_model_version").type == pa.int64()
    assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    with pytest.raises(PeriscopeError, match="predicts nothing per event"):
        event_schema(get_contract("weather"))


def test_a_contract_predicting_per_event_without_a_registered_kind_has_no_event_model():
    toy = SourceContract(
        "toy_events",
        "a toy",
        fields=(Text("device"), Text("event"), Measure("x", "m", 0, 1)),
        key_field="device",
        event_id_field="event",
        event_predictions=("x",),
    )
    assert event_kind(toy) is None
    assert event_schema(toy).names[:5] == [
        "device",
        "event",
        "event_time",
        "kafka_timestamp",
        "predicted_x",
    ]
    assert event_kind(TAXI) == "trip" and event_kind(get_contract("weather")) is None


def test_the_speed_layers_table_and_messages_are_named_by_the_contracts_event():
    settings = Settings(_env_file=None, lake_root="/lake")
    assert event_predictions_path(settings, TAXI) == "/lake/gold/taxi_trip_predictions"
    assert event_message_kind(TAXI) == "trip_prediction"
    orders = SourceContract(
        "orders",
        "e-commerce orders",
        fields=(Text("customer"), Text("order_id"), Measure("total", "USD", 0, 1e4)),
        key_field="customer",
        event_id_field="order_id",
        event_label="order",
        event_predictions=("total",),
    )
    assert event_predictions_path(settings, orders) == "/lake/gold/orders_order_predictions"
    assert event_message_kind(orders) == "order_prediction"
    # A contract that names no event keeps the generic name.
    unnamed = SourceContract(
        "toy", "a toy", fields=orders.fields, key_field="customer", event_id_field="order_id"
    )
    assert event_predictions_path(settings, unnamed) == "/lake/gold/toy_event_predictions"


def test_rows_keep_each_event_with_its_predictions_in_order():
    rows = _rows(_observations(), [10.0, 11.0, float("nan")], [9.5, 12.25, 14.0])
    assert rows.schema == event_schema(TAXI)
    assert rows["trip_id"].to_pylist() == ["t0", "t1", "t2"]
    assert rows["pu_location_id"].to_pylist() == ["74", "41", "74"]
    assert rows["predicted_duration_min"].to_pylist() == [10.0, 11.0, None]  # NaN: no number
    assert rows["predicted_fare_amount"].to_pylist() == [9.5, 12.25, 14.0]
    assert rows["event_time"][1].as_py() == datetime(2023, 1, 10, 15, 1, tzinfo=UTC)
    assert rows["kafka_timestamp"][0].as_py() == datetime(
        2026, 1, 5, 11, 59, 59, 500000, tzinfo=UTC
    )
    assert set(rows["event_model"].to_pylist()) == {"taxi_trip"}
    assert set(rows["event_model_version"].to_pylist()) == {3}
    assert set(rows["scored_at"].to_pylist()) == {SCORED_AT}


def test_an_event_given_twice_keeps_one_row_the_last():
    frame = _observations(3)
    frame.loc[2, "trip_id"] = "t0"
    rows = _rows(frame, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert rows["trip_id"].to_pylist() == ["t1", "t0"]
    assert rows["predicted_duration_min"].to_pylist() == [2.0, 3.0]


def test_predictions_must_match_the_events():
    with pytest.raises(ValueError, match="2 predictions of duration_min for 3 events"):
        _rows(_observations(), [1.0, 2.0], [1.0, 2.0, 3.0])


def test_predict_events_asks_the_model_for_each_contract_measure_in_row_order():
    class DistanceModel:  # the smallest event model: the measure picks a rate per mile
        def predict_target(self, target: str, trips: pd.DataFrame) -> np.ndarray:
            scale = {"duration_min": 1.0, "fare_amount": 10.0}[target]
            return trips["trip_distance"].to_numpy() * scale

    predicted = predict_events(DistanceModel(), _observations(), TAXI.event_predictions)
    assert predicted["duration_min"].tolist() == [2.0, 3.0, 4.0]
    assert predicted["fare_amount"].tolist() == [20.0, 30.0, 40.0]
    empty = predict_events(DistanceModel(), _observations(0), TAXI.event_predictions)
    assert {k: len(v) for k, v in empty.items()} == {"duration_min": 0, "fare_amount": 0}


def test_a_message_is_the_row_with_its_kind_and_utc_times():
    rows = _rows(_observations(2), [10.0, float("nan")], [9.5, 12.0])
    messages = event_prediction_messages(rows, TAXI.key_field, kind=event_message_kind(TAXI))
    assert [key for key, _ in messages] == [b"74", b"41"]
    first, second = (orjson.loads(value) for _, value in messages)
    assert first == {
        "pu_location_id": "74",
        "trip_id": "t0",
        "event_time": "2023-01-10T15:00:00.000000Z",
        "kafka_timestamp": "2026-01-05T11:59:59.500000Z",
        "predicted_duration_min": 10.0,
        "predicted_fare_amount": 9.5,
        "event_model": "taxi_trip",
        "event_model_version": 3,
        "scored_at": "2026-01-05T12:00:00.000000Z",
        "kind": "trip_prediction",
    }
    assert second["predicted_duration_min"] is None


def test_merge_on_the_event_id_keeps_one_row_per_event_and_records_the_mark(tmp_path):
    from deltalake import DeltaTable

    path = str(tmp_path / "gold" / "taxi_trip_predictions")
    assert scored_events_through(path) is None
    write_event_predictions(path, _rows(_observations(3), [1.0, 2.0, 3.0], [4, 5, 6]), 7, TAXI)
    assert scored_events_through(path) == 7
    # The same events again (a rerun after a crash) and one re-scored with a new number.
    again = _rows(_observations(4), [1.0, 2.0, 30.0, 4.0], [4, 5, 6, 7])
    write_event_predictions(path, again, 9, TAXI)
    table = DeltaTable(path)
    assert table.transaction_version(EVENT_SCORE_APP_ID) == 9
    rows = table.to_pyarrow_table().sort_by("trip_id")
    assert rows["trip_id"].to_pylist() == ["t0", "t1", "t2", "t3"]
    assert rows["predicted_duration_min"].to_pylist() == [1.0, 2.0, 30.0, 4.0]
    # Nothing new: the mark still moves past the batches read.
    write_event_predictions(path, event_schema(TAXI).empty_table(), 11, TAXI)
    assert scored_events_through(path) == 11 and DeltaTable(path).to_pyarrow_table().num_rows == 4
