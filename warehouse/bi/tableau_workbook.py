"""The Tableau workbook and data sources on the marts (warehouse/bi/tableau/), written as XML
from a small spec.

Each data source is one star: a fact LEFT JOINed to the dimensions its sheets need, every
column of those tables mapped (`<cols>`) to its physical `[table].[column]`. Column names and
types come from the marts' dbt YAML (`dbt_project/models/marts/<table>.yml`, whose contracts
dbt enforces), so a column dbt renames is a column these files no longer find: the integration
test checks every mapped column against `information_schema` as `bi_reader`.

The connection names host, port, database and user (`bi_reader`) and never a password: Tableau
asks for it when the workbook opens. What the sheets show is `warehouse.bi.tableau_sheets`.

`render_workbook` and `render_datasource` are pure (strings from the spec and a connection);
`write_files` is the thin I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from periscope.settings import PROJECT_DIR
from warehouse.bi.tableau_sheets import (
    DASHBOARDS,
    SHEETS,
    STARS,
    Calculation,
    Connection,
    Dashboard,
    Sheet,
    Star,
    Use,
    tables_of,
)

__all__ = [
    "COMMITTED_DIR",
    "MARTS_SCHEMA",
    "TABLEAU_TYPES",
    "WORKBOOK_FILE",
    "datasource_file",
    "mart_columns",
    "missing_columns",
    "physical_columns",
    "relation_tables",
    "render_datasource",
    "render_workbook",
    "write_files",
]

MARTS_SCHEMA = "marts"
MARTS_DIR = PROJECT_DIR / "dbt_project" / "models" / "marts"
COMMITTED_DIR = PROJECT_DIR / "warehouse" / "bi" / "tableau"
WORKBOOK_FILE = "periscope.twb"
_VERSION = "18.1"  # the XML format version Tableau 2020.1+ reads and writes
_CONNECTION = "postgres.periscope"

# Postgres type (as dbt's contracts and information_schema name it) -> Tableau datatype.
TABLEAU_TYPES = {
    "text": "string",
    "character varying": "string",
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "real": "real",
    "double precision": "real",
    "numeric": "real",
    "boolean": "boolean",
    "date": "date",
    "timestamp with time zone": "datetime",
    "timestamp without time zone": "datetime",
}


# --- the marts' columns ----------------------------------------------------------------------
def mart_columns(
    tables: Iterable[str], marts_dir: Path = MARTS_DIR
) -> dict[str, list[tuple[str, str]]]:
    """(column, Postgres type) of each mart, in the order its dbt YAML declares them."""
    columns = {}
    for table in tables:
        doc = yaml.safe_load((marts_dir / f"{table}.yml").read_text(encoding="utf-8"))
        [model] = [m for m in doc["models"] if m["name"] == table]
        columns[table] = [(c["name"], c["data_type"]) for c in model["columns"]]
    return columns


def _fields(star: Star, columns: Mapping[str, Sequence[tuple[str, str]]]) -> list[_Field]:
    """The star's fields: every column of its tables, a later table's clashing name suffixed
    with its table as Tableau does ("source (dim_entity)")."""
    fields: list[_Field] = []
    taken: set[str] = set()
    for table in star.tables:
        for column, pg_type in columns[table]:
            name = column if column not in taken else f"{column} ({table})"
            taken.add(name)
            fields.append(_Field(name, table, column, TABLEAU_TYPES[pg_type]))
    return fields


@dataclass(frozen=True)
class _Field:
    name: str
    table: str
    column: str
    datatype: str

    @property
    def role(self) -> str:
        # Counts and real numbers are measured; keys, hours, horizons and versions slice.
        measured = self.datatype == "real" or (
            self.datatype == "integer" and self.column.endswith("_count")
        )
        return "measure" if measured else "dimension"

    @property
    def kind(self) -> str:
        if self.role == "measure":
            return "quantitative"
        return "ordinal" if self.datatype in ("integer", "date", "datetime") else "nominal"


# --- XML -------------------------------------------------------------------------------------
def _caption(column: str) -> str:
    return column.replace("_", " ").capitalize()


def _connection_xml(conn: Connection) -> ET.Element:
    return ET.Element(
        "connection",
        {
            "authentication": "username-password",
            "class": "postgres",
            "dbname": conn.database,
            "odbc-native-protocol": "",
            "one-time-sql": "",
            "port": str(conn.port),
            "schema": MARTS_SCHEMA,
            "server": conn.host,
            "sslmode": "",
            "username": conn.user,
        },
    )


def _table_relation(table: str) -> ET.Element:
    return ET.Element(
        "relation",
        {
            "connection": _CONNECTION,
            "name": table,
            "table": f"[{MARTS_SCHEMA}].[{table}]",
            "type": "table",
        },
    )


def _relation(star: Star) -> ET.Element:
    """The fact, then each dimension LEFT JOINed to what came before (Tableau nests joins)."""
    relation = _table_relation(star.fact)
    for join in star.joins:
        joined = ET.Element("relation", {"join": "left", "type": "join"})
        clause = ET.SubElement(joined, "clause", {"type": "join"})
        equal = ET.SubElement(clause, "expression", {"op": "="})
        ET.SubElement(equal, "expression", {"op": f"[{star.fact}].[{join.fact_column}]"})
        ET.SubElement(equal, "expression", {"op": f"[{join.table}].[{join.column}]"})
        joined.append(relation)
        joined.append(_table_relation(join.table))
        relation = joined
    return relation


# Columns Tableau places on a map: with these roles, latitude and longitude on the shelves draw
# a map instead of a scatter plot.
_GEOGRAPHIC_ROLES = {
    "latitude": "[Geographical].[Latitude]",
    "longitude": "[Geographical].[Longitude]",
}


def _column_xml(f: _Field) -> ET.Element:
    attributes = {
        "caption": _caption(f.column)
        if f.name == f.column
        else f"{_caption(f.column)} ({f.table})",
        "datatype": f.datatype,
        "name": f"[{f.name}]",
        "role": f.role,
        "type": f.kind,
    }
    if f.column in _GEOGRAPHIC_ROLES:
        attributes["semantic-role"] = _GEOGRAPHIC_ROLES[f.column]
    return ET.Element("column", attributes)


def _calculation_xml(calc: Calculation) -> ET.Element:
    column = ET.Element(
        "column",
        {
            "caption": calc.caption,
            "datatype": "real",
            "name": f"[{calc.name}]",
            "role": "measure",
            "type": "quantitative",
        },
    )
    ET.SubElement(column, "calculation", {"class": "tableau", "formula": calc.formula})
    return column


def _datasource_xml(
    star: Star, conn: Connection, columns: Mapping[str, Sequence[tuple[str, str]]]
) -> ET.Element:
    source = ET.Element(
        "datasource",
        {"caption": star.caption, "inline": "true", "name": star.datasource, "version": _VERSION},
    )
    federated = ET.SubElement(source, "connection", {"class": "federated"})
    named = ET.SubElement(federated, "named-connections")
    named_connection = ET.SubElement(
        named, "named-connection", {"caption": conn.host, "name": _CONNECTION}
    )
    named_connection.append(_connection_xml(conn))
    federated.append(_relation(star))
    fields = _fields(star, columns)
    cols = ET.SubElement(federated, "cols")
    for f in fields:
        ET.SubElement(cols, "map", {"key": f"[{f.name}]", "value": f"[{f.table}].[{f.column}]"})
    for f in fields:
        source.append(_column_xml(f))
    for calc in star.calculations:
        source.append(_calculation_xml(calc))
    return source


_DERIVATION_PREFIX = {
    "None": "none",
    "Avg": "avg",
    "Max": "max",
    "Sum": "sum",
    "User": "usr",
    "Hour-Trunc": "thr",
    "Day-Trunc": "tdy",
}


def _instance_type(use: Use, kinds: Mapping[str, str]) -> str:
    """nominal, ordinal or quantitative: a discrete field keeps its own kind, a truncated date
    on a discrete shelf is ordered, anything continuous is quantitative."""
    if not use.discrete:
        return "quantitative"
    return kinds[use.field] if use.derivation == "None" else "ordinal"


def _instance(use: Use, kinds: Mapping[str, str]) -> str:
    """Tableau's column-instance name, e.g. [avg:value_mean:qk] or [none:measure:nk]."""
    suffix = {"nominal": "nk", "ordinal": "ok", "quantitative": "qk"}[_instance_type(use, kinds)]
    return f"[{_DERIVATION_PREFIX[use.derivation]}:{use.field}:{suffix}]"


