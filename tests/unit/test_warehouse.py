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

from periscope.contracts import CONTRACTS
from warehouse import ddl, plan
from warehouse.dbt import DBT_PROJECT_DIR, dbt_command, dbt_env
from warehouse.plan import (
    FORECAST_COLUMNS,
    flatten_forecasts,
    forecast_counts,
    loadable_columns,
    plan_load,
    table_specs,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("module", [plan, ddl])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# --- tables --------------------------------------------------------------------------------
def test_table_specs_name_the_delta_tables_and_keys():
    specs = {s.name: s for s in table_specs()}
    assert set(specs) == {f"{s}_{e}" for s in CONTRACTS for e in plan.ENTITIES}
    assert specs["weather_observations"].delta_table == "silver/weather_observations"
    assert specs["weather_observations"].key == ("station_id", "event_time")
    assert specs["air_quality_features"].key == ("station_id", "window_start")
    gold = specs["weather_predictions"]
    assert (gold.delta_table, gold.forecasts_table) == (
        "gold/weather_predictions",
        "weather_forecasts",
    )
    assert specs["weather_features"].forecasts_table is None


def test_table_specs_choose_and_reject():
    assert [s.name for s in table_specs(["air_quality"], ["predictions", "observations"])] == [
        "air_quality_observations",
        "air_quality_predictions",
    ]
    with pytest.raises(ValueError, match="unknown source"):
        table_specs(["taxi"])
    with pytest.raises(ValueError, match="unknown table"):
        table_specs(None, ["raw"])


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
def _gold() -> pa.Table:
    from ml.gold import gold_schema

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
        {"station_id": "a", "window_start": T0, "forecasts": forecasts(2)},
        {"station_id": "b", "window_start": T0, "forecasts": []},
        {"station_id": "c", "window_start": T0 + timedelta(hours=1), "forecasts": forecasts(1)},
    ]
    common = {
        "window_end": T0 + timedelta(hours=3),
        "forecast_origin": T0 + timedelta(hours=2),
        "scored_at": T0,
    }
    return pa.Table.from_pylist([{**common, **r} for r in rows], schema=gold_schema())


def test_flatten_forecasts_gives_one_row_per_forecast_with_its_window():
    flat = flatten_forecasts(_gold())
    assert flat.column_names == list(FORECAST_COLUMNS)
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


def test_flatten_forecasts_of_no_rows_keeps_the_types():
    from ml.gold import gold_schema

    flat = flatten_forecasts(gold_schema().empty_table())
    assert flat.num_rows == 0
    assert flat.schema.field("horizon_h").type == pa.int32()
    assert flat.schema.field("target_time").type == pa.timestamp("us", tz="UTC")


def test_loadable_columns_leave_out_lists_and_binary():
    from ml.gold import GOLD_COLUMNS, gold_schema

    assert loadable_columns(gold_schema()) == [c for c in GOLD_COLUMNS if c != "forecasts"]
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


def test_dbt_measures_match_the_contracts():
    """The dbt project's measure list (unpivots) and seed (dim_measure) follow contracts.py."""
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    measures = project["vars"]["periscope_sources"]
    assert measures == {name: list(c.measure_names) for name, c in CONTRACTS.items()}
    with (DBT_PROJECT_DIR / "seeds" / "measures.csv").open() as f:
        seed = [
            (r["source"], r["measure"], r["unit"], float(r["valid_min"]), float(r["valid_max"]))
            for r in csv.DictReader(f)
        ]
    assert seed == [
        (c.name, m.name, m.unit, m.valid_min, m.valid_max)
        for c in CONTRACTS.values()
        for m in c.measures
    ]


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
