"""Tableau on the real warehouse: conftest.py's `built_marts` (real silver of two weather
stations, the UCI station and the first taxi hours, stand-in gold, loaded and modelled by
`periscope warehouse load` and `periscope dbt build`; shared with the Superset test); then, as
bi_reader, every table and column the committed workbook and data sources map exists in
`marts` with the type they say (a column renamed by the owner is reported by name), bi_reader
reads nothing outside `marts`, and `periscope tableau extract` writes every mart with its rows.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import errors

from tests.integration.test_warehouse import _query
from warehouse.bi.tableau_extract import extract_counts
from warehouse.bi.tableau_workbook import COMMITTED_DIR, MARTS_SCHEMA, missing_columns

pytestmark = pytest.mark.integration

PERISCOPE = str(Path(sys.executable).parent / "periscope")


@pytest.fixture(scope="module")
def marts(built_marts, tmp_path_factory):
    """The session's built marts (conftest.py): the settings, the `periscope` environment, and
    a folder for this module's files."""
    built_marts.ensure()
    return built_marts.settings, built_marts.env, tmp_path_factory.mktemp("tableau")


def _catalog(settings) -> dict[tuple[str, str], str]:
    """(table, column) -> type of schema marts, as bi_reader sees it."""
    rows = _query(
        settings,
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_schema = %s",
        (MARTS_SCHEMA,),
        role="bi",
    )
    return {(table, column): data_type for table, column, data_type in rows}


def _periscope(env, *args: str) -> str:
    done = subprocess.run(
        [PERISCOPE, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"periscope {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_table_and_column_the_tableau_files_map_is_in_marts_for_bi_reader(marts):
    settings, env, root = marts
    # The sheets have rows to show.
    for fact in ("fct_forecast_accuracy", "fct_anomaly", "fct_observation_hourly"):
        [(rows,)] = _query(settings, f"select count(*) from marts.{fact}", role="bi")
        assert rows > 0, fact
    catalog = _catalog(settings)
    files = sorted(COMMITTED_DIR.glob("*.t[dw][sb]"))
    assert len(files) == 5
    for path in files:
        assert missing_columns(path.read_text(encoding="utf-8"), catalog) == [], path.name
    # Written for this warehouse, the files name its port and still find every column.
    _periscope(env, "tableau", "write", "--out", str(root / "tableau"))
    workbook = (root / "tableau" / "periscope.twb").read_text(encoding="utf-8")
    ports = {c.get("port") for c in ET.fromstring(workbook).iter("connection") if c.get("port")}
    assert ports == {str(settings.postgres_port)}
    assert missing_columns(workbook, catalog) == []


def test_a_column_renamed_in_the_marts_fails_the_check_by_name(marts):
    settings, _, _ = marts
    rename = "alter table marts.fct_anomaly rename column {} to {}"
    _execute(settings, rename.format("anomaly_score", "anomaly_score_renamed"))
    try:
        problems = missing_columns(
            (COMMITTED_DIR / "periscope.twb").read_text(encoding="utf-8"), _catalog(settings)
        )
    finally:
        _execute(settings, rename.format("anomaly_score_renamed", "anomaly_score"))
    assert problems == ["column marts.fct_anomaly.anomaly_score not found"]


def _execute(settings, statement: str) -> None:
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(statement)


def test_bi_reader_sees_and_reads_nothing_outside_marts(marts):
    settings, _, _ = marts
    visible = _query(
        settings,
        "select distinct table_schema from information_schema.tables "
        "where table_schema not in ('pg_catalog', 'information_schema')",
        role="bi",
    )
    assert visible == [(MARTS_SCHEMA,)]
    conn = psycopg2.connect(settings.postgres_dsn("bi"))
    try:
        for statement in (
            "select count(*) from lake.weather_observations",
            "select count(*) from staging.stg_weather__observations",
            "select count(*) from intermediate.int_observations_unioned",
        ):
            with conn.cursor() as cur, pytest.raises(errors.InsufficientPrivilege):
                cur.execute(statement)
            conn.rollback()
    finally:
        conn.close()


def test_the_extract_holds_every_mart_with_its_rows_and_values(marts):
    settings, env, root = marts
    path = root / "bi" / "marts.hyper"
    output = _periscope(env, "tableau", "extract", "--out", str(path))
    tables = [
        t
        for (t,) in _query(
            settings,
            "select table_name from information_schema.tables "
            "where table_schema = 'marts' and table_type = 'BASE TABLE'",
        )
    ]
    expected = {t: _query(settings, f"select count(*) from marts.{t}")[0][0] for t in tables}
    assert extract_counts(path) == expected
    assert f"({len(tables)} tables)" in output
    assert expected["fct_anomaly"] > 0 and expected["dim_zone"] > 0
    # Values arrive exact: nulls, booleans, floats and instants of the anomaly fact.
    summary = (
        "select count(*), count(anomaly_score), sum(case when is_anomaly then 1 else 0 end), "
        "sum(anomaly_score), min(window_start), max(scored_at) from marts.fct_anomaly"
    )
    [in_postgres] = _query(settings, summary)
    in_hyper = _hyper_row(path, summary)
    assert in_hyper[:3] + in_hyper[4:] == list(in_postgres[:3] + in_postgres[4:])
    assert in_hyper[3] == pytest.approx(in_postgres[3], rel=1e-12)  # summed in another order


def _hyper_row(path: Path, sql: str) -> list:
    from tableauhyperapi import Connection, HyperProcess, Telemetry

    with (
        HyperProcess(
            Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": str(path.parent)}
        ) as hyper,
        Connection(hyper.endpoint, str(path)) as extract,
    ):
        [row] = extract.execute_list_query(sql)
    return [v.to_datetime() if hasattr(v, "to_datetime") else v for v in row]
