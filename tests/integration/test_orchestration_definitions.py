"""The Dagster definitions: they load, the lineage runs from Kafka to the marts, the schedules
and sensors are the intended ones, and the sensor and observations read real Delta tables.

No services are needed, but loading the definitions runs a real `dbt parse` (~15 s) and the
maintenance job a `periscope` subprocess: too slow for the unit tier's budget, so it is here."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from periscope.contracts import CONTRACTS, get_contract
from periscope.orchestration.cli import dagster_command, dagster_yaml
from periscope.orchestration.dbt import dbt_env_vars
from periscope.orchestration.definitions import build_definitions, lake_versions, observe_lake
from periscope.orchestration.graph import lake_nodes, warehouse_tables
from periscope.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _explicit_settings():
    """As in the unit tier: defaults plus what a test sets, not the test services' variables."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(Settings.model_config, "env_file", None)
        for name in list(os.environ):
            if name.startswith("PERISCOPE_"):
                mp.delenv(name)
        mp.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "owner-secret")
        mp.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "bi-secret")
        yield


def _settings(**values) -> Settings:
    return Settings(
        postgres_owner_password="owner-secret",  # type: ignore[arg-type]
        postgres_bi_password="bi-secret",  # type: ignore[arg-type]
        **values,
    )


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lake")


@pytest.fixture(scope="module")
def defs(tmp_path_factory, lake_root) -> dg.Definitions:
    """The definitions with their dbt manifest parsed into a temporary folder (a real dbt parse)."""
    settings = _settings(local_dir=tmp_path_factory.mktemp("local"), lake_root=str(lake_root))
    return build_definitions(settings)


@pytest.fixture(scope="module")
def graph(defs):
    return defs.get_repository_def().asset_graph


def _key(path: str) -> dg.AssetKey:
    return dg.AssetKey.from_user_string(path)


def _parents(graph, path: str) -> set[str]:
    return {k.to_user_string() for k in graph.get(_key(path)).parent_keys}


def _upstream(graph, path: str) -> set[str]:
    seen: set[str] = set()
    todo = [path]
    while todo:
        for parent in _parents(graph, todo.pop()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_definitions_load_and_validate(defs):
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {j.name for j in repository.get_all_jobs()} >= {
        "warehouse",
        "retrain",
        "forecast_health",
        "lake_maintenance",
    }


@pytest.mark.parametrize("source", sorted(CONTRACTS))
def test_lineage_runs_from_the_topic_through_the_lake_and_the_load_to_the_marts(graph, source):
    assert _parents(graph, f"lake/bronze/{source}_raw") == {f"kafka/{source}-raw"}
    assert _parents(graph, f"lake/silver/{source}_observations") == {f"lake/bronze/{source}_raw"}
    assert _parents(graph, f"lake/gold/{source}_predictions") == {f"lake/silver/{source}_features"}
    assert _parents(graph, f"warehouse/lake/{source}_observations") == {
        f"lake/silver/{source}_observations"
    }
    assert _parents(graph, f"warehouse/lake/{source}_forecasts") == {
        f"lake/gold/{source}_predictions"
    }
    assert _parents(graph, f"staging/stg_{source}__forecasts") == {
        f"warehouse/lake/{source}_forecasts"
    }
    forecast = _upstream(graph, "marts/fct_forecast")
    assert {
        f"staging/stg_{source}__forecasts",
        f"warehouse/lake/{source}_forecasts",
        f"lake/gold/{source}_predictions",
        f"lake/silver/{source}_features",
        f"kafka/{source}-raw",
    } <= forecast
    assert f"staging/stg_{source}__observations" in _upstream(graph, "marts/fct_observation_hourly")


def test_the_load_assets_are_the_loaders_tables():
    """The graph's copy of the loader's table list matches warehouse.plan's."""
    from warehouse.plan import table_specs

    expected = []
    for spec in table_specs():
        expected.append((spec.name, spec.delta_table))
        if spec.forecasts_table:
            expected.append((spec.forecasts_table, spec.delta_table))
    graph_tables = [
        (t.name, t.delta_table) for c in CONTRACTS.values() for t in warehouse_tables(c)
    ]
    assert sorted(graph_tables) == sorted(expected)


def test_dbt_runs_with_the_environment_periscope_dbt_gives_it():
    from warehouse.dbt import dbt_env

    settings = _settings()
    assert dbt_env_vars(settings) == dbt_env(settings, base={})


def test_schedules_and_sensors(defs):
    repository = defs.get_repository_def()
    schedules = {s.name: s for s in repository.schedule_defs}
    crons = {
        name: (s.cron_schedule, s.job_name, s.execution_timezone) for name, s in schedules.items()
    }
    assert crons == {
        "warehouse_hourly": ("5 * * * *", "warehouse", "UTC"),
        "retrain_daily": ("0 3 * * *", "retrain", "UTC"),
        "forecast_health_hourly": ("20 * * * *", "forecast_health", "UTC"),
        "lake_maintenance_hourly": ("45 * * * *", "lake_maintenance", "UTC"),
    }
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules.values())
    sensors = {s.name for s in repository.sensor_defs}
    assert sensors == {"new_lake_versions", "freshness_checks_sensor"}


