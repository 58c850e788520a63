"""A Tableau `.hyper` extract of the marts, read as `bi_reader` (what BI tools may see).

Each table of schema `marts` becomes the table of the same name in the extract's schema
`marts`, with the Hyper types of its Postgres columns. Rows travel as CSV: Postgres'
`COPY ... TO STDOUT` into a temporary file, Hyper's `COPY ... FROM` it (both read an unquoted
empty field as NULL and a quoted one as the empty string), which keeps every value exact and
is far faster than inserting row by row. The extract is written beside its destination and
renamed into place, so a reader never opens half an extract.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from periscope.settings import Settings

__all__ = ["MartColumn", "extract_counts", "hyper_type", "mart_schema", "write_extract"]

MARTS_SCHEMA = "marts"


@dataclass(frozen=True)
class MartColumn:
    """A column as information_schema describes it."""

    name: str
    data_type: str
    precision: int | None = None
    scale: int | None = None


def hyper_type(column: MartColumn):  # -> tableauhyperapi.SqlType (imported lazily: it is large)
    """The Hyper type that holds a Postgres column's values."""
    from tableauhyperapi import SqlType

    simple = {
        "text": SqlType.text,
        "character varying": SqlType.text,
        "smallint": SqlType.small_int,
        "integer": SqlType.int,
        "bigint": SqlType.big_int,
        "real": SqlType.double,
        "double precision": SqlType.double,
        "boolean": SqlType.bool,
        "date": SqlType.date,
        "timestamp with time zone": SqlType.timestamp_tz,
        "timestamp without time zone": SqlType.timestamp,
    }
    if column.data_type in simple:
        return simple[column.data_type]()
    if column.data_type == "numeric":
        # Hyper's numeric holds 18 digits; an unbounded Postgres numeric becomes a double.
        if column.precision is not None and column.precision <= 18:
            return SqlType.numeric(column.precision, column.scale or 0)
        return SqlType.double()
    raise ValueError(f"no Hyper type for Postgres type {column.data_type} ({column.name})")


def mart_schema(cursor) -> dict[str, list[MartColumn]]:
    """Every table of `marts` the connected role can read, with its columns in order."""
    cursor.execute(
        "select c.table_name, c.column_name, c.data_type, c.numeric_precision, c.numeric_scale "
        "from information_schema.columns c join information_schema.tables t "
        "using (table_schema, table_name) "
        "where c.table_schema = %s and t.table_type = 'BASE TABLE' "
        "order by c.table_name, c.ordinal_position",
        (MARTS_SCHEMA,),
    )
    tables: dict[str, list[MartColumn]] = {}
    for table, name, data_type, precision, scale in cursor.fetchall():
        tables.setdefault(table, []).append(MartColumn(name, data_type, precision, scale))
    return tables


def write_extract(
    settings: Settings,
    path: Path,
    *,
    on_table: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Write every mart into the Hyper file `path` as `bi_reader`; returns rows per table.

    `on_table(table, done, total)` is called after each table (for a progress bar)."""
    from tableauhyperapi import (
        Connection,
        CreateMode,
        HyperProcess,
        SchemaName,
        TableDefinition,
        TableName,
        Telemetry,
        escape_string_literal,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    counts: dict[str, int] = {}
    with (
        psycopg2.connect(settings.postgres_dsn("bi")) as pg,
        pg.cursor() as cursor,
        tempfile.TemporaryDirectory(prefix="periscope-hyper-") as scratch,
    ):
        tables = mart_schema(cursor)
        if not tables:
            raise RuntimeError(
                "schema marts has no table bi_reader can read: run periscope dbt build"
            )
        csv_path = Path(scratch) / "table.csv"
        # Hyper's own log goes to the scratch folder, not the working directory.
        parameters = {"log_dir": scratch}
        with (
            HyperProcess(
                Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters=parameters
            ) as hyper,
            Connection(hyper.endpoint, str(partial), CreateMode.CREATE_AND_REPLACE) as extract,
        ):
            extract.catalog.create_schema(SchemaName(MARTS_SCHEMA))
            for done, (table, columns) in enumerate(sorted(tables.items()), start=1):
                definition = TableDefinition(
                    TableName(MARTS_SCHEMA, table),
                    [TableDefinition.Column(c.name, hyper_type(c)) for c in columns],
                )
                extract.catalog.create_table(definition)
                with csv_path.open("w", encoding="utf-8") as out:
                    cursor.copy_expert(_copy_out_sql(table, columns), out)
                counts[table] = extract.execute_command(
                    f"COPY {definition.table_name} FROM {escape_string_literal(str(csv_path))} "
                    "WITH (format csv, header true)"
                )
                if on_table:
                    on_table(table, done, len(tables))
    partial.replace(path)
    return counts


def _copy_out_sql(table: str, columns: Sequence[MartColumn]) -> str:
    names = ", ".join(_ident(c.name) for c in columns)
    source = f"{_ident(MARTS_SCHEMA)}.{_ident(table)}"
    # Timestamps carry their UTC offset in the CSV: Hyper reads the same instants.
    return f"copy (select {names} from {source}) to stdout with (format csv, header true)"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def extract_counts(path: Path) -> Mapping[str, int]:
    """Rows per table of schema `marts` in a Hyper file (what the test compares)."""
    from tableauhyperapi import Connection, HyperProcess, SchemaName, Telemetry

    with (
        tempfile.TemporaryDirectory(prefix="periscope-hyper-") as scratch,
        HyperProcess(
            Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": scratch}
        ) as hyper,
        Connection(hyper.endpoint, str(path)) as extract,
    ):
        return {
            name.name.unescaped: extract.execute_scalar_query(f"select count(*) from {name}")
            for name in extract.catalog.get_table_names(SchemaName(MARTS_SCHEMA))
        }
