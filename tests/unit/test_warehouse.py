"""The loader's pure parts (tables, plans, flattening, SQL) and the dbt project's static facts."""

from __future__ import annotations

import csv
import doctest
import io
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

from periscope.contracts import (
    CONTRACTS,
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
from warehouse import dbt_models, ddl, plan
from warehouse.dbt import DBT_PROJECT_DIR, ZONE_LOOKUP, dbt_command, dbt_env, sync_project
from warehouse.plan import (
    TableSpec,
    flatten_forecasts,
    forecast_counts,
    loadable_columns,
    plan_load,
    table_specs,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# A source of another shape: a string key that is not station_id, an event id, a category and
# counts; its windows count and sum, its forecaster predicts hourly trip counts.
TOY = SourceContract(
    name="toy_trips",
    description="toy taxi trips",
    fields=(
        Text("zone", "pick-up zone", required=True),
        Text("trip_id", "trip id", required=True),
        Measure("fare", "USD", 0, 500, "fare"),
        Count("passengers", "riders", valid_max=8),
        Category("payment", "how paid", levels=("card", "Cash")),
    ),
    key_field="zone",
    event_id_field="trip_id",
    entity_label="zone",
    window=WindowSpec(
        aggregations=(
            Aggregation("fare", "stats"),
            Aggregation("fare", "sum"),
            Aggregation("passengers", "sum"),
            Aggregation("payment", "category_counts"),
            Aggregation("trip_id", "count"),
        )
    ),
    forecast_targets=(ForecastTarget(None, "count"), ForecastTarget("fare", "sum")),
)


@pytest.fixture
def toy_registered():
    """TOY in the registry for one test (the registry is global: put it back as it was)."""
    before = dict(CONTRACTS)
    CONTRACTS[TOY.name] = TOY
    yield TOY
    CONTRACTS.clear()
    CONTRACTS.update(before)


def _gold_schema(contract: SourceContract) -> pa.Schema:
    """Gold's schema for a contract, with the contract's key column."""
    from ml.gold import gold_schema

    return gold_schema(contract.key_field)


@pytest.mark.parametrize("module", [plan, ddl, dbt_models])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# --- tables --------------------------------------------------------------------------------
def test_table_specs_name_the_delta_tables_and_keys():
    specs = {s.name: s for s in table_specs()}
    assert set(specs) == {
        f"{s}_{plan.table_entity(c, e)}"
        for s, c in CONTRACTS.items()
        for e in plan.ENTITIES
        if plan.has_entity(c, e)
    }
    # Only a contract that names event predictions has the speed layer's table.
    assert "weather_event_predictions" not in specs
    events = specs["taxi_trip_predictions"]  # named by the contract's event
    assert (events.delta_table, events.key, events.forecasts_table) == (
        "gold/taxi_trip_predictions",
        ("trip_id",),
        None,
    )
    assert specs["weather_observations"].delta_table == "silver/weather_observations"
    assert specs["weather_observations"].key == ("station_id", "event_time")
    assert specs["air_quality_features"].key == ("station_id", "window_start")
    gold = specs["weather_predictions"]
    assert (gold.delta_table, gold.forecasts_table) == (
        "gold/weather_predictions",
        "weather_forecasts",
    )
    assert specs["weather_features"].forecasts_table is None
    assert gold.key == ("station_id", "window_start")
    assert gold.forecast_key == ("station_id", "window_start", "measure", "horizon_h")


def test_keys_come_from_the_contract():
    """A contract with an event id: observations are unique per event, windows per key."""
    assert plan.table_key(TOY, "observations") == ("trip_id",)
    assert plan.table_key(TOY, "features") == ("zone", "window_start")
    assert plan.table_key(TOY, "predictions") == ("zone", "window_start")
    assert plan.forecast_key(TOY) == ("zone", "window_start", "measure", "horizon_h")
    assert plan.forecast_columns(TOY)[:3] == ("zone", "window_start", "measure")


def test_a_source_registered_at_run_time_is_loadable(toy_registered):
    specs = {s.name: s for s in table_specs(["toy_trips"])}
    assert specs["toy_trips_observations"].key == ("trip_id",)
    assert specs["toy_trips_predictions"].forecast_key[0] == "zone"
    assert TableSpec("toy_trips", "features").contract is TOY


def test_table_specs_choose_and_reject():
    assert [s.name for s in table_specs(["air_quality"], ["predictions", "observations"])] == [
        "air_quality_observations",
        "air_quality_predictions",
    ]
    with pytest.raises(ValueError, match="unknown source"):
        table_specs(["flights"])
    with pytest.raises(ValueError, match="unknown table"):
        table_specs(None, ["raw"])


def test_tables_are_chosen_by_the_names_the_contract_gives_them():
    assert [s.name for s in table_specs(None, ["trip_predictions"])] == ["taxi_trip_predictions"]
    # The generic entity still picks every speed layer, with a note naming the table to use.
    assert [s.name for s in table_specs(None, ["event_predictions"])] == ["taxi_trip_predictions"]
    assert "use --table trip_predictions (taxi)" in str(
        plan.generic_table_note(None, ["event_predictions"])
    )
    assert plan.generic_table_note(["weather"], ["event_predictions"]) is None
    assert plan.generic_table_note(None, ["trip_predictions"]) is None
    # A name only another source has is unknown for the chosen ones, and the error lists them.
    with pytest.raises(ValueError, match="'trip_predictions'; known: features, observations, "):
        table_specs(["weather"], ["trip_predictions"])
    with pytest.raises(ValueError, match="known: .*trip_predictions"):
        table_specs(None, ["taxi_trip_predictions"])


def test_old_speed_layer_names_are_found_as_orphans():
    contracts = list(CONTRACTS.values())
    found = plan.orphans(contracts, ["taxi_event_predictions", "weather_event_predictions", "x"])
    assert found == [
        plan.Orphan(
            "taxi_event_predictions", "taxi_trip_predictions", "gold/taxi_event_predictions"
        )
    ]
    assert plan.orphans(contracts, ["taxi_trip_predictions", "weather_features"]) == []
    [orphan] = found
    warning = plan.orphan_warning(
        orphan, table=True, state_row=True, delta_path="/lake/gold/taxi_event_predictions",
        dropped=False,
    )  # fmt: skip
    assert "Found: lake.taxi_event_predictions, its row in lake._load_state, /lake/gold/" in warning
    assert "drop table if exists lake.taxi_event_predictions cascade" in warning
    assert "--drop-orphans" in warning and "rm -r /lake/gold/taxi_event_predictions" in warning
    only_delta = plan.orphan_warning(
        orphan, table=False, state_row=False, delta_path="/lake/gold/x", dropped=False
    )
    assert "drop table" not in only_delta and "rm -r /lake/gold/x" in only_delta
    dropped = plan.orphan_warning(
        orphan, table=True, state_row=False, delta_path=None, dropped=True
    )
    assert dropped.startswith("dropped lake.taxi_event_predictions: left from before")


# --- plans ---------------------------------------------------------------------------------
def test_first_load_is_full():
    p = plan_load(
        loaded_version=None, current_version=4, current_files=["b", "a"], loaded_files=None
    )
    assert (p.mode, p.from_version, p.to_version, p.files) == ("full", None, 4, ("a", "b"))


def test_nothing_to_do_at_the_loaded_version():
    p = plan_load(loaded_version=4, current_version=4, current_files=["a"], loaded_files=["a"])
    assert (p.mode, p.files) == ("none", ())


def test_incremental_takes_only_files_added_since_the_loaded_version():
    # A MERGE removed "b" and added "b2" (its rewrite) and "c"; "a" was untouched.
    p = plan_load(
        loaded_version=4,
        current_version=6,
        current_files=["a", "b2", "c"],
        loaded_files=["a", "b"],
    )
    assert (p.mode, p.from_version, p.to_version, p.files) == ("incremental", 4, 6, ("b2", "c"))


def test_a_metadata_only_commit_is_an_empty_incremental_load():
    p = plan_load(loaded_version=4, current_version=5, current_files=["a"], loaded_files=["a"])
    assert (p.mode, p.files) == ("incremental", ())


@pytest.mark.parametrize(
    ("loaded_version", "loaded_files", "full", "reason"),
    [
        (2, None, False, "version 2 is gone"),
        (9, ["a"], False, "Delta version went backwards"),
        (2, ["a"], True, "requested"),
    ],
)
def test_full_reload_when_the_old_version_cannot_be_used(
    loaded_version, loaded_files, full, reason
):
    p = plan_load(
        loaded_version=loaded_version,
        current_version=5,
        current_files=["a", "b"],
        loaded_files=loaded_files,
        full=full,
    )
    assert (p.mode, p.files, p.reason) == ("full", ("a", "b"), reason)


# --- gold rows -----------------------------------------------------------------------------
def _gold(contract: SourceContract | None = None) -> pa.Table:
    contract = contract or get_contract("weather")
    key = contract.key_field

    def forecasts(n: int) -> list[dict]:
        return [
            {
                "measure": m,
                "horizon_h": h,
                "target_time": T0 + timedelta(hours=h),
                "yhat": float(h),
                "yhat_lower": h - 1.0,
                "yhat_upper": h + 1.0,
            }
            for m in ("temperature", "humidity")
            for h in range(1, n + 1)
        ]

    rows = [
        {key: "a", "window_start": T0, "forecasts": forecasts(2)},
        {key: "b", "window_start": T0, "forecasts": []},
        {key: "c", "window_start": T0 + timedelta(hours=1), "forecasts": forecasts(1)},
    ]
    common = {
        "window_end": T0 + timedelta(hours=3),
        "forecast_origin": T0 + timedelta(hours=2),
        "scored_at": T0,
    }
    return pa.Table.from_pylist([{**common, **r} for r in rows], schema=_gold_schema(contract))


def test_flatten_forecasts_gives_one_row_per_forecast_with_its_window():
    flat = flatten_forecasts(_gold(), "station_id")
    assert flat.column_names == list(plan.forecast_columns(get_contract("weather")))
    assert flat.num_rows == 4 + 0 + 2
    rows = flat.to_pylist()
    assert [(r["station_id"], r["measure"], r["horizon_h"]) for r in rows] == [
        ("a", "temperature", 1),
        ("a", "temperature", 2),
        ("a", "humidity", 1),
        ("a", "humidity", 2),
        ("c", "temperature", 1),
        ("c", "humidity", 1),
    ]
    assert rows[-1]["window_start"] == T0 + timedelta(hours=1)
    assert rows[1]["target_time"] == T0 + timedelta(hours=2)
    assert forecast_counts(_gold()).to_pylist() == [4, 0, 2]


def test_flatten_forecasts_carry_the_method_and_null_where_gold_predates_it():
    gold = _gold()
    assert set(flatten_forecasts(gold, "station_id").column("method").to_pylist()) == {None}
    with_method = pa.Table.from_pylist(
        [
            {**row, "forecasts": [{**f, "method": "prophet"} for f in row["forecasts"]]}
            for row in gold.to_pylist()
        ],
        schema=gold.schema,
    )
    assert flatten_forecasts(with_method, "station_id").column("method").to_pylist() == (
        ["prophet"] * 6
    )
    # A gold table written before forecasts had a method at all: the column is there, null.
    item = gold.schema.field("forecasts").type.value_type
    old_item = pa.struct([f for f in item if f.name != "method"])
    old = pa.Table.from_pylist(
        [
            {
                **r,
                "forecasts": [
                    {k: v for k, v in f.items() if k != "method"} for f in r["forecasts"]
                ],
            }
            for r in gold.to_pylist()
        ],
        schema=gold.schema.set(
            gold.schema.get_field_index("forecasts"), pa.field("forecasts", pa.list_(old_item))
        ),
    )
    flat = flatten_forecasts(old, "station_id")
    assert flat.column_names == list(plan.forecast_columns(get_contract("weather")))
    assert flat.schema.field("method").type == pa.string()
    assert flat.column("method").null_count == flat.num_rows == 6


def test_flatten_forecasts_keeps_the_contracts_key():
    flat = flatten_forecasts(_gold(TOY), "zone")
    assert flat.column_names == list(plan.forecast_columns(TOY))
    assert flat.column("zone").to_pylist() == ["a"] * 4 + ["c"] * 2


def test_flatten_forecasts_of_no_rows_keeps_the_types():
    flat = flatten_forecasts(_gold_schema(get_contract("weather")).empty_table(), "station_id")
    assert flat.num_rows == 0
    assert flat.schema.field("horizon_h").type == pa.int32()
    assert flat.schema.field("target_time").type == pa.timestamp("us", tz="UTC")


def test_loadable_columns_leave_out_lists_and_binary():
    gold = _gold_schema(get_contract("weather"))
    assert loadable_columns(gold) == [c for c in gold.names if c != "forecasts"]
    schema = pa.schema(
        [("k", pa.string()), ("raw", pa.binary()), ("s", pa.struct([("x", pa.int8())]))]
    )
    assert loadable_columns(schema) == ["k"]


# --- SQL -----------------------------------------------------------------------------------
def test_pg_types():
    assert ddl.pg_type(pa.string()) == "text"
    assert ddl.pg_type(pa.timestamp("us")) == "timestamp"
    assert ddl.pg_type(pa.int32()) == "integer"
    assert ddl.pg_type(pa.int64()) == "bigint"
    assert ddl.pg_type(pa.bool_()) == "boolean"
    assert ddl.pg_type(pa.date32()) == "date"
    with pytest.raises(ValueError, match="no Postgres type"):
        ddl.pg_type(pa.list_(pa.int8()))


def test_create_table_has_the_key_as_primary_key_and_bookkeeping_columns():
    statement = ddl.create_table_sql(
        "weather_features",
        [("station_id", "text"), ("window_start", "timestamptz")],
        ("station_id", "window_start"),
    )
    assert statement == (
        'create table if not exists "lake"."weather_features" ("station_id" text, '
        '"window_start" timestamptz, "_delta_version" bigint not null, '
        '"_loaded_at" timestamptz not null, primary key ("station_id", "window_start"))'
    )


def test_upsert_replaces_only_rows_whose_values_changed():
    statement = ddl.upsert_sql("t", "_stage", ["k", "v", "w"], ("k",))
    assert statement == (
        'insert into "lake"."t" as t ("k", "v", "w", "_delta_version", "_loaded_at") '
        'select "k", "v", "w", %(version)s, %(loaded_at)s from "_stage" '
        'on conflict ("k") do update set "v" = excluded."v", "w" = excluded."w", '
        '"_delta_version" = excluded."_delta_version", "_loaded_at" = excluded."_loaded_at" '
        'where (row(t."v", t."w") is distinct from row(excluded."v", excluded."w"))'
    )


def test_children_the_staged_parents_no_longer_have_are_deleted():
    statement = ddl.delete_missing_children_sql(
        "f", "_stage", ("station_id",), "_stage_f", ("station_id", "h")
    )
    assert statement == (
        'delete from "lake"."f" as t using "_stage" as s where t."station_id" = s."station_id" '
        'and not exists (select from "_stage_f" as c '
        'where c."station_id" = t."station_id" and c."h" = t."h")'
    )


def test_state_upsert_names_every_control_column():
    statement = ddl.upsert_state_sql()
    for column in (
        "delta_version",
        "delta_rows",
        "lake_rows",
        "rows_loaded",
        "rows_changed",
        "mode",
        "loaded_at",
    ):
        assert f"%({column})s" in statement and f"{column} = excluded.{column}" in statement
    assert "delta_version bigint not null" in ddl.create_state_sql()


def test_pyarrow_csv_is_what_postgres_copy_expects():
    """Nulls unquoted and empty, empty strings quoted: Postgres' CSV tells them apart."""
    table = pa.table({"s": ["", None, 'say "hi"'], "t": [T0, None, T0]})
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    lines = buffer.getvalue().decode().splitlines()
    assert lines[1:] == [
        '"",2024-01-01 00:00:00.000000Z',
        ",",
        '"say ""hi""",2024-01-01 00:00:00.000000Z',
    ]


# --- dbt -----------------------------------------------------------------------------------
def test_dbt_runs_on_the_project_with_the_settings_connection():
    from periscope.settings import Settings

    settings = Settings(postgres_port=6543)  # type: ignore[call-arg]
    env = dbt_env(settings, base={"PATH": "/bin"})
    assert env["PERISCOPE_POSTGRES_PORT"] == "6543"
    assert env["PERISCOPE_POSTGRES_OWNER_PASSWORD"] == "owner-secret"
    assert env["PATH"] == "/bin"
    command = dbt_command(["docs", "generate"], executable="dbt")
    assert command[:3] == ["dbt", "docs", "generate"]
    assert command[3:] == [
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
    ]


def test_sync_writes_exactly_the_registered_contracts_files(tmp_path, toy_registered):
    stale = tmp_path / "models" / "staging" / "generated" / "stg_gone__observations.sql"
    stale.parent.mkdir(parents=True)
    stale.write_text("select 1")
    data_dir = tmp_path / "data"
    (data_dir / ZONE_LOOKUP).parent.mkdir(parents=True)
    (data_dir / ZONE_LOOKUP).write_text(
        '"LocationID","Borough","Zone","service_zone"\n7,"Queens","Astoria","Boro Zone"\n'
    )
    first = sync_project(project_dir=tmp_path, data_dir=data_dir)
    assert first.removed == ["models/staging/generated/stg_gone__observations.sql"]
    wanted = dbt_models.generated_files(CONTRACTS.values(), (data_dir / ZONE_LOOKUP).read_text())
    assert wanted["seeds/generated/taxi_zones.csv"] == (
        "location_id,borough,zone_name,service_zone\n7,Queens,Astoria,Boro Zone\n"
    )
    on_disk = {
        p.relative_to(tmp_path).as_posix(): p.read_text()
        for folder in dbt_models.GENERATED_DIRS
        for p in (tmp_path / folder).rglob("*")
        if p.is_file()
    }
    assert on_disk == wanted
    for source in CONTRACTS:
        for entity in dbt_models.STAGING_ENTITIES:
            assert f"models/staging/generated/stg_{source}__{entity}.yml" in on_disk
    # A second sync changes nothing; dropping the toy source removes its files.
    assert sync_project(project_dir=tmp_path, data_dir=data_dir).written == []
    CONTRACTS.pop(TOY.name)
    removed = sync_project(project_dir=tmp_path, data_dir=data_dir).removed
    assert sorted(removed) == sorted(p for p in wanted if "toy_trips__" in p)


def test_staging_renames_the_contracts_key_to_entity_id():
    files = dbt_models.generated_files([TOY])
    observations = files["models/staging/generated/stg_toy_trips__observations.sql"]
    assert 'o."zone"::text as entity_id' in observations
    assert 'o."trip_id"::text as event_id' in observations
    # Numeric fields are unpivoted into readings; the category stays in the lake.
    assert "('fare', o.\"fare\"::double precision)" in observations
    assert "('passengers', o.\"passengers\"::double precision)" in observations
    assert "'payment'" not in observations
    events = files["models/staging/generated/stg_toy_trips__events.sql"]
    assert 'o."trip_id"::text as event_id' in events and "toy_trips_observations" in events
    values = files["models/staging/generated/stg_toy_trips__feature_values.sql"]
    assert "('payment_card_count', 'payment', 'card_count', f.\"payment_card_count\"" in values
    assert "('trip_id_count', 'trip_id', 'count', f.\"trip_id_count\"" in values
    assert not any("station_id" in text for text in files.values())
    sources = yaml.safe_load(files["models/staging/generated/_lake__sources.yml"])
    [lake] = sources["sources"]
    assert lake["config"]["freshness"]["error_after"] == {"count": 24, "period": "hour"}
    assert [t["name"] for t in lake["tables"]] == [
        "toy_trips_observations",
        "toy_trips_features",
        "toy_trips_predictions",
        "toy_trips_forecasts",
        "_load_state",
    ]


def test_event_predictions_are_staged_for_the_contracts_that_name_them():
    files = dbt_models.generated_files([get_contract("weather"), get_contract("taxi")])
    assert "models/staging/generated/stg_weather__event_predictions.sql" not in files
    assert "models/staging/generated/stg_taxi__event_predictions.sql" not in files
    sql = files["models/staging/generated/stg_taxi__trip_predictions.sql"]
    assert 'p."trip_id"::text as event_id' in sql and "taxi_trip_predictions" in sql
    for measure in get_contract("taxi").event_predictions:
        assert f'p."predicted_{measure}"::double precision as "predicted_{measure}"' in sql
    sources = yaml.safe_load(files["models/staging/generated/_lake__sources.yml"])
    names = [t["name"] for t in sources["sources"][0]["tables"]]
    assert "taxi_trip_predictions" in names and "weather_event_predictions" not in names
    # The gold columns added this session reach staging (null in lakes written before them).
    assert (
        "p.anomaly_kind::text as anomaly_kind"
        in files["models/staging/generated/stg_weather__predictions.sql"]
    )
    assert (
        "f.method::text as method" in files["models/staging/generated/stg_weather__forecasts.sql"]
    )
    macro = files["macros/generated/periscope_contracts.sql"]
    assert '"event_predictions": ["duration_min", "fare_amount"]' in macro
    assert '"event_predictions_entity": "trip_predictions"' in macro
    # Without the lookup file the zone seed is its header alone (dim_zone builds, empty).
    assert files["seeds/generated/taxi_zones.csv"] == "location_id,borough,zone_name,service_zone\n"


def test_the_fields_seed_lists_every_field_and_forecast_series():
    files = dbt_models.generated_files([get_contract("weather"), TOY])
    rows = list(csv.DictReader(io.StringIO(files["seeds/generated/periscope_fields.csv"])))
    by_name = {(r["source"], r["name"]): r for r in rows}
    assert len(by_name) == len(rows)  # (source, name) is the key of dim_measure
    weather = get_contract("weather")
    for m in weather.measures:
        row = by_name[("weather", m.name)]
        assert (row["kind"], row["unit"], float(row["valid_min"]), float(row["valid_max"])) == (
            "measure",
            m.unit,
            m.valid_min,
            m.valid_max,
        )
        assert row["is_forecast_target"] == str(m.name in weather.forecast_names).lower()
    assert by_name[("weather", "station_id")]["is_key"] == "true"
    assert by_name[("toy_trips", "payment")]["levels"] == "card|Cash"
    assert by_name[("toy_trips", "passengers")]["valid_max"] == "8.0"
    events = by_name[("toy_trips", "event_count")]
    assert (events["kind"], events["field"], events["aggregate"]) == ("forecast", "", "count")
    fares = by_name[("toy_trips", "fare_sum")]
    assert (fares["kind"], fares["field"], fares["aggregate"], fares["unit"]) == (
        "forecast",
        "fare",
        "sum",
        "USD",
    )
    sources = list(csv.DictReader(io.StringIO(files["seeds/generated/periscope_sources.csv"])))
    assert [(r["source"], r["entity_label"], r["event_id_field"]) for r in sources] == [
        ("weather", "station", ""),
        ("toy_trips", "zone", "trip_id"),
    ]
    macro = files["macros/generated/periscope_contracts.sql"]
    assert '"feature_count": 30' in macro and '"numeric_fields": ["fare", "passengers"]' in macro


def test_no_station_id_logic_in_the_hand_written_dbt_project():
    """Only the generated files (weather's, from its contract) may name station_id."""
    generated = {DBT_PROJECT_DIR / folder for folder in dbt_models.GENERATED_DIRS}
    for path in DBT_PROJECT_DIR.rglob("*"):
        if path.suffix in (".sql", ".yml", ".csv") and not generated & set(path.parents):
            if "target" in path.parts or "logs" in path.parts:
                continue
            assert "station_id" not in path.read_text(), path


def test_every_dbt_model_has_its_own_yaml_stating_its_grain():
    for sql_file in (DBT_PROJECT_DIR / "models").rglob("*.sql"):
        spec = yaml.safe_load(sql_file.with_suffix(".yml").read_text())
        [model] = spec["models"]
        assert model["name"] == sql_file.stem
        assert "grain" in model["description"].lower(), sql_file.name


def test_marts_are_contracted_and_facts_incremental():
    for sql_file in (DBT_PROJECT_DIR / "models" / "marts").glob("*.sql"):
        model = yaml.safe_load(sql_file.with_suffix(".yml").read_text())["models"][0]
        assert all("data_type" in c for c in model["columns"]), sql_file.name
        if sql_file.stem.startswith("fct_"):
            text = sql_file.read_text()
            assert "materialized='incremental'" in text and "unique_key=" in text, sql_file.name


def test_entity_locations_come_from_the_readers_that_know_them(tmp_path):
    from periscope.settings import get_settings
    from warehouse.dbt import entity_locations

    data_dir = get_settings().data_dir  # the real stations file
    found = entity_locations([get_contract("weather"), get_contract("taxi")], data_dir)
    assert list(found) == ["weather"]  # taxi's reader knows no coordinates
    assert len(found["weather"]) == 36
    lat, lon = found["weather"]["denver"]
    assert 39 < lat < 40.5 and -105.5 < lon < -104.5
    seed = dbt_models.generated_files([get_contract("weather")], None, found)[
        "seeds/generated/entity_locations.csv"
    ]
    rows = list(csv.DictReader(io.StringIO(seed)))
    assert len(rows) == 36 and {r["source"] for r in rows} == {"weather"}
    assert {"entity_id": "denver", "latitude": repr(lat)}.items() <= next(
        r for r in rows if r["entity_id"] == "denver"
    ).items()
    # Without the dataset the seed is its header alone (dim_entity builds, no coordinates).
    assert entity_locations([get_contract("weather")], tmp_path) == {}
    assert (
        dbt_models.generated_files([get_contract("weather")])[
            "seeds/generated/entity_locations.csv"
        ]
        == "source,entity_id,latitude,longitude\n"
    )


def test_the_anomaly_marts_accept_every_detector_gold_can_name_and_no_other():
    from periscope.predictions import ANOMALY_DETECTORS

    spec = yaml.safe_load((DBT_PROJECT_DIR / "models/marts/fct_anomaly.yml").read_text())
    (model,) = spec["models"]
    (column,) = [c for c in model["columns"] if c["name"] == "anomaly_kind"]
    (test,) = [t for t in column["data_tests"] if "accepted_values" in t]
    assert test["accepted_values"]["arguments"]["values"] == list(ANOMALY_DETECTORS)
