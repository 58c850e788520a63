"""The Tableau files: committed as the generator writes them, well-formed, internally consistent
(every shelf names a field of its data source, every dashboard zone a sheet), connected as
bi_reader without a password, mapping every column of the marts they read; and the dbt
exposures naming the marts each dashboard reads (Superset's: as its bundle's datasets say)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from warehouse.bi.tableau_cli import default_connection
from warehouse.bi.tableau_extract import MartColumn, hyper_type
from warehouse.bi.tableau_sheets import DASHBOARDS, SHEETS, STARS, Connection, tables_of
from warehouse.bi.tableau_workbook import (
    COMMITTED_DIR,
    MARTS_DIR,
    MARTS_SCHEMA,
    TABLEAU_TYPES,
    WORKBOOK_FILE,
    datasource_file,
    mart_columns,
    missing_columns,
    physical_columns,
    relation_tables,
    render_datasource,
    render_workbook,
)

ROOT = Path(__file__).parents[2]
EXPOSURES = ROOT / "dbt_project" / "models" / "exposures.yml"
SUPERSET_BUNDLE = ROOT / "warehouse" / "bi" / "superset" / "bundle"
TITLES = ["Forecast accuracy", "Anomalies", "Observations", "Taxi demand"]
REGENERATE = "periscope tableau write --defaults --out warehouse/bi/tableau"


def _files() -> dict[str, str]:
    names = [WORKBOOK_FILE, *(datasource_file(s) for s in STARS)]
    return {name: (COMMITTED_DIR / name).read_text(encoding="utf-8") for name in names}


def _workbook() -> ET.Element:
    return ET.fromstring(_files()[WORKBOOK_FILE])


def _catalog() -> dict[tuple[str, str], str]:
    """The marts' columns as their dbt YAML declares them (what dbt's contracts enforce)."""
    return {
        (table, column): pg_type
        for table, columns in mart_columns(tables_of(STARS)).items()
        for column, pg_type in columns
    }


def test_the_committed_files_are_what_the_generator_writes():
    conn = default_connection()
    assert _files()[WORKBOOK_FILE] == render_workbook(conn), f"regenerate: {REGENERATE}"
    for star in STARS:
        assert _files()[datasource_file(star)] == render_datasource(star, conn), REGENERATE


@pytest.mark.parametrize("name", [WORKBOOK_FILE, *(datasource_file(s) for s in STARS)])
def test_each_file_connects_to_the_marts_as_bi_reader_without_a_password(name):
    root = ET.fromstring(_files()[name])
    conn = default_connection()
    postgres = [c for c in root.iter("connection") if c.get("class") == "postgres"]
    assert postgres
    for c in postgres:
        assert (c.get("server"), c.get("port"), c.get("dbname"), c.get("username")) == (
            conn.host,
            str(conn.port),
            conn.database,
            "bi_reader",
        )
        assert c.get("schema") == MARTS_SCHEMA
    # No password, in any attribute or text (the word only in authentication='username-password').
    for element in root.iter():
        assert not any("password" in key.lower() for key in element.attrib), element.tag
    assert "secret" not in _files()[name].lower()
    for schema, _ in relation_tables(_files()[name]):
        assert schema == MARTS_SCHEMA


def test_every_column_of_every_mart_read_is_mapped_once_with_its_type():
    mapped = physical_columns(_files()[WORKBOOK_FILE])
    catalog = _catalog()
    assert {(t, c) for t, c, _ in mapped} == set(catalog)
    assert len(mapped) == len(catalog)
    assert missing_columns(_files()[WORKBOOK_FILE], catalog) == []
    assert {t for _, t in relation_tables(_files()[WORKBOOK_FILE])} == set(tables_of(STARS))


def test_a_renamed_or_retyped_column_is_reported_by_name():
    catalog = _catalog()
    renamed = dict(catalog)
    renamed[("fct_anomaly", "anomaly_score_v2")] = renamed.pop(("fct_anomaly", "anomaly_score"))
    assert missing_columns(_files()[WORKBOOK_FILE], renamed) == [
        "column marts.fct_anomaly.anomaly_score not found"
    ]
    retyped = {**catalog, ("fct_trip", "trip_distance"): "text"}
    assert missing_columns(_files()[WORKBOOK_FILE], retyped) == [
        "column marts.fct_trip.trip_distance is text, the file says real"
    ]
    without_zones = {k: v for k, v in catalog.items() if k[0] != "dim_zone"}
    problems = missing_columns(_files()[WORKBOOK_FILE], without_zones)
    assert problems[0] == "table marts.dim_zone not found"
    assert "column marts.dim_zone.borough not found" in problems


def test_every_shelf_filter_and_formula_names_a_field_of_its_data_source():
    root = _workbook()
    fields = {
        ds.get("name"): {c.get("name") for c in ds.findall("./column")}
        for ds in root.findall("./datasources/datasource")
    }
    reference = re.compile(r"\[([^\]]+)\]\.(\[[^\]]+\])")
    for ds in root.findall("./datasources/datasource"):
        for calc in ds.findall("./column/calculation"):
            for used in re.findall(r"\[[^\]]+\]", calc.get("formula", "")):
                assert used in fields[ds.get("name")], (ds.get("name"), used)
    for sheet in root.findall("./worksheets/worksheet"):
        name = sheet.get("name")
        [deps] = sheet.findall(".//datasource-dependencies")
        source = deps.get("datasource")
        assert source in fields, name
        declared = {c.get("name") for c in deps.findall("./column")}
        assert declared <= fields[source], (name, declared - fields[source])
        for calc in deps.findall("./column/calculation"):
            read = set(re.findall(r"\[[^\]]+\]", calc.get("formula", "")))
            assert read <= declared, (name, read - declared)
        instances = {i.get("name"): i.get("column") for i in deps.findall("./column-instance")}
        assert set(instances.values()) <= declared, name
        texts = [sheet.findtext(".//rows") or "", sheet.findtext(".//cols") or ""]
        texts += [e.get("column", "") for e in sheet.iter() if e.tag in ("color", "filter", "sort")]
        texts += [e.get("using", "") for e in sheet.iter("sort")]
        texts += [e.text or "" for e in sheet.iter("column") if e.text]
        used = [m for text in texts for m in reference.findall(text)]
        assert used, name
        for ds_name, instance in used:
            assert ds_name == source and instance in instances, (name, ds_name, instance)
        assert sheet.findtext(".//rows") and sheet.findtext(".//cols"), name


def test_the_dashboards_mirror_supersets_and_show_every_sheet_once():
    root = _workbook()
    sheets = [s.get("name") for s in root.findall("./worksheets/worksheet")]
    boards = root.findall("./dashboards/dashboard")
    assert [b.get("name") for b in boards] == TITLES
    on_boards = [z.get("name") for b in boards for z in b.iter("zone") if z.get("name")]
    assert sorted(on_boards) == sorted(sheets)
    assert len(set(sheets)) == len(sheets)
    windows = {(w.get("class"), w.get("name")) for w in root.iter("window")}
    assert windows == {("dashboard", t) for t in TITLES} | {("worksheet", s) for s in sheets}


def test_the_settings_connection_reaches_the_files():
    text = render_workbook(Connection("db.example", 6543, "analytics", "bi_reader"))
    [conn] = {
        (c.get("server"), c.get("port"), c.get("dbname"))
        for c in ET.fromstring(text).iter("connection")
        if c.get("class") == "postgres"
    }
    assert conn == ("db.example", "6543", "analytics")


def test_every_mart_type_has_a_tableau_and_a_hyper_type():
    """The extract copies every mart, the workbook maps some: each type must be known to both."""
    types = set()
    for path in MARTS_DIR.glob("*.yml"):
        for model in yaml.safe_load(path.read_text(encoding="utf-8"))["models"]:
            types |= {c["data_type"] for c in model["columns"]}
    assert types <= set(TABLEAU_TYPES), types - set(TABLEAU_TYPES)
    for data_type in types:
        assert hyper_type(MartColumn("x", data_type)) is not None
    with pytest.raises(ValueError, match="no Hyper type"):
        hyper_type(MartColumn("x", "jsonb"))


def _exposures() -> dict[str, dict]:
    doc = yaml.safe_load(EXPOSURES.read_text(encoding="utf-8"))
    return {e["name"]: e for e in doc["exposures"]}


def _refs(exposure: dict) -> set[str]:
    return {re.fullmatch(r"ref\('(\w+)'\)", d)[1] for d in exposure["depends_on"]}  # type: ignore[index]


def _superset_reads() -> dict[str, tuple[str, set[str]]]:
    """Each Superset dashboard of the bundle: its slug and the marts its charts' datasets read."""
    datasets = {}
    for path in SUPERSET_BUNDLE.glob("datasets/*/*.yaml"):
        dataset = yaml.safe_load(path.read_text(encoding="utf-8"))
        read = set(re.findall(r"\bmarts\.(\w+)", dataset.get("sql") or ""))
        datasets[dataset["uuid"]] = read or {dataset["table_name"]}
    charts = {}
    for path in SUPERSET_BUNDLE.glob("charts/*.yaml"):
        chart = yaml.safe_load(path.read_text(encoding="utf-8"))
        charts[chart["uuid"]] = datasets[chart["dataset_uuid"]]
    dashboards = {}
    for path in SUPERSET_BUNDLE.glob("dashboards/*.yaml"):
        board = yaml.safe_load(path.read_text(encoding="utf-8"))
        shown = [
            item["meta"]["uuid"]
            for item in board["position"].values()
            if isinstance(item, dict) and item.get("type") == "CHART"
        ]
        read = set().union(*(charts[uuid] for uuid in shown))
        dashboards[board["dashboard_title"]] = (board["slug"], read)
    return dashboards


