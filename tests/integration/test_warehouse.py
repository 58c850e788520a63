"""The warehouse on a real slice: silver built by the real Spark code, gold written as Delta,
loaded into the real Postgres by `periscope warehouse load`, modelled by `periscope dbt build`.

One module-scoped lake and database; the tests run in file order and each moves both along:
first load (the taxi slice's speed-layer table is skipped until gold writes it, then loaded), a
second load that finds nothing, dbt, more silver and a re-scored gold row with a
load that crashes half-way and is rerun, dbt again, then what bi_reader may and may not do, and
last a source of another shape registered in this process, loaded and modelled end to end.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg2
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from psycopg2 import errors

from ingest.datasets import read_air_quality, read_taxi, read_weather
from ingest.producer import encode_record
from ingest.replay import prepare_frame
from ml.gold import gold_schema as _gold_schema
from periscope.contracts import (
    CONTRACTS,
    TAXI,
    Aggregation,
    Category,
    Count,
    ForecastTarget,
    Measure,
    SourceContract,
    Text,
    WindowSpec,
    get_contract,
)
from periscope.lake import delta_row_count, read_delta
from spark_streaming.silver import process_batch
from tests.integration.conftest import fresh_warehouse, run_periscope
from tests.integration.silver_helpers import bronze_frame, silver_tables
from warehouse.dbt import run_dbt, sync_project
from warehouse.loader import load_tables
from warehouse.plan import table_specs

pytestmark = pytest.mark.integration

STATIONS = ["denver", "boston"]
FIRST_DAYS = 3
SOURCES = ("weather", "air_quality")
TAXI_UNTIL = datetime(2023, 1, 1, 12, tzinfo=UTC)  # the month's first 7 hours (NYC time)
FACTS = (
    "fct_trip",
    "fct_observation_hourly",
    "fct_feature_window",
    "fct_feature_value",
    "fct_forecast",
    "fct_anomaly",
    "fct_forecast_accuracy",
)


# --- the test lake ---------------------------------------------------------------------------
def gold_schema(key: str = "station_id") -> pa.Schema:
    """Gold's schema keyed by `key` (weather's station_id unless a test says otherwise)."""
    return _gold_schema(key)


def _history(settings, source: str):
    if source == "weather":
        frame = read_weather(settings.data_dir, stations=STATIONS)
    else:
        frame = read_air_quality(settings.data_dir)
    start = frame["timestamp"].min() + timedelta(days=1)
    return frame, start


def _messages(frame, since, until):
    rows = frame.filter((frame["timestamp"] >= since) & (frame["timestamp"] < until))
    return [
        (
            row["station_id"].encode(),
            encode_record({**row, "timestamp": row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")}),
        )
        for row in rows.iter_rows(named=True)
    ]


def write_stand_in_gold(settings, source: str, *, mode: str = "overwrite") -> None:
    """Gold rows of exactly `gold_schema()` for every silver window, one Delta file per station.

    A stand-in for `periscope score` (built elsewhere): a persistence forecast of the first
    measure (the hourly mean at forecast_origin) for horizons 1-3 with a +-1 interval, and an
    anomaly score = how far the window's mean is from the station's mean, in its stddevs.
    """
    contract = get_contract(source)
    measure = contract.measure_names[0]
    features = read_delta(settings.lake_path(contract.table("silver", "features"))).to_pandas()
    hourly = read_delta(settings.lake_path(contract.table("silver", "observations"))).to_pandas()
    hourly = hourly.assign(hour=hourly["event_time"].dt.floor("h"))
    at_hour = hourly.groupby(["station_id", "hour"])[measure].mean()
    path = settings.lake_path(contract.table("gold", "predictions"))
    scored_at = datetime(2025, 1, 1, tzinfo=UTC)
    for i, (station, windows) in enumerate(sorted(features.groupby("station_id"))):
        mean, std = windows[f"{measure}_mean"].mean(), windows[f"{measure}_mean"].std()
        rows = []
        for w in windows.itertuples():
            origin = pd.Timestamp(w.window_end) - pd.Timedelta(hours=1)
            value = at_hour.get((station, origin))
            forecasts = (
                []
                if value is None or pd.isna(value)
                else [
                    {
                        "measure": measure,
                        "horizon_h": h,
                        "target_time": origin + pd.Timedelta(hours=h),
                        "yhat": float(value),
                        "yhat_lower": float(value) - 1,
                        "yhat_upper": float(value) + 1,
                        "method": "persistence",
                    }
                    for h in (1, 2, 3)
                ]
            )
            score = abs(getattr(w, f"{measure}_mean") - mean) / std
            rows.append(
                {
                    "station_id": station,
                    "window_start": w.window_start,
                    "window_end": w.window_end,
                    "anomaly_score": None if pd.isna(score) else float(score),
                    "is_anomaly": None if pd.isna(score) else bool(score > 2),
                    "anomaly_kind": "residual" if not pd.isna(score) and score > 2 else None,
                    "forecast_origin": origin,
                    "forecasts": forecasts,
                    "forecast_model": f"{source}_forecast",
                    "forecast_version": 1,
                    "anomaly_model": f"{source}_anomaly",
                    "anomaly_version": 1,
                    "scored_at": scored_at,
                }
            )
        table = pa.Table.from_pylist(rows, schema=gold_schema())
        write_deltalake(path, table, mode=mode if i == 0 else "append")


# The speed layer's table, in the schema gold writes (ml.gold's event schema for taxi).
TAXI_EVENT_SCHEMA = pa.schema(
    [
        pa.field("pu_location_id", pa.string(), nullable=False),
        pa.field("trip_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kafka_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("predicted_duration_min", pa.float64()),
        pa.field("predicted_fare_amount", pa.float64()),
        pa.field("event_model", pa.string(), nullable=False),
        pa.field("event_model_version", pa.int64(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def write_taxi_event_predictions(settings) -> pa.Table:
    """Gold event predictions for every trip but each fourth (not scored yet): duration and
    fare predicted as 1 minute and 1 USD above the actual ones, by trip model version 3."""
    trips = read_delta(settings.lake_path(TAXI.table("silver", "observations"))).to_pandas()
    trips = trips.sort_values("trip_id").reset_index(drop=True)
    scored = trips[trips.index % 4 != 0]
    events = pa.Table.from_pydict(
        {
            "pu_location_id": scored["pu_location_id"].tolist(),
            "trip_id": scored["trip_id"].tolist(),
            "event_time": scored["event_time"].tolist(),
            "kafka_timestamp": scored["event_time"].tolist(),
            "predicted_duration_min": (scored["duration_min"] + 1).tolist(),
            "predicted_fare_amount": (scored["fare_amount"] + 1).tolist(),
            "event_model": ["taxi_trip"] * len(scored),
            "event_model_version": [3] * len(scored),
            "scored_at": [datetime(2025, 1, 1, tzinfo=UTC)] * len(scored),
        },
        schema=TAXI_EVENT_SCHEMA,
    )
    write_deltalake(settings.lake_path("gold/taxi_trip_predictions"), events, mode="overwrite")
    return events


def write_taxi_demand_gold(settings) -> tuple[str, datetime]:
    """One gold row of the busiest zone: an event_count forecast for each hour of the slice
    (a zone demand forecast of 2 trips, method seasonal_naive). Returns the zone and the
    window start."""
    trips = read_delta(settings.lake_path(TAXI.table("silver", "observations"))).to_pandas()
    zone = trips["pu_location_id"].value_counts().index[0]
    origin = datetime(2023, 1, 1, 5, tzinfo=UTC)  # midnight in New York
    forecasts = [
        {
            "measure": "event_count",
            "horizon_h": h,
            "target_time": origin + timedelta(hours=h),
            "yhat": 2.0,
            "yhat_lower": 0.0,
            "yhat_upper": 4.0,
            "method": "seasonal_naive",
        }
        for h in range(1, 8)
    ]
    row = {
        "pu_location_id": zone,
        "window_start": origin - timedelta(minutes=15),
        "window_end": origin,
        "forecast_origin": origin,
        "forecasts": forecasts,
        "forecast_model": "taxi_forecast",
        "forecast_version": 1,
        "scored_at": datetime(2025, 1, 1, tzinfo=UTC),
    }
    gold = pa.Table.from_pylist([row], schema=gold_schema("pu_location_id"))
    write_deltalake(settings.lake_path("gold/taxi_predictions"), gold, mode="overwrite")
    return zone, row["window_start"]


class Lake:
    """Silver of two real weather stations, the UCI station and the first hours of the taxi
    month, and stand-in gold."""

    def __init__(self, spark, services, root: Path) -> None:
        self.settings = services.model_copy(update={"lake_root": str(root / "lake")})
        self.session = spark.newSession()
        self.root = root
        self.tables = {
            s: silver_tables(self.session, root, services, get_contract(s))
            for s in (*SOURCES, "taxi")
        }
        self.history = {s: _history(services, s) for s in SOURCES}

    def silver_days(self, source: str, first_day: int, days: int, batch_id: int) -> int:
        frame, start = self.history[source]
        since = start + timedelta(days=first_day)
        messages = _messages(frame, since, since + timedelta(days=days))
        counts = process_batch(
            bronze_frame(self.session, messages, first_offset=batch_id * 100_000),
            batch_id,
            settings=self.settings,
            contract=get_contract(source),
            tables=self.tables[source],
            app_id=f"warehouse-test-{source}",
            publish=False,
        )
        assert counts["observations"] == len(messages) > 0
        return len(messages)

    def taxi_silver(self) -> int:
        """The real trips picked up before TAXI_UNTIL through silver; returns the accepted ones
        (real trips that break a rule are quarantined)."""
        trips = prepare_frame(read_taxi(self.settings.data_dir), TAXI, until=TAXI_UNTIL)
        messages = [
            (
                row["pu_location_id"].encode(),
                encode_record(
                    {
                        k: v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v
                        for k, v in row.items()
                    }
                ),
            )
            for row in trips.iter_rows(named=True)
        ]
        counts = process_batch(
            bronze_frame(self.session, messages, first_offset=0),
            0,
            settings=self.settings,
            contract=TAXI,
            tables=self.tables["taxi"],
            app_id="warehouse-test-taxi",
            publish=False,
        )
        assert 0 < counts["observations"] <= len(messages)
        return int(counts["observations"])

    def delta_path(self, table: str) -> str:
        return self.settings.lake_path(table)


def build_lake(spark, services, root: Path) -> Lake:
    """The first FIRST_DAYS days of each source through silver, stand-in gold, the taxi hours."""
    lake = Lake(spark, services, root)
    for source in SOURCES:
        lake.silver_days(source, 0, FIRST_DAYS, batch_id=0)
        write_stand_in_gold(lake.settings, source)
    lake.taxi_trips = lake.taxi_silver()
    lake.taxi_demand = write_taxi_demand_gold(lake.settings)
    return lake


@pytest.fixture(scope="module")
def lake(warehouse_lake, spark, services, tmp_path_factory):
    """A copy of the session's lake of this shape (conftest.py): the tests here add to it."""
    root = tmp_path_factory.mktemp("warehouse")
    shutil.copytree(Path(warehouse_lake.settings.lake_root), root / "lake")
    lake = Lake(spark, services, root)
    lake.taxi_trips, lake.taxi_demand = warehouse_lake.taxi_trips, warehouse_lake.taxi_demand
    return lake


