"""The CLI's shared `--source` option and its listings: whole values when piped, csv and json."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import datetime
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from periscope import cli, contracts
from periscope.lake import LakeTable
from periscope.output import Column, print_rows

runner = CliRunner()

LONG = "air_quality_with_a_name_far_wider_than_any_terminal_column_would_allow_forecast"


def _invoke(*args: str):
    # CliRunner's stdout is not a terminal: what `periscope ... | grep` sees.
    return runner.invoke(cli.app, list(args))


def _words(text: str) -> str:
    """A usage error's text without the box Rich draws around it."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def toy_source(monkeypatch):
    """A source registered while the CLI runs, as a test that declares its own contract does."""
    toy = dataclasses.replace(contracts.get_contract("weather"), name="toy_events")
    monkeypatch.setitem(contracts.CONTRACTS, toy.name, toy)
    return toy


# --- --source ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["ingest", "replay"],
        ["ingest", "chaos"],
        ["bronze", "run"],
        ["bronze", "status"],
        ["silver", "run"],
        ["train"],
        ["retrain"],
        ["score"],
        ["scheduler", "run"],
        ["warehouse", "load"],
        ["lake", "audit"],
    ],
)
def test_every_source_option_refuses_an_unknown_source_naming_the_known_ones(command):
    result = _invoke(*command, "--source", "nope")
    assert result.exit_code == 2, result.output
    message = _words(result.output)
    assert "unknown source" in message and "'nope'" in message
    assert "air_quality, taxi, weather" in message


@pytest.mark.parametrize("command", [["models", "show"], ["models", "rollback"]])
def test_source_arguments_refuse_an_unknown_source(command):
    result = _invoke(*command, "nope", "forecast")
    assert result.exit_code == 2, result.output
    assert "known sources: air_quality, taxi, weather" in _words(result.output)


def test_a_source_registered_at_run_time_is_accepted_and_listed_in_help(toy_source, monkeypatch):
    import periscope.lake
    import periscope.topics

    monkeypatch.setattr(periscope.topics, "records_written", lambda settings, topic: 7)
    monkeypatch.setattr(periscope.lake, "row_count_or_zero", lambda path: 5)
    result = _invoke("bronze", "status", "--source", "toy_events", "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["source"], row["topic"], row["not landed"]) == ("toy_events", "toy_events-raw", 2)

    shown = _invoke("ingest", "replay", "--help")
    assert "Known: air_quality, taxi, toy_events, weather." in _words(shown.output)


def test_a_repeated_source_runs_once(monkeypatch):
    import periscope.lake
    import periscope.topics

    monkeypatch.setattr(periscope.topics, "records_written", lambda settings, topic: 0)
    monkeypatch.setattr(periscope.lake, "row_count_or_zero", lambda path: 0)
    result = _invoke("bronze", "status", "-s", "weather", "-s", "weather", "-f", "csv")
    assert result.exit_code == 0, result.output
    assert [r["source"] for r in csv.DictReader(io.StringIO(result.stdout))] == ["weather"]


# --- listings ----------------------------------------------------------------------------------
class _Registry:
    uri = "file:///tmp/mlruns"

    def model_names(self):
        return [LONG, "weather_anomaly"]

    def versions(self, name):
        created = datetime(2026, 1, 2, 3, 4)
        if name == LONG:
            return [
                SimpleNamespace(
                    version=2,
                    is_champion=True,
                    created=created,
                    tags={"data_until": "2005-04-04", "code_version": "abc1234-dirty"},
                    metrics={"relative_mae": 0.8125},
                )
            ]
        return [SimpleNamespace(version=1, is_champion=False, created=created, tags={}, metrics={})]


@pytest.fixture
def registry(monkeypatch):
    import ml.cli

    monkeypatch.setattr(ml.cli, "_registry", _Registry)


def test_models_list_piped_keeps_whole_names(registry):
    result = _invoke("models", "list")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if LONG in line]
    assert len(lines) == 1  # one line per row: `grep` finds the whole row
    assert "★" in lines[0] and "0.812" in lines[0] and "abc1234-dirty" in lines[0]
    assert "…" not in result.stdout