def _shelf(star: Star, uses: Sequence[Use], kinds: Mapping[str, str]) -> str:
    """A shelf's text: fields nested with `/` (Tableau's syntax for a row of headers)."""
    refs = [f"[{star.datasource}].{_instance(u, kinds)}" for u in uses]
    if not refs:
        return ""
    return refs[0] if len(refs) == 1 else "(" + " / ".join(refs) + ")"


def _sheet_uses(sheet: Sheet) -> list[Use]:
    uses = [*sheet.cols, *sheet.rows]
    if sheet.color:
        uses.append(sheet.color)
    if sheet.sort_desc_by:
        uses.extend(sheet.sort_desc_by)
    if sheet.only_true:
        uses.append(Use(sheet.only_true))
    if sheet.top:
        uses.append(sheet.top[0])
    return list(dict.fromkeys(uses))


def _formula_fields(calc: Calculation) -> list[str]:
    """The fields a formula reads: "AVG([abs_error])" reads abs_error."""
    return re.findall(r"\[([^\]]+)\]", calc.formula)


def _worksheet_xml(
    sheet: Sheet, star: Star, columns: Mapping[str, Sequence[tuple[str, str]]]
) -> ET.Element:
    by_name = {f.name: f for f in _fields(star, columns)}
    calcs = {c.name: c for c in star.calculations}
    kinds = {name: f.kind for name, f in by_name.items()} | {c: "quantitative" for c in calcs}
    ds = star.datasource
    worksheet = ET.Element("worksheet", {"name": sheet.name})
    table = ET.SubElement(worksheet, "table")
    view = ET.SubElement(table, "view")
    sources = ET.SubElement(view, "datasources")
    ET.SubElement(sources, "datasource", {"caption": star.caption, "name": ds})
    deps = ET.SubElement(view, "datasource-dependencies", {"datasource": ds})
    uses = _sheet_uses(sheet)
    # A sheet depends on its fields and on the columns its calculations read.
    needed = {u.field for u in uses}
    needed |= {ref for u in uses if u.field in calcs for ref in _formula_fields(calcs[u.field])}
    for name in sorted(needed):
        deps.append(_calculation_xml(calcs[name]) if name in calcs else _column_xml(by_name[name]))
    for use in uses:
        ET.SubElement(
            deps,
            "column-instance",
            {
                "column": f"[{use.field}]",
                "derivation": use.derivation,
                "name": _instance(use, kinds),
                "pivot": "key",
                "type": _instance_type(use, kinds),
            },
        )
    if sheet.only_true:
        level = _instance(Use(sheet.only_true), kinds)
        flt = ET.SubElement(view, "filter", {"class": "categorical", "column": f"[{ds}].{level}"})
        ET.SubElement(
            flt,
            "groupfilter",
            {
                "function": "member",
                "level": level,
                "member": "true",
                "user:ui-domain": "database",
                "user:ui-enumeration": "inclusive",
                "user:ui-marker": "enumerate",
            },
        )
    if sheet.top:
        use, count, formula = sheet.top
        level = _instance(use, kinds)
        flt = ET.SubElement(view, "filter", {"class": "categorical", "column": f"[{ds}].{level}"})
        end = ET.SubElement(
            flt,
            "groupfilter",
            {
                "count": str(count),
                "end": "top",
                "function": "end",
                "units": "records",
                "user:ui-marker": "end",
                "user:ui-top-by-field": "true",
            },
        )
        order = ET.SubElement(
            end, "groupfilter", {"direction": "DESC", "expression": formula, "function": "order"}
        )
        ET.SubElement(order, "groupfilter", {"function": "level-members", "level": level})
    filtered = [f.get("column") for f in view.findall("filter")]
    if filtered:
        slices = ET.SubElement(view, "slices")
        for column in filtered:
            ET.SubElement(slices, "column").text = column
    if sheet.sort_desc_by:
        sorted_use, by = sheet.sort_desc_by
        ET.SubElement(
            view,
            "sort",
            {
                "class": "computed",
                "column": f"[{ds}].{_instance(sorted_use, kinds)}",
                "direction": "DESC",
                "using": f"[{ds}].{_instance(by, kinds)}",
            },
        )
    ET.SubElement(view, "aggregation", {"value": "true"})
    ET.SubElement(table, "style")
    panes = ET.SubElement(table, "panes")
    pane = ET.SubElement(
        panes, "pane", {"selection-relaxation-option": "selection-relaxation-allow"}
    )
    pane_view = ET.SubElement(pane, "view")
    ET.SubElement(pane_view, "breakdown", {"value": "auto"})
    ET.SubElement(pane, "mark", {"class": sheet.mark})
    if sheet.color:
        encodings = ET.SubElement(pane, "encodings")
        ET.SubElement(encodings, "color", {"column": f"[{ds}].{_instance(sheet.color, kinds)}"})
    ET.SubElement(table, "rows").text = _shelf(star, sheet.rows, kinds)
    ET.SubElement(table, "cols").text = _shelf(star, sheet.cols, kinds)
    return worksheet