@pytest.fixture(scope="module")
def warehouse(services):
    """A database without the schemas of earlier runs, bootstrapped as `services up` does."""
    return fresh_warehouse(services)


@pytest.fixture(scope="module")
def dbt_env(lake, warehouse, tmp_path_factory):
    """Environment of `periscope` subprocesses: the test lake, dbt output in a temp folder."""
    out = tmp_path_factory.mktemp("dbt")
    return {
        **os.environ,
        "COLUMNS": "200",  # rich tables at full width
        "PERISCOPE_LAKE_ROOT": lake.settings.lake_root,
        "DBT_TARGET_PATH": str(out / "target"),
        "DBT_LOG_PATH": str(out / "logs"),
    }


def _query(settings, statement: str, params=None, role: str = "owner") -> list[tuple]:
    with psycopg2.connect(settings.postgres_dsn(role)) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def _state(settings) -> dict[str, tuple[int, int, int]]:
    rows = _query(
        settings, "select table_name, delta_version, delta_rows, lake_rows from lake._load_state"
    )
    return {name: (version, delta, lake) for name, version, delta, lake in rows}


def _forecasts_in_delta(path: str) -> int:
    gold = read_delta(path, columns=["forecasts"])
    return sum(len(f) for f in gold.column("forecasts").to_pylist())


