"""`periscope sql`: run SQL over the lake (DuckDB) and write the result as a table, CSV, JSON or Parquet."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from periscope.errors import PeriscopeError
from periscope.lake import LIST_TABLES_HINT, LakeTable

if TYPE_CHECKING:
    import duckdb

__all__ = ["Preview", "preview", "run", "sql_error", "table_for_version", "write"]


@dataclass(frozen=True)
class Preview:
    """The first rows of a result, for the terminal."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool


def run(con: duckdb.DuckDBPyConnection, query: str) -> duckdb.DuckDBPyRelation | None:
    """The result of `query` (the last statement's), or None for a statement without rows."""
    import duckdb

    try:
        return con.sql(query)
    except duckdb.Error as exc:
        raise sql_error(exc) from None


def preview(rel: duckdb.DuckDBPyRelation, limit: int) -> Preview:
    """At most `limit` rows; reads one more to know whether there were more."""
    import duckdb

    try:
        rows = rel.fetchmany(limit + 1)
    except duckdb.Error as exc:
        raise sql_error(exc) from None
    return Preview(list(rel.columns), rows[:limit], truncated=len(rows) > limit)


def write(
    rel: duckdb.DuckDBPyRelation,
    fmt: Literal["csv", "json", "parquet"],
    output: Path | None,
    *,
    out: TextIO | None = None,
) -> None:
    """Write the result to `output`, or to `out` (default stdout) for CSV and JSON.

    CSV has a header row; JSON is one array of objects.
    """
    if output is not None:
        _copy(rel, fmt, output)
        return
    if fmt == "parquet":
        raise PeriscopeError("Parquet is binary: write it to a file with --output")
    # DuckDB writes files, not Python streams: go through a temporary file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"result.{fmt}"
        _copy(rel, fmt, path)
        text = path.read_text(encoding="utf-8")
    stream = out or sys.stdout
    stream.write(text if text.endswith("\n") else text + "\n")  # DuckDB ends JSON without one


def _copy(rel: duckdb.DuckDBPyRelation, fmt: str, path: Path) -> None:
    import duckdb

    options = {
        "csv": "FORMAT csv, HEADER",
        "json": "FORMAT json, ARRAY true",
        "parquet": "FORMAT parquet",
    }
    target = str(path).replace("'", "''")
    try:
        # COPY the relation rather than `COPY (<query>)`, which refuses DESCRIBE or SHOW
        rel.query("periscope_result", f"COPY periscope_result TO '{target}' ({options[fmt]})")
    except duckdb.Error as exc:
        raise sql_error(exc) from None


def table_for_version(query: str, lake_tables: list[LakeTable]) -> str:
    """The one lake table `query` names, which `--as-of-version` applies to."""
    import duckdb

    # Parse only: binding would need the views, and DuckDB's get_table_names expands them.
    serialized = duckdb.sql("select json_serialize_sql($q)", params={"q": query}).fetchone()
    ast = json.loads(serialized[0])  # type: ignore[index]
    if ast["error"]:
        raise PeriscopeError(f"Parser Error: {ast['error_message']}")
    named = {f"{schema}.{name}".lower() for schema, name in _base_tables(ast)}
    lake_named = sorted(named & {t.name for t in lake_tables})
    if len(lake_named) != 1:
        found = ", ".join(lake_named) or "no lake table"
        raise PeriscopeError(
            f"--as-of-version applies to one table and the query names {found}; "
            "choose it with --table <layer>.<table>"
        )
    return lake_named[0]


def _base_tables(node: object) -> Iterator[tuple[str, str]]:
    """(schema, table) of every table reference in a serialized DuckDB query."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE":
            yield node["schema_name"], node["table_name"]
        for child in node.values():
            yield from _base_tables(child)
    elif isinstance(node, list):
        for child in node:
            yield from _base_tables(child)


def sql_error(exc: Exception) -> PeriscopeError:
    """DuckDB's message on one line, without the echo of the query; unknown tables get a hint."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):  # DuckDB then repeats the query and points at the error
            break
        if line.strip():
            lines.append(line.strip())
    message = " ".join(lines)
    if "Table with name" in message and "does not exist" in message:
        message += f" ({LIST_TABLES_HINT})"
    return PeriscopeError(message)