def test_exposures_name_each_superset_dashboard_and_the_marts_it_reads():
    superset = [e for e in _exposures().values() if e["name"].startswith("superset_")]
    assert [e["label"] for e in superset] == TITLES
    reads = _superset_reads()
    assert sorted(reads) == sorted(TITLES)
    for exposure, board in zip(superset, DASHBOARDS, strict=True):
        slug, read = reads[exposure["label"]]
        assert exposure["type"] == "dashboard"
        assert slug == board.slug
        assert exposure["url"] == f"http://127.0.0.1:8088/superset/dashboard/{slug}/"
        assert _refs(exposure) == read, exposure["name"]


def test_the_tableau_exposure_reads_what_the_workbook_maps_and_superset_its_equivalent():
    exposures = _exposures()
    tableau = exposures["tableau_periscope_workbook"]
    assert tableau["type"] == "dashboard"
    assert _refs(tableau) == set(tables_of(STARS))
    stars = {s.name: s for s in STARS}
    for board in DASHBOARDS:
        # Each Tableau dashboard reads the marts its Superset twin reads.
        read = {t for s in SHEETS if s.name in board.sheets for t in stars[s.star].tables}
        [twin] = [e for e in exposures.values() if e.get("label") == board.name]
        assert _refs(twin) == read, board.name
    for exposure in exposures.values():
        for table in _refs(exposure):
            assert (MARTS_DIR / f"{table}.sql").is_file(), table