# --- the tests, in order ---------------------------------------------------------------------
def test_first_load_copies_every_table_and_records_delta_counts(lake, warehouse):
    results = {r.table: r for r in load_tables(lake.settings, table_specs(SOURCES))}
    state = _state(warehouse)
    for spec in table_specs(SOURCES):
        path = lake.delta_path(spec.delta_table)
        expected = delta_row_count(path)
        result = results[spec.name]
        assert (result.status, result.mode) == ("loaded", "full")
        assert result.rows_loaded == result.rows_changed == expected > 0
        assert _query(warehouse, f"select count(*) from lake.{spec.name}")[0][0] == expected
        assert state[spec.name] == (DeltaTable(path).version(), expected, expected)
        if spec.forecasts_table:
            forecasts = _query(warehouse, f"select count(*) from lake.{spec.forecasts_table}")
            assert forecasts[0][0] == results[spec.name].forecasts_loaded
            assert forecasts[0][0] == _forecasts_in_delta(path) > 0

    # Values survive the trip: one observation, compared with Delta.
    obs = read_delta(lake.delta_path("silver/weather_observations")).to_pandas()
    first = obs.sort_values(["station_id", "event_time"]).iloc[0]
    [(temperature, humidity)] = _query(
        warehouse,
        "select temperature, humidity from lake.weather_observations "
        "where station_id = %s and event_time = %s",
        (first["station_id"], first["event_time"].to_pydatetime()),
    )
    assert (temperature, humidity) == (first["temperature"], first["humidity"])

    # Taxi: the speed layer's table is skipped (not an error) until gold writes it ...
    taxi = {r.table: r for r in load_tables(lake.settings, table_specs(["taxi"]))}
    assert set(taxi) == {
        f"taxi_{e}" for e in ("observations", "features", "predictions", "trip_predictions")
    }
    skipped = taxi["taxi_trip_predictions"]
    assert (skipped.status, skipped.reason) == (
        "skipped",
        f"no Delta table at {lake.delta_path('gold/taxi_trip_predictions')}",
    )
    assert taxi["taxi_observations"].rows_loaded == lake.taxi_trips
    assert taxi["taxi_predictions"].forecasts_loaded == 7
    # ... and loaded, keyed by trip id, once it does.
    events = write_taxi_event_predictions(lake.settings)
    [loaded] = load_tables(lake.settings, table_specs(["taxi"], ["event_predictions"]))
    assert (loaded.status, loaded.mode, loaded.rows_loaded) == ("loaded", "full", events.num_rows)
    assert 0 < events.num_rows < lake.taxi_trips
    assert _query(
        warehouse, "select count(distinct trip_id), count(*) from lake.taxi_trip_predictions"
    ) == [(events.num_rows, events.num_rows)]
    # gold rows keep the detector that flagged them; forecasts the method served.
    assert (
        _query(
            warehouse,
            "select count(*) filter (where is_anomaly), count(anomaly_kind) "
            "from lake.weather_predictions",
        )[0][0]
        == _query(
            warehouse,
            "select count(*) from lake.weather_predictions where anomaly_kind = 'residual'",
        )[0][0]
        > 0
    )
    assert _query(warehouse, "select distinct method from lake.weather_forecasts") == [
        ("persistence",)
    ]


