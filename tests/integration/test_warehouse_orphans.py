"""Tables left under the speed layer's old name (`taxi_event_predictions`, now named by the
contract's event: `taxi_trip_predictions`): `warehouse load` names them and what drops them,
and `--drop-orphans` drops them from Postgres."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from periscope.settings import Settings
from warehouse import ddl
from warehouse.loader import load_tables

pytestmark = pytest.mark.integration

OLD = "taxi_event_predictions"


def _postgres_names(settings: Settings) -> tuple[set[str], set[str], set[str]]:
    """Tables and views of the schema `lake`, and the loader's control rows."""
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(
            "select table_name, table_type from information_schema.tables where table_schema = 'lake'"
        )
        rows = cur.fetchall()
        cur.execute(f"select table_name from {ddl.ident(ddl.LAKE_SCHEMA, ddl.STATE_TABLE)}")
        state = {r[0] for r in cur.fetchall()}
    tables = {name for name, kind in rows if kind == "BASE TABLE"}
    views = {name for name, kind in rows if kind == "VIEW"}
    return tables, views, state


@pytest.fixture
def orphaned(services: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A lake and warehouse as an older Periscope left them: the speed layer's table, its
    control row and a view on it under the old name, and the old Delta table."""
    settings = services.model_copy(update={"lake_root": str(tmp_path / "lake")})
    write_deltalake(
        settings.lake_path(f"gold/{OLD}"), pa.table({"trip_id": ["a"], "duration_min": [7.5]})
    )
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(f"create schema if not exists {ddl.LAKE_SCHEMA}")
        cur.execute(ddl.create_state_sql())
        cur.execute(f"create table lake.{OLD} (trip_id text primary key, duration_min float8)")
        # Stands in for the old staging view, which dbt built on the table.
        cur.execute(f"create view lake._old_stg_view as select * from lake.{OLD}")
        cur.execute(
            f"insert into lake.{ddl.STATE_TABLE} values "
            "(%s, 'taxi', %s, 3, 1, 1, 1, 1, 'full', %s)",
            (OLD, f"gold/{OLD}", datetime.now(UTC)),
        )
    yield settings
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for statement in (
            f"drop table if exists lake.{OLD} cascade",
            f"delete from lake.{ddl.STATE_TABLE} where table_name = '{OLD}'",
        ):
            cur.execute(statement)


def test_a_load_names_the_orphans_and_drop_orphans_drops_them(orphaned, caplog):
    settings = orphaned
    delta_path = settings.lake_path(f"gold/{OLD}")
    with caplog.at_level(logging.WARNING, logger="warehouse.loader"):
        load_tables(settings, [])
    [warning] = [r.getMessage() for r in caplog.records if OLD in r.getMessage()]
    assert f"Found: lake.{OLD}, its row in lake._load_state, {delta_path}." in warning
    assert "now taxi_trip_predictions" in warning
    assert f"drop table if exists lake.{OLD} cascade" in warning
    assert f"rm -r {delta_path}" in warning
    tables, views, state = _postgres_names(settings)
    assert OLD in tables and OLD in state and "_old_stg_view" in views  # only warned

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warehouse.loader"):
        load_tables(settings, [], drop_orphans=True)
    [dropped] = [r.getMessage() for r in caplog.records if OLD in r.getMessage()]
    assert dropped.startswith(f"dropped lake.{OLD} and its row in lake._load_state")
    tables, views, state = _postgres_names(settings)
    assert OLD not in tables and OLD not in state and "_old_stg_view" not in views

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warehouse.loader"):
        load_tables(settings, [])
    [left] = [r.getMessage() for r in caplog.records if OLD in r.getMessage()]
    assert f"Found: {delta_path}." in left and "drop table" not in left  # the lake's is by hand


def test_the_cli_notes_the_generic_table_name_and_warns_of_orphans(orphaned):
    settings = orphaned
    done = subprocess.run(
        [str(Path(sys.executable).parent / "periscope"), "warehouse", "load"]
        + ["--source", "taxi", "--table", "event_predictions"],
        env={**os.environ, "PERISCOPE_LAKE_ROOT": settings.lake_root, "COLUMNS": "500"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Nothing to load (no taxi_trip_predictions in this lake): exit 1, and the notes on stderr.
    assert done.returncode == 1, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "--table event_predictions is deprecated" in err
    assert "use --table trip_predictions (taxi)" in err
    assert f"{OLD} is left from before the speed layer's table was named by its event" in err