def test_freshness_is_watched_on_gold_and_the_marts(graph):
    # gold (observed, never materialised): a last-update check on its Delta commit time
    checked = {
        k.asset_key.to_user_string() for k in graph.asset_check_keys if "freshness" in k.name
    }
    assert {f"lake/gold/{s}_predictions" for s in CONTRACTS} <= checked
    assert all(key.startswith("lake/gold/") for key in checked)
    # the marts (built by dbt): a policy Dagster's daemon judges by their last build
    policies = {
        key.to_user_string(): graph.get(key).freshness_policy
        for key in graph.materializable_asset_keys
        if graph.get(key).freshness_policy is not None
    }
    assert {"marts/fct_forecast", "marts/fct_anomaly", "marts/mart_forecast_health"} <= set(
        policies
    )
    assert all(key.startswith("marts/") for key in policies)
    assert {p.fail_window.to_timedelta() for p in policies.values()} == {timedelta(hours=2)}


def _features(rows: int) -> pa.Table:
    return pa.table(
        {
            "station_id": ["denver"] * rows,
            "window_start": [datetime(2024, 1, 1, tzinfo=UTC)] * rows,
        }
    )


def test_the_sensor_asks_for_a_load_when_silver_or_gold_moves(defs, lake_root):
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def("new_lake_versions")
    features = str(lake_root / "silver" / "weather_features")

    def tick(cursor):
        with dg.build_sensor_context(cursor=cursor, repository_def=repository) as context:
            result = sensor.evaluate_tick(context)
        return result, result.cursor

    empty, cursor = tick(None)
    assert empty.run_requests == []

    write_deltalake(features, _features(2))
    first, cursor = tick(cursor)
    assert len(first.run_requests) == 1
    selected = {k.to_user_string() for k in first.run_requests[0].asset_selection}
    assert {"warehouse/lake/weather_features", "lake/silver/weather_features"} <= selected
    assert "marts/fct_forecast" in selected
    assert not any(k.startswith("warehouse/lake/taxi_") for k in selected)
    assert json.loads(cursor) == {"silver/weather_features": 0}

    again, cursor = tick(cursor)  # nothing new
    assert again.run_requests == []

    write_deltalake(str(lake_root / "bronze" / "weather_raw"), _features(1))
    bronze_only, cursor = tick(cursor)  # bronze is not loaded into the warehouse
    assert bronze_only.run_requests == []

    write_deltalake(features, _features(1), mode="append")
    second, _ = tick(cursor)
    assert len(second.run_requests) == 1


def test_observations_carry_the_delta_version(tmp_path):
    settings = _settings(lake_root=str(tmp_path))
    nodes = [n for n in lake_nodes(get_contract("weather")) if n.table is not None]
    path = settings.lake_path("gold/weather_predictions")
    for _ in range(3):
        write_deltalake(path, _features(1), mode="append")
    results = {r.asset_key.to_user_string(): r for r in observe_lake(settings, nodes)}
    assert results["lake/gold/weather_predictions"].data_version == dg.DataVersion("2")
    # Tables not in the lake are observed as absent: no data version.
    assert len(results) == len(nodes)
    assert results["lake/silver/weather_features"].data_version is None
    assert lake_versions(settings, nodes) == {"gold/weather_predictions": 2}


def test_dagster_binds_loopback_and_keeps_passwords_out_of_its_yaml(tmp_path):
    settings = _settings(local_dir=tmp_path, dagster_storage="postgres", dagster_port=3123)
    command = dagster_command(settings)
    assert command[1:3] == ["dev", "-m"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "3123"
    text = dagster_yaml(settings)
    assert "owner-secret" not in text
    assert "password: {env: PERISCOPE_POSTGRES_OWNER_PASSWORD}" in text
    assert "base_dir" in dagster_yaml(_settings(local_dir=tmp_path))


def test_the_maintenance_job_compacts_the_lake_through_the_cli(tmp_path, monkeypatch):
    """The job runs `periscope lake maintain` as a subprocess, on the lake the settings name."""
    from deltalake import DeltaTable

    from periscope.orchestration.definitions import lake_maintenance

    path = str(tmp_path / "silver" / "weather_features")
    for day in range(10):  # ten appended files (no MERGE in the history: all are compacted)
        window = _features(1).set_column(
            1, "window_start", pa.array([datetime(2024, 1, 1 + day, tzinfo=UTC)])
        )
        write_deltalake(path, window, mode="append")
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path))
    result = lake_maintenance.execute_in_process()
    assert result.success
    assert DeltaTable(path).get_add_actions(flatten=True).num_rows == 1
    assert DeltaTable(path).to_pyarrow_table().num_rows == 10


def test_the_retrain_job_trains_only_sources_with_observations(tmp_path):
    """Silver creates every source's tables on its first run: a source never fed has an empty
    table, and `periscope retrain` of it fails, which failed the whole daily job."""
    from periscope.orchestration.definitions import sources_with_observations

    settings = _settings(lake_root=str(tmp_path))
    weather, taxi = get_contract("weather"), get_contract("taxi")
    write_deltalake(settings.lake_path(weather.table("silver", "observations")), _features(3))
    write_deltalake(settings.lake_path(taxi.table("silver", "observations")), _features(0))
    assert sources_with_observations(settings, list(CONTRACTS.values())) == ["weather"]