def test_a_second_load_finds_nothing_new(lake, warehouse, dbt_env):
    before = _state(warehouse)
    output = run_periscope(dbt_env, "warehouse", "load")
    assert output.count("up to date") == 10, output  # 3 tables x 2 sources, 4 of taxi
    assert _state(warehouse) == before


def test_dbt_build_passes_on_the_loaded_lake(warehouse, dbt_env):
    output = run_periscope(dbt_env, "dbt", "build")
    assert "assert_lake_and_marts_reconcile" in output
    assert "ERROR=0" in output and "PASS=" in output
    counts = {fact: _query(warehouse, f"select count(*) from marts.{fact}")[0][0] for fact in FACTS}
    assert all(n > 0 for n in counts.values()), counts
    # Weather's and air quality's entities are stations; their ids are the lake's station ids.
    entities = _query(
        warehouse, "select source, entity_label, count(*) from marts.dim_entity group by 1, 2"
    )
    zones = _query(warehouse, "select count(distinct pu_location_id) from lake.taxi_observations")[
        0
    ][0]
    assert sorted(entities) == [
        ("air_quality", "station", 1),
        ("taxi", "zone", zones),
        ("weather", "station", 2),
    ]
    # Every window's aggregates are rows of fct_feature_value (30 for weather: 5 measures x 6).
    [(per_window,)] = _query(
        warehouse,
        "select distinct count(*) from marts.fct_feature_value where source = 'weather' "
        "group by feature_window_key",
    )
    assert per_window == len(get_contract("weather").feature_columns())


def test_dim_zone_holds_every_tlc_zone_and_its_entity(warehouse):
    assert _query(
        warehouse, "select count(*), count(distinct location_id) from marts.dim_zone"
    ) == [(265, 265)]
    assert _query(
        warehouse,
        "select borough, zone_name, service_zone from marts.dim_zone where location_id = '132'",
    ) == [("Queens", "JFK Airport", "Airports")]
    # A taxi entity is a pickup zone: the zones with trips are dim_entity's taxi rows.
    assert _query(
        warehouse,
        "select count(*) from marts.dim_zone z join marts.dim_entity e using (entity_key) "
        "where e.source = 'taxi' and e.entity_id = z.location_id",
    ) == _query(warehouse, "select count(*) from marts.dim_entity where source = 'taxi'")


