"""Dagster's warehouse job on the real services: on conftest.py's `warehouse_lake` (real silver
of two weather stations, the UCI station and the first taxi hours; stand-in gold), one run of
the `warehouse` job observes the lake, loads it with `periscope warehouse load` and builds dbt;
the marts fill and equal the lake."""

from __future__ import annotations

import dagster as dg
import psycopg2
import pytest
from deltalake import DeltaTable

from periscope.lake import delta_row_count, read_delta
from periscope.orchestration.dbt import prepare_dbt_project
from periscope.orchestration.definitions import build_definitions
from periscope.settings import get_settings
from tests.integration.conftest import fresh_warehouse

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def warehouse(services):
    return fresh_warehouse(services)


@pytest.fixture(scope="module")
def run_settings(warehouse_lake, warehouse, tmp_path_factory):
    """The test services and lake as the environment Dagster's steps and subprocesses read."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERISCOPE_LAKE_ROOT", warehouse_lake.settings.lake_root)
        mp.setenv("PERISCOPE_LOCAL_DIR", str(tmp_path_factory.mktemp("local")))
        get_settings.cache_clear()
        yield get_settings()
    get_settings.cache_clear()


def _one(settings, statement: str) -> object:
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchone()[0]


def test_the_warehouse_job_loads_the_lake_and_fills_the_marts(run_settings):
    import logging

    prepare_dbt_project(run_settings, log=logging.getLogger(__name__))
    defs = build_definitions(run_settings)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("warehouse").execute_in_process(instance=instance)
    assert result.success

    lake = run_settings.lake_path
    # The lake was observed at its Delta versions ...
    observed = {
        e.asset_key.to_user_string(): e.event_specific_data.asset_observation.data_version
        for e in result.get_asset_observation_events()
    }
    assert observed["lake/silver/weather_observations"] == str(
        DeltaTable(lake("silver/weather_observations")).version()
    )
    # ... and a table this lake does not have as "no version".
    absent = [
        key
        for key in observed
        if key.startswith("lake/") and not DeltaTable.is_deltatable(lake(key.removeprefix("lake/")))
    ]
    assert absent and all(observed[key] is None for key in absent)
    # ... loaded (the load's metadata says how many rows it copied) ...
    materialized = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    observations = delta_row_count(lake("silver/weather_observations"))
    assert materialized["warehouse/lake/weather_observations"]["rows_copied"].value == observations
    assert _one(run_settings, "select count(*) from lake.weather_observations") == observations
    # ... and modelled: dbt's marts are assets of the same run, and they hold the lake's rows.
    assert {"marts/fct_forecast", "marts/fct_observation_hourly"} <= set(materialized)
    forecasts = sum(
        len(f) for f in read_delta(lake("gold/weather_predictions")).column("forecasts").to_pylist()
    )
    assert (
        _one(run_settings, "select count(*) from marts.fct_forecast where source = 'weather'")
        == forecasts
        > 0
    )
    hours = read_delta(lake("silver/weather_observations")).to_pandas()
    station_hours = len(
        hours.assign(h=hours["event_time"].dt.floor("h"))[["station_id", "h"]].drop_duplicates()
    )
    assert (
        _one(
            run_settings,
            "select count(distinct (entity_key, observed_hour)) from marts.fct_observation_hourly where source = 'weather'",
        )
        == station_hours
    )