def _dashboard_xml(dashboard: Dashboard) -> ET.Element:
    """Sheets stacked top to bottom; zone sizes are in Tableau's 100,000ths of the dashboard."""
    element = ET.Element("dashboard", {"name": dashboard.name})
    ET.SubElement(element, "style")
    size = {"maxheight": "1000", "maxwidth": "1400", "minheight": "1000", "minwidth": "1400"}
    ET.SubElement(element, "size", size)
    zones = ET.SubElement(element, "zones")
    outer = ET.SubElement(
        zones,
        "zone",
        {"h": "100000", "id": "1", "type-v2": "layout-basic", "w": "100000", "x": "0", "y": "0"},
    )
    height = 100000 // len(dashboard.sheets)
    for i, name in enumerate(dashboard.sheets):
        ET.SubElement(
            outer,
            "zone",
            {
                "h": str(height),
                "id": str(i + 2),
                "name": name,
                "w": "100000",
                "x": "0",
                "y": str(i * height),
            },
        )
    return element


def _to_text(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return (
        "<?xml version='1.0' encoding='utf-8' ?>\n" + ET.tostring(root, encoding="unicode") + "\n"
    )


def render_datasource(
    star: Star, conn: Connection, columns: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> str:
    """One star as a `.tds` file (the same data source the workbook embeds)."""
    columns = columns if columns is not None else mart_columns(star.tables)
    root = _datasource_xml(star, conn, columns)
    root.set("formatted-name", star.caption)
    root.set("source-platform", "linux")
    return _to_text(root)


def render_workbook(
    conn: Connection,
    *,
    stars: Sequence[Star] = STARS,
    sheets: Sequence[Sheet] = SHEETS,
    dashboards: Sequence[Dashboard] = DASHBOARDS,
    columns: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> str:
    """The `.twb` workbook: every star as an embedded data source, the sheets, the dashboards."""
    columns = columns if columns is not None else mart_columns(tables_of(stars))
    by_name = {s.name: s for s in stars}
    root = ET.Element(
        "workbook",
        {
            "source-platform": "linux",
            "version": _VERSION,
            "xmlns:user": "http://www.tableausoftware.com/xml/user",
        },
    )
    ET.SubElement(root, "preferences")
    sources = ET.SubElement(root, "datasources")
    for star in stars:
        sources.append(_datasource_xml(star, conn, columns))
    worksheets = ET.SubElement(root, "worksheets")
    for sheet in sheets:
        worksheets.append(_worksheet_xml(sheet, by_name[sheet.star], columns))
    boards = ET.SubElement(root, "dashboards")
    for dashboard in dashboards:
        boards.append(_dashboard_xml(dashboard))
    windows = ET.SubElement(root, "windows", {"source-height": "30"})
    for dashboard in dashboards:
        ET.SubElement(windows, "window", {"class": "dashboard", "name": dashboard.name})
    for sheet in sheets:
        ET.SubElement(
            windows, "window", {"class": "worksheet", "hidden": "true", "name": sheet.name}
        )
    return _to_text(root)


def datasource_file(star: Star) -> str:
    return f"periscope_{star.name}.tds"


def write_files(conn: Connection, out_dir: Path) -> list[Path]:
    """Write the workbook and one `.tds` per star into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = mart_columns(tables_of(STARS))
    texts = {WORKBOOK_FILE: render_workbook(conn, columns=columns)}
    for star in STARS:
        texts[datasource_file(star)] = render_datasource(star, conn, columns)
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


# --- reading the files back (what the tests check) -------------------------------------------
_PHYSICAL = re.compile(r"^\[([^\]]+)\]\.\[([^\]]+)\]$")


def physical_columns(xml_text: str) -> set[tuple[str, str, str]]:
    """(table, column, Tableau datatype) of every physical column a .twb or .tds maps, read
    from the XML: the `<cols>` maps joined to the data source's `<column>` types."""
    root = ET.fromstring(xml_text)
    sources = [root] if root.tag == "datasource" else root.findall("./datasources/datasource")
    found = set()
    for source in sources:
        types = {c.get("name"): c.get("datatype", "") for c in source.findall("./column")}
        for mapping in source.findall("./connection/cols/map"):
            match = _PHYSICAL.match(mapping.get("value", ""))
            if not match:
                raise ValueError(f"not a [table].[column] mapping: {mapping.get('value')}")
            found.add((match[1], match[2], types.get(mapping.get("key"), "")))
    return found


def relation_tables(xml_text: str) -> set[tuple[str, str]]:
    """(schema, table) of every table relation in a .twb or .tds."""
    root = ET.fromstring(xml_text)
    found = set()
    for relation in root.iter("relation"):
        if relation.get("type") == "table":
            match = _PHYSICAL.match(relation.get("table", ""))
            if not match:
                raise ValueError(f"not a [schema].[table] relation: {relation.get('table')}")
            found.add((match[1], match[2]))
    return found


def missing_columns(xml_text: str, catalog: Mapping[tuple[str, str], str]) -> list[str]:
    """What a .twb or .tds reads that `catalog` ((table, column) of schema marts -> Postgres
    type, as information_schema says) lacks or types differently; empty when all is there."""
    problems = []
    tables = {table for table, _ in catalog}
    for schema, table in sorted(relation_tables(xml_text)):
        if schema != MARTS_SCHEMA or table not in tables:
            problems.append(f"table {schema}.{table} not found")
    for table, column, datatype in sorted(physical_columns(xml_text)):
        pg_type = catalog.get((table, column))
        if pg_type is None:
            problems.append(f"column {MARTS_SCHEMA}.{table}.{column} not found")
        elif TABLEAU_TYPES.get(pg_type) != datatype:
            problems.append(
                f"column {MARTS_SCHEMA}.{table}.{column} is {pg_type}, the file says {datatype}"
            )
    return problems