def test_fct_trip_has_every_trip_with_its_actual_and_predicted_duration_and_fare(lake, warehouse):
    trips = read_delta(lake.delta_path("silver/taxi_observations")).to_pandas()
    events = read_delta(lake.delta_path("gold/taxi_trip_predictions")).to_pandas()
    rows = _query(
        warehouse,
        "select t.trip_id, t.actual_duration_min, t.actual_fare_amount, "
        "t.predicted_duration_min, t.predicted_fare_amount, t.duration_error, t.fare_error, "
        "t.model_version, m.kind, p.location_id, d.location_id, h.hour_key = "
        "extract(hour from t.pickup_time at time zone 'UTC') "
        "from marts.fct_trip t join marts.dim_zone p on t.pickup_zone_key = p.zone_key "
        "join marts.dim_zone d on t.dropoff_zone_key = d.zone_key "
        "join marts.dim_hour h on t.pickup_hour_key = h.hour_key "
        "left join marts.dim_model m using (model_key)",
    )
    assert len(rows) == len(trips) == lake.taxi_trips
    by_id = trips.set_index("trip_id")
    scored = set(events["trip_id"])
    for (
        trip_id,
        duration,
        fare,
        p_duration,
        p_fare,
        d_err,
        f_err,
        version,
        kind,
        pu,
        do,
        hour,
    ) in rows:
        trip = by_id.loc[trip_id]
        assert (duration, fare, pu, do, hour) == (
            trip["duration_min"],
            trip["fare_amount"],
            trip["pu_location_id"],
            trip["do_location_id"],
            True,
        )
        if trip_id in scored:  # the stand-in predicts 1 minute and 1 USD above the actual
            assert (p_duration, p_fare, version, kind) == (duration + 1, fare + 1, 3, "event")
            assert (round(d_err, 9), round(f_err, 9)) == (1.0, 1.0)
        else:  # not scored yet: null predictions, no model
            assert (p_duration, p_fare, d_err, f_err, version, kind) == (None,) * 6


def test_zone_demand_forecasts_are_judged_against_the_zones_hourly_trips(lake, warehouse):
    zone, window_start = lake.taxi_demand
    origin = window_start + timedelta(minutes=15)
    trips = read_delta(lake.delta_path("silver/taxi_observations")).to_pandas()
    hourly = (
        trips[trips["pu_location_id"] == zone].groupby(trips["event_time"].dt.floor("h")).size()
    )
    accuracy = _query(
        warehouse,
        "select a.target_time, a.actual, a.method, m.measure from marts.fct_forecast_accuracy a "
        "join marts.dim_measure m using (measure_key) where a.source = 'taxi' order by 1",
    )
    assert len(accuracy) > 0
    # One row per forecast hour the zone had trips in (an hour without a trip has no actual).
    assert [(t, actual) for t, actual, _, _ in accuracy] == [
        (t.to_pydatetime(), float(n)) for t, n in hourly.items() if t > origin
    ]
    assert {(method, measure) for _, _, method, measure in accuracy} == {
        ("seasonal_naive", "event_count")
    }


def test_the_forecast_method_and_anomaly_kind_reach_the_marts(warehouse):
    assert _query(
        warehouse, "select distinct method from marts.fct_forecast where source = 'weather'"
    ) == [("persistence",)]
    assert _query(
        warehouse,
        "select distinct method from marts.fct_forecast_accuracy where source = 'weather'",
    ) == [("persistence",)]
    kinds = _query(
        warehouse,
        "select is_anomaly, anomaly_kind, count(*) from marts.fct_anomaly "
        "where source = 'weather' and is_anomaly is not null group by 1, 2 order by 1",
    )
    assert [(flag, kind) for flag, kind, _ in kinds] == [(False, None), (True, "residual")]


@pytest.fixture(scope="module")
def first_marts(warehouse):
    """The facts after the first dbt build: key -> loaded_at."""
    return {
        fact: dict(
            _query(
                warehouse,
                f"select {'forecast_key' if fact.startswith('fct_forecast') else _key(fact)}, "
                f"loaded_at from marts.{fact}",
            )
        )
        for fact in FACTS
    }


def _key(fact: str) -> str:
    return {
        "fct_trip": "trip_key",
        "fct_observation_hourly": "observation_hourly_key",
        "fct_feature_window": "feature_window_key",
        "fct_feature_value": "feature_value_key",
        "fct_anomaly": "anomaly_key",
    }[fact]