def test_models_list_as_csv_and_json_parses_back(registry):
    rows = list(csv.DictReader(io.StringIO(_invoke("models", "list", "-f", "csv").stdout)))
    assert [r["model"] for r in rows] == [LONG, "weather_anomaly"]
    assert rows[0]["champion"] == "true" and rows[0]["version"] == "2"
    assert rows[1]["value"] == "" and rows[1]["key metric"] == "f1"

    records = json.loads(_invoke("models", "list", "--format", "json").stdout)
    assert records[0] == {
        "model": LONG,
        "version": 2,
        "champion": True,
        "created": "2026-01-02T03:04:00",
        "data until": "2005-04-04",
        "key metric": "relative_mae",
        "value": 0.8125,
        "code": "abc1234-dirty",
    }
    assert records[1]["value"] is None


@pytest.fixture
def lake_tables(monkeypatch):
    import periscope.lake

    found = [
        LakeTable("silver", "air_quality_observations", f"/lake/silver/{LONG}", 12),
        LakeTable("bronze", "weather_raw", "/lake/bronze/weather_raw", 3),
    ]
    monkeypatch.setattr(periscope.lake, "tables", lambda settings=None: found)
    return found


def test_sql_tables_piped_and_as_csv_and_json(lake_tables, tmp_path):
    table = _invoke("sql", "--tables")
    assert table.exit_code == 0, table.output
    assert (
        f"/lake/silver/{LONG}" in table.stdout and "silver.air_quality_observations" in table.stdout
    )

    rows = list(csv.DictReader(io.StringIO(_invoke("sql", "--tables", "-f", "csv").stdout)))
    assert rows[0] == {
        "view": "silver.air_quality_observations",
        "version": "12",
        "path": f"/lake/silver/{LONG}",
    }
    records = json.loads(_invoke("sql", "--tables", "-f", "json").stdout)
    assert [(r["view"], r["version"]) for r in records] == [
        ("silver.air_quality_observations", 12),
        ("bronze.weather_raw", 3),
    ]
    out = tmp_path / "tables.json"
    assert _invoke("sql", "--tables", "-f", "json", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text()) == records
    assert _invoke("sql", "--tables", "-f", "parquet").exit_code == 2


def test_warehouse_load_summary_as_json(monkeypatch):
    import warehouse.loader
    from warehouse.loader import LoadResult

    results = [
        LoadResult("air_quality_predictions", "loaded", "incremental", 3, 5, 40, 38, 960, 500, 498),
        LoadResult("air_quality_features", "skipped", reason="no Delta table"),
    ]
    monkeypatch.setattr(warehouse.loader, "load_tables", lambda *a, **k: results)
    result = _invoke("warehouse", "load", "-s", "air_quality", "-f", "json")
    assert result.exit_code == 0, result.output
    loaded, skipped = json.loads(result.stdout)  # the progress bar went to stderr
    assert loaded["table"] == "air_quality_predictions" and loaded["forecasts"] == 960
    assert (loaded["from version"], loaded["to version"], loaded["rows in Postgres"]) == (3, 5, 498)
    assert skipped["status"] == "skipped" and skipped["rows copied"] is None

    table = _invoke("warehouse", "load", "-s", "air_quality")
    assert "skipped: not in the lake yet" in table.stdout and "960" in table.stdout


# --- the helper --------------------------------------------------------------------------------
def test_a_narrow_terminal_wraps_values_instead_of_cutting_them():
    buffer = io.StringIO()
    narrow = Console(file=buffer, force_terminal=True, width=30, color_system=None)
    print_rows([Column("model"), Column("version")], [(LONG, 1)], console=narrow)
    text = buffer.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 30
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert LONG in cells


def test_values_are_text_not_rich_markup():
    buffer = io.StringIO()
    print_rows(["v"], [("[red]x[/]",)], console=Console(file=buffer))
    assert "[red]x[/]" in buffer.getvalue()


def test_json_has_no_nan():
    out = io.StringIO()
    print_rows(["x"], [(float("nan"),)], fmt="json", out=out)
    assert json.loads(out.getvalue()) == [{"x": None}]
