"""`periscope sql` and `periscope.lake.connect()` on a small lake written with delta-rs."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from periscope import cli, lake, sql
from periscope.errors import PeriscopeError
from periscope.settings import get_settings

runner = CliRunner()
OBSERVATIONS = "silver.weather_observations"


def _rows(stations: list[str], hour: int = 0) -> pa.Table:
    observed_at = [datetime(2026, 1, 1, hour + i, tzinfo=UTC) for i in range(len(stations))]
    return pa.table({"station_id": stations, "observed_at": observed_at})


@pytest.fixture
def lake_root(tmp_path, monkeypatch) -> Iterator[Path]:
    """bronze 4 rows; silver observations at versions 0, 1, 2 with 2, 3, 4 rows; gold 3 rows."""
    write_deltalake(tmp_path / "bronze/weather_raw", _rows(["a", "a", "b", "c"]))
    observations = tmp_path / "silver/weather_observations"
    write_deltalake(observations, _rows(["a", "b"]))
    write_deltalake(observations, _rows(["c"], hour=2), mode="append")
    write_deltalake(observations, _rows(["d"], hour=3), mode="append")
    predictions = pa.table({"station_id": ["a", "b", "b"], "predicted": [1.5, 2.5, 3.5]})
    write_deltalake(tmp_path / "gold/weather_predictions", predictions)
    # what else lives in a lake, and is not a table
    (tmp_path / "gold/README.md").write_text("gold tables\n")
    (tmp_path / "_checkpoints/silver_weather").mkdir(parents=True)
    (tmp_path / "silver/not_a_table").mkdir()
    (tmp_path / "silver/not_committed_yet/_delta_log").mkdir(parents=True)

    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _count(con, table: str) -> int:
    return con.sql(f"select count(*) from {table}").fetchone()[0]


def test_tables_lists_each_delta_table_with_its_current_version(lake_root):
    found = {(t.name, t.version, t.path) for t in lake.tables()}
    assert found == {
        ("bronze.weather_raw", 0, str(lake_root / "bronze/weather_raw")),
        (OBSERVATIONS, 2, str(lake_root / "silver/weather_observations")),
        ("gold.weather_predictions", 0, str(lake_root / "gold/weather_predictions")),
    }


def test_a_join_across_bronze_silver_and_gold(lake_root):
    con = lake.connect()
    counts = [
        _count(con, t) for t in ("bronze.weather_raw", OBSERVATIONS, "gold.weather_predictions")
    ]
    assert counts == [4, 4, 3]
    joined = con.sql(
        """select g.station_id, count(*) as n
        from gold.weather_predictions as g
        join silver.weather_observations as s using (station_id)
        join bronze.weather_raw as b using (station_id)
        group by all order by all"""
    ).fetchall()
    assert joined == [("a", 2), ("b", 2)]  # a: 1 gold x 1 silver x 2 bronze; b: 2 x 1 x 1


def test_settings_can_be_passed_explicitly(lake_root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("empty_lake")
    settings = get_settings().model_copy(update={"lake_root": str(elsewhere)})
    assert lake.tables(settings) == []
    con = lake.connect(settings)
    with pytest.raises(Exception, match="does not exist"):
        _count(con, OBSERVATIONS)


def test_timestamps_show_in_utc(lake_root):
    con = lake.connect()
    assert con.sql("select current_setting('TimeZone')").fetchone()[0] == "UTC"
    first = con.sql(f"select min(observed_at)::varchar from {OBSERVATIONS}").fetchone()[0]
    assert first == "2026-01-01 00:00:00+00"


def test_views_read_the_latest_commit_each_query(lake_root):
    con = lake.connect()
    assert _count(con, OBSERVATIONS) == 4
    write_deltalake(lake_root / "silver/weather_observations", _rows(["e"]), mode="append")
    assert _count(con, OBSERVATIONS) == 5


def test_time_travel_reads_one_table_at_an_older_version(lake_root):
    con = lake.connect(as_of_version=0, table=OBSERVATIONS)
    assert _count(con, OBSERVATIONS) == 2
    assert _count(con, "bronze.weather_raw") == 4  # the other tables stay current
    assert _count(lake.connect(as_of_version=1, table=OBSERVATIONS), OBSERVATIONS) == 3
    with pytest.raises(PeriscopeError, match="no version 7.*current version is 2"):
        lake.connect(as_of_version=7, table=OBSERVATIONS)
    with pytest.raises(PeriscopeError, match="periscope sql --tables"):
        lake.connect(as_of_version=0, table="silver.nope")


def test_a_non_local_lake_is_refused_clearly():
    settings = get_settings().model_copy(update={"lake_root": "s3a://bucket/lake"})
    with pytest.raises(PeriscopeError, match="local lake only"):
        lake.tables(settings)


# --- the command ---------------------------------------------------------------------------
def _sql(*args: str):
    return runner.invoke(cli.app, ["sql", *args])


def test_csv_to_stdout(lake_root):
    result = _sql(f"select * from {OBSERVATIONS} order by observed_at", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["station_id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["observed_at"] == "2026-01-01 00:00:00+00"


def test_json_to_a_file(lake_root, tmp_path):
    out = tmp_path / "out.json"
    result = _sql(
        "select station_id, count(*) as n from bronze.weather_raw group by all order by all",
        "--format=json",
        f"--output={out}",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == [
        {"station_id": "a", "n": 2},
        {"station_id": "b", "n": 1},
        {"station_id": "c", "n": 1},
    ]


def test_parquet_to_a_file_and_only_to_a_file(lake_root, tmp_path):
    out = tmp_path / "out.parquet"
    query = "select * from gold.weather_predictions order by predicted"
    result = _sql(query, "-f", "parquet", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).to_pydict() == {
        "station_id": ["a", "b", "b"],
        "predicted": [1.5, 2.5, 3.5],
    }
    refused = _sql(query, "-f", "parquet")
    assert refused.exit_code == 2 and "--output" in refused.output


def test_limit_rows_caps_files_too(lake_root):
    result = _sql(f"select * from {OBSERVATIONS}", "-f", "csv", "--limit-rows", "3")
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 3


def test_table_output_notes_when_it_is_cut(lake_root):
    result = _sql(f"select station_id from {OBSERVATIONS} order by 1", "--limit-rows", "2")
    assert result.exit_code == 0, result.output
    assert "a" in result.stdout and "b" in result.stdout and "│ c" not in result.stdout
    assert "2 row(s)" in result.stdout and "showing the first 2 rows" in result.stderr
    whole = _sql(f"select station_id from {OBSERVATIONS}")
    assert "4 row(s)" in whole.stdout and "showing the first" not in whole.stderr


def test_as_of_version_applies_to_the_table_the_query_names(lake_root):
    result = _sql(f"select count(*) as n from {OBSERVATIONS}", "--as-of-version", "1", "-f", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n", "3"]
    join = f"select count(*) as n from {OBSERVATIONS} join bronze.weather_raw using (station_id)"
    ambiguous = _sql(join, "--as-of-version", "0")
    assert isinstance(ambiguous.exception, PeriscopeError)
    assert "--table" in str(ambiguous.exception)
    chosen = _sql(join, "--as-of-version", "0", "--table", OBSERVATIONS, "-f", "csv")
    assert chosen.stdout.splitlines() == ["n", "3"]  # a matches 2 bronze rows, b matches 1


def test_the_table_to_time_travel_is_found_by_parsing_the_query(lake_root):
    query = """with recent as (select * from Silver.Weather_Observations where observed_at > now())
        select * from recent where station_id in (select station_id from main.other)"""
    assert sql.table_for_version(query, lake.tables()) == OBSERVATIONS
    with pytest.raises(PeriscopeError, match="Parser Error"):
        sql.table_for_version("selec 1", lake.tables())


def test_tables_option_lists_the_views(lake_root):
    result = _sql("--tables")
    assert result.exit_code == 0, result.output
    for name in ("bronze.weather_raw", OBSERVATIONS, "gold.weather_predictions"):
        assert name in result.stdout
    assert "not_a_table" not in result.stdout and "README" not in result.stdout


def test_bad_sql_is_a_one_line_error(lake_root):
    con = lake.connect()
    for query, expected in [
        ("selec 1", r"^Parser Error: syntax error at or near \"selec\"$"),
        ("select nope from bronze.weather_raw", r"^Binder Error: .*\"nope\""),
        ("select * from silver.nope", r"does not exist.*periscope sql --tables"),
        ("select * from weather_raw", r"does not exist.*periscope sql --tables"),
    ]:
        with pytest.raises(PeriscopeError) as caught:
            sql.run(con, query)
        message = str(caught.value)
        assert "\n" not in message and "LINE 1" not in message
        assert re.search(expected, message), message


def test_the_installed_command_prints_the_error_without_a_traceback(lake_root):
    periscope = Path(sys.executable).with_name("periscope")
    done = subprocess.run(
        [str(periscope), "sql", "select * from silver.nope"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: Catalog Error") and "Traceback" not in done.stderr