def test_new_silver_and_a_rescored_window_load_exactly_once_even_after_a_crash(
    lake, warehouse, first_marts
):
    versions = {
        s.name: DeltaTable(lake.delta_path(s.delta_table)).version() for s in table_specs(SOURCES)
    }
    files_before = {
        s.name: set(DeltaTable(lake.delta_path(s.delta_table)).file_uris())
        for s in table_specs(SOURCES)
    }
    # One more day of weather: new observations, new windows and re-computed (MERGEd) ones.
    lake.silver_days("weather", FIRST_DAYS, 1, batch_id=1)
    # Re-score one gold window: a MERGE rewrites it with a new score and two horizons only.
    gold_path = lake.delta_path("gold/weather_predictions")
    gold = read_delta(gold_path)
    row = gold.slice(0, 1).to_pylist()[0]
    row.update(anomaly_score=99.0, is_anomaly=True, forecasts=row["forecasts"][:2])
    DeltaTable(gold_path).merge(
        pa.Table.from_pylist([row], schema=gold_schema()),
        "t.station_id = s.station_id and t.window_start = s.window_start",
        source_alias="s",
        target_alias="t",
    ).when_matched_update_all().execute()

    class Crash(Exception):
        pass

    def crash_at_features(spec):
        if spec.name == "weather_features":
            raise Crash

    state = _state(warehouse)
    with pytest.raises(Crash):
        load_tables(lake.settings, table_specs(["weather"]), before_upsert=crash_at_features)
    after_crash = _state(warehouse)
    # The table before the crash committed; the crashed one shows its previous load, whole.
    assert after_crash["weather_observations"][0] > state["weather_observations"][0]
    assert after_crash["weather_features"] == state["weather_features"]
    assert after_crash["weather_predictions"] == state["weather_predictions"]
    assert (
        _query(warehouse, "select count(*) from lake.weather_features")[0][0]
        == (state["weather_features"][2])
    )

    results = {r.table: r for r in load_tables(lake.settings, table_specs(["weather"]))}
    assert results["weather_observations"].status == "up to date"
    for name in ("weather_features", "weather_predictions"):
        result = results[name]
        path = lake.delta_path(f"{'gold' if 'pred' in name else 'silver'}/{name}")
        table = DeltaTable(path)
        new_files = set(table.file_uris()) - files_before[name]
        actions = table.get_add_actions(flatten=True)
        new_rows = sum(
            n
            for p, n in zip(
                actions.column("path").to_pylist(),
                actions.column("num_records").to_pylist(),
                strict=True,
            )
            if f"{path}/{p}" in new_files
        )
        assert (result.mode, result.from_version, result.to_version) == (
            "incremental",
            versions[name],
            table.version(),
        )
        # Exactly the rows of the files added since the last load, and the table matches Delta.
        # (Spark's MERGE rewrote the one small features file whole; gold has a file per station.)
        assert result.rows_loaded == new_rows
        assert result.lake_rows == delta_row_count(path)
        # Of the copied rows only those whose values changed are rewritten in Postgres.
        assert 0 < result.rows_changed <= new_rows
        assert (
            _query(
                warehouse,
                f"select count(*) from lake.{name} where _delta_version = %s",
                (table.version(),),
            )[0][0]
            == result.rows_changed
        )
        if name == "weather_predictions":
            assert result.rows_changed == 1 < new_rows < delta_row_count(path)

    [(score, forecasts)] = _query(
        warehouse,
        "select p.anomaly_score, (select count(*) from lake.weather_forecasts f "
        "  where f.station_id = p.station_id and f.window_start = p.window_start) "
        "from lake.weather_predictions p where station_id = %s and window_start = %s",
        (row["station_id"], row["window_start"]),
    )
    assert (score, forecasts) == (99.0, 2)
    assert _query(warehouse, "select count(*) from lake.weather_forecasts")[0][0] == (
        _forecasts_in_delta(gold_path)
    )


def test_a_second_dbt_build_adds_only_the_new_fact_rows(warehouse, dbt_env, first_marts):
    run_periscope(dbt_env, "dbt", "build")
    last_run = max(max(rows.values()) for rows in first_marts.values())
    for fact, before in first_marts.items():
        key = "forecast_key" if fact.startswith("fct_forecast") else _key(fact)
        after = dict(_query(warehouse, f"select {key}, loaded_at from marts.{fact}"))
        kept = {k: v for k, v in after.items() if v <= last_run}
        # Rows of the first build that no new load touched are the very same rows ...
        assert kept.items() <= before.items(), fact
        # ... and every other row came from the load after it.
        assert all(v > last_run for k, v in after.items() if k not in kept), fact
        changed = {k for k, v in after.items() if v > last_run}
        if fact in ("fct_observation_hourly", "fct_feature_window", "fct_feature_value"):
            assert len(after) > len(before), fact
        elif fact == "fct_anomaly":  # gold re-scored one window
            assert (len(after), len(changed)) == (len(before), 1)  # a day more of silver above
        elif fact == "fct_forecast":  # ... and it kept two of its three forecasts
            assert (len(after), len(changed)) == (len(before) - 1, 2)
    # The re-scored window's anomaly and its two remaining forecasts.
    [(status, forecasts)] = _query(
        warehouse,
        "select a.anomaly_status, (select count(*) from marts.fct_forecast f "
        "  where f.entity_key = a.entity_key and f.window_start = a.window_start) "
        "from marts.fct_anomaly a where a.anomaly_score = 99",
    )
    assert (status, forecasts) == ("anomaly", 2)
    # Its dropped horizon left no stale row in the accuracy fact either.
    assert _query(
        warehouse,
        "select count(*) from marts.fct_forecast_accuracy f join marts.fct_anomaly a "
        "on f.entity_key = a.entity_key and f.window_start = a.window_start "
        "where a.anomaly_score = 99 and f.horizon_h = 3",
    ) == [(0,)]
    # The incremental facts hold what a full rebuild would: the accuracy fact also has the
    # first days' forecasts whose target hours only the new day's readings observed.
    for fact, view in (
        ("fct_forecast", "int_forecasts_unioned"),
        ("fct_forecast_accuracy", "int_forecasts_joined_to_actuals"),
    ):
        [(in_fact, in_view)] = _query(
            warehouse,
            f"select (select count(*) from marts.{fact}), "
            f"(select count(*) from intermediate.{view})",
        )
        assert in_fact == in_view, fact
    [(late,)] = _query(
        warehouse,
        "select count(*) from marts.fct_forecast_accuracy a where a.loaded_at > %s "
        "and not exists (select 1 from marts.fct_forecast f where f.loaded_at > %s "
        "and f.entity_key = a.entity_key and f.window_start = a.window_start)",
        (last_run, last_run),
    )
    assert late > 0  # forecasts not loaded again, whose error the new readings made known


