"""SQL the loader runs, generated from Arrow schemas and table keys (pure strings, no connection).

Every lake table gets two bookkeeping columns: `_delta_version` (the Delta version its row
came from) and `_loaded_at` (when the load committed it; dbt's incremental models and source
freshness read it).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

__all__ = [
    "LAKE_SCHEMA",
    "STATE_TABLE",
    "add_columns_sql",
    "copy_sql",
    "create_state_sql",
    "create_table_sql",
    "delete_missing_children_sql",
    "ident",
    "pg_columns",
    "pg_type",
    "stage_sql",
    "upsert_sql",
    "upsert_state_sql",
]

LAKE_SCHEMA = "lake"
STATE_TABLE = "_load_state"
BOOKKEEPING = ('"_delta_version" bigint not null', '"_loaded_at" timestamptz not null')


def ident(*parts: str) -> str:
    """A quoted, dotted identifier.

    >>> ident("lake", 'we"ird')
    '"lake"."we""ird"'
    """
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def pg_type(arrow_type: pa.DataType) -> str:
    """The Postgres type that holds an Arrow type without loss.

    >>> pg_type(pa.timestamp("us", tz="UTC")), pg_type(pa.float64())
    ('timestamptz', 'double precision')
    """
    t = arrow_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return "smallint"
    if pa.types.is_int32(t):
        return "integer"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_float32(t):
        return "real"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision}, {t.scale})"
    if pa.types.is_date(t):
        return "date"
    raise ValueError(f"no Postgres type for Arrow type {t}")


def pg_columns(schema: pa.Schema, names: Sequence[str]) -> list[tuple[str, str]]:
    """(column, Postgres type) for the named columns of an Arrow schema, in that order."""
    return [(name, pg_type(schema.field(name).type)) for name in names]


def create_table_sql(table: str, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> str:
    """`create table if not exists` in the lake schema, the key as primary key."""
    body = [f"{ident(name)} {kind}" for name, kind in columns]
    body += [*BOOKKEEPING, f"primary key ({', '.join(ident(k) for k in key)})"]
    return f"create table if not exists {ident(LAKE_SCHEMA, table)} ({', '.join(body)})"


def add_columns_sql(table: str, columns: Sequence[tuple[str, str]]) -> list[str]:
    """Columns a Delta table gained since the lake table was made (schema evolution adds only)."""
    return [
        f"alter table {ident(LAKE_SCHEMA, table)} add column if not exists {ident(name)} {kind}"
        for name, kind in columns
    ]


def stage_sql(table: str, stage: str, columns: Sequence[str]) -> str:
    """An empty temporary copy of the table's data columns, dropped at commit."""
    cols = ", ".join(ident(c) for c in columns)
    return (
        f"create temporary table {ident(stage)} on commit drop as "
        f"select {cols} from {ident(LAKE_SCHEMA, table)} with no data"
    )


def copy_sql(stage: str, columns: Sequence[str]) -> str:
    """COPY of a CSV with a header line (pyarrow's: nulls empty, empty strings quoted)."""
    cols = ", ".join(ident(c) for c in columns)
    return f"copy {ident(stage)} ({cols}) from stdin with (format csv, header true)"


def upsert_sql(table: str, stage: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """Insert the staged rows; a row whose key exists is replaced if any value differs.

    Unchanged rows keep their `_delta_version` and `_loaded_at`: a MERGE that rewrote a
    Delta file copies its untouched rows too, and dbt should not redo those.
    Takes two parameters: `%(version)s` and `%(loaded_at)s`.
    """
    cols = ", ".join(ident(c) for c in columns)
    values = [c for c in columns if c not in key]
    updates = [f"{ident(c)} = excluded.{ident(c)}" for c in values]
    updates += [
        '"_delta_version" = excluded."_delta_version"',
        '"_loaded_at" = excluded."_loaded_at"',
    ]
    old = ", ".join(f"t.{ident(c)}" for c in values)
    new = ", ".join(f"excluded.{ident(c)}" for c in values)
    return (
        f'insert into {ident(LAKE_SCHEMA, table)} as t ({cols}, "_delta_version", "_loaded_at") '
        f"select {cols}, %(version)s, %(loaded_at)s from {ident(stage)} "
        f"on conflict ({', '.join(ident(k) for k in key)}) do update set {', '.join(updates)} "
        f"where (row({old}) is distinct from row({new}))"
    )


def delete_missing_children_sql(
    table: str, parent_stage: str, parent_key: Sequence[str], child_stage: str, key: Sequence[str]
) -> str:
    """Delete the child rows of staged parents that the parents no longer have (a re-scored
    window that lost a forecast)."""
    of_parent = " and ".join(f"t.{ident(k)} = s.{ident(k)}" for k in parent_key)
    same = " and ".join(f"c.{ident(k)} = t.{ident(k)}" for k in key)
    return (
        f"delete from {ident(LAKE_SCHEMA, table)} as t using {ident(parent_stage)} as s "
        f"where {of_parent} and not exists (select from {ident(child_stage)} as c where {same})"
    )


def create_state_sql() -> str:
    """The loader's control table: one row per Delta table, its high-water mark and counts."""
    return (
        f"create table if not exists {ident(LAKE_SCHEMA, STATE_TABLE)} ("
        "table_name text primary key, "
        "source text not null, "
        "delta_table text not null, "
        "delta_version bigint not null, "  # the high-water mark: the Delta version loaded
        "delta_rows bigint not null, "  # rows of the Delta table at that version
        "lake_rows bigint not null, "  # rows of the Postgres table after the load
        "rows_loaded bigint not null, "  # rows copied by the last load (rows of new files)
        "rows_changed bigint not null, "  # of those, rows inserted or changed
        "mode text not null, "
        "loaded_at timestamptz not null)"
    )


def upsert_state_sql() -> str:
    """Record a load; parameters named after the control table's columns."""
    columns = (
        "table_name",
        "source",
        "delta_table",
        "delta_version",
        "delta_rows",
        "lake_rows",
        "rows_loaded",
        "rows_changed",
        "mode",
        "loaded_at",
    )
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"insert into {ident(LAKE_SCHEMA, STATE_TABLE)} ({', '.join(columns)}) values ({values}) "
        f"on conflict (table_name) do update set {updates}"
    )