def test_dbt_docs_generate(dbt_env):
    run_periscope(dbt_env, "dbt", "docs")
    assert (Path(dbt_env["DBT_TARGET_PATH"]) / "catalog.json").is_file()


def test_bi_reader_reads_the_marts_and_nothing_else(warehouse):
    rows = _query(warehouse, "select count(*) from marts.fct_forecast_accuracy", role="bi")
    assert rows[0][0] > 0
    conn = psycopg2.connect(warehouse.postgres_dsn("bi"))
    try:
        for statement, error in (
            ("select count(*) from lake.weather_observations", errors.InsufficientPrivilege),
            ("select count(*) from lake._load_state", errors.InsufficientPrivilege),
            (
                "select count(*) from staging.stg_weather__observations",
                errors.InsufficientPrivilege,
            ),
            ("delete from marts.dim_hour", errors.ReadOnlySqlTransaction),
            ("create table marts.bi_was_here (x int)", errors.ReadOnlySqlTransaction),
        ):
            with conn.cursor() as cur, pytest.raises(error):
                cur.execute(statement)
            conn.rollback()
        # Without the read-only default, privileges still refuse every write.
        with conn.cursor() as cur:
            cur.execute("set default_transaction_read_only = off")
            conn.commit()
            for statement in (
                "delete from marts.dim_hour",
                "create table marts.bi_was_here (x int)",
                "insert into lake.weather_observations (station_id) values ('x')",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(statement)
                conn.rollback()
    finally:
        conn.close()


# --- a source of another shape, registered at run time ------------------------------------------
TOY = SourceContract(
    name="toy_trips",
    description="toy taxi trips: a zone key, a trip id, a category and counts",
    fields=(
        Text("zone", "pick-up zone", required=True),
        Text("trip_id", "trip id", required=True),
        Measure("fare", "USD", 0, 500, "fare"),
        Count("passengers", "riders", valid_max=8),
        Category("payment", "how paid", levels=("card", "cash")),
    ),
    key_field="zone",
    event_id_field="trip_id",
    entity_label="zone",
    window=WindowSpec(
        size="1 hour",
        slide="1 hour",
        aggregations=(
            Aggregation("fare", "sum"),
            Aggregation("payment", "category_counts"),
            Aggregation("trip_id", "count"),
        ),
    ),
    forecast_targets=(ForecastTarget(None, "count"), ForecastTarget("fare", "sum")),
)


def _write_toy_lake(settings) -> None:
    """Silver and gold of TOY as its contract shapes them: two trips in one zone at the same
    instant (an event id tells them apart), one window, one scored window with forecasts."""
    t0 = datetime(2024, 3, 1, 10, tzinfo=UTC)
    observations = pa.table(
        {
            "zone": ["132", "132", "7"],
            "event_time": [t0, t0, t0 + timedelta(minutes=5)],
            "trip_id": ["a", "b", "c"],
            "fare": [10.0, None, 30.0],
            "passengers": pa.array([1, 2, None], pa.int64()),
            "payment": ["card", "cash", "card"],
        }
    )
    features = pa.table(
        {
            "zone": ["132", "7"],
            "window_start": [t0, t0],
            "window_end": [t0 + timedelta(hours=1)] * 2,
            "reading_count": pa.array([2, 1], pa.int64()),
            **{
                name: pa.array(values, pa.float64() if kind == "double" else pa.int64())
                for (name, kind), values in zip(
                    TOY.feature_columns(), ([10.0, 30.0], [1, 1], [1, 0], [2, 1]), strict=True
                )
            },
        }
    )
    forecasts = [
        {
            "measure": series,
            "horizon_h": 1,
            "target_time": t0,  # an hour the lake has records of: the forecasts have actuals
            "yhat": 1.0,
            "yhat_lower": 0.0,
            "yhat_upper": 2.0,
        }
        for series in TOY.forecast_names
    ]
    # Gold as it was before forecasts named their method and rows their anomaly kind.
    schema = gold_schema("zone")
    item = schema.field("forecasts").type.value_type
    old_schema = schema.remove(schema.get_field_index("anomaly_kind")).set(
        schema.get_field_index("forecasts") - 1,
        pa.field("forecasts", pa.list_(pa.struct([f for f in item if f.name != "method"]))),
    )
    gold = pa.Table.from_pylist(
        [
            {
                "zone": "132",
                "window_start": t0,
                "window_end": t0 + timedelta(hours=1),
                "forecast_origin": t0,
                "forecasts": forecasts,
                "forecast_model": "toy_trips_forecast",
                "forecast_version": 1,
                "scored_at": t0,
            }
        ],
        schema=old_schema,
    )
    for table, data in (
        ("silver/toy_trips_observations", observations),
        ("silver/toy_trips_features", features),
        ("gold/toy_trips_predictions", gold),
    ):
        write_deltalake(settings.lake_path(table), data, mode="overwrite")


def test_a_source_registered_at_run_time_is_loaded_and_modelled(
    lake, warehouse, tmp_path, monkeypatch
):
    """No file of the project names the toy source: its keys, staging models, seeds and the
    marts' facts all come from the contract registered here."""
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    before = dict(CONTRACTS)
    CONTRACTS[TOY.name] = TOY
    try:
        _write_toy_lake(lake.settings)
        results = load_tables(lake.settings, table_specs(["toy_trips"]))
        assert [r.status for r in results] == ["loaded"] * 3
        # Two trips of one zone at one instant are two rows: observations are keyed by trip_id.
        assert _query(warehouse, "select count(*) from lake.toy_trips_observations") == [(3,)]
        assert _query(warehouse, "select count(*) from lake.toy_trips_forecasts") == [(2,)]

        assert run_dbt(lake.settings, ["build"]) == 0
        zones = _query(
            warehouse,
            "select entity_id, entity_label from marts.dim_entity where source = 'toy_trips' "
            "order by 1",
        )
        assert zones == [("132", "zone"), ("7", "zone")]
        # fare and passengers are readings (the category stays in the lake): 2 + 2 non-null.
        assert _query(
            warehouse,
            "select sum(reading_count) from marts.fct_observation_hourly where source = 'toy_trips'",
        ) == [(4,)]
        values = _query(
            warehouse,
            "select feature, statistic, value from marts.fct_feature_value "
            "where source = 'toy_trips' and window_start is not null and feature_window_key in "
            "(select feature_window_key from marts.fct_feature_window w join marts.dim_entity e "
            "using (entity_key) where e.entity_id = '132') order by feature",
        )
        assert values == [
            ("fare_sum", "sum", 10.0),
            ("payment_card_count", "card_count", 1.0),
            ("payment_cash_count", "cash_count", 1.0),
            ("trip_id_count", "count", 2.0),
        ]
        series = _query(
            warehouse,
            "select measure, kind, aggregate from marts.dim_measure where source = 'toy_trips' "
            "and is_forecast_target order by 1",
        )
        assert series == [("event_count", "forecast", "count"), ("fare_sum", "forecast", "sum")]
        assert _query(
            warehouse, "select count(*) from marts.fct_forecast where source = 'toy_trips'"
        ) == [(2,)]
        # Each series is judged against its own hourly aggregate: the trips of zone 132 in the
        # hour (two, at one instant) and the sum of their fares (one fare is missing).
        accuracy = _query(
            warehouse,
            "select m.measure, a.actual from marts.fct_forecast_accuracy a "
            "join marts.dim_measure m using (measure_key) where a.source = 'toy_trips' order by 1",
        )
        assert accuracy == [("event_count", 2.0), ("fare_sum", 10.0)]
        # A lake older than the forecast method and anomaly kind: null in the marts.
        assert _query(
            warehouse,
            "select count(*), count(method) from marts.fct_forecast where source = 'toy_trips'",
        ) == [(2, 0)]
        assert _query(
            warehouse,
            "select count(*), count(anomaly_kind) from marts.fct_anomaly where source = 'toy_trips'",
        ) == [(1, 0)]
    finally:
        CONTRACTS.clear()
        CONTRACTS.update(before)
        sync_project()  # the toy's generated files go again
