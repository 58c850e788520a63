"""Lake rows as Kafka messages: one compact JSON object per row, keyed by a column."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

__all__ = ["json_messages"]


def json_messages(
    rows: pa.Table, key_column: str, *, value_columns: Sequence[str] | None = None
) -> list[tuple[bytes | None, bytes]]:
    """(key, JSON object of `value_columns`) per row; all columns by default.

    DuckDB writes the JSON (timestamps ISO 8601, nested lists kept); a string key is
    UTF-8 encoded, a binary key is sent as it is.

    >>> json_messages(pa.table({"station_id": ["a"], "value": [1.5]}), "station_id")
    [(b'a', b'{"station_id":"a","value":1.5}')]
    """
    import duckdb

    names = list(value_columns or rows.column_names)
    fields = ", ".join(f'"{name}" := "{name}"' for name in names)
    con = duckdb.connect()
    try:
        con.sql("set timezone = 'UTC'")
        con.register("message_rows", rows)
        encoded = con.sql(
            f'select "{key_column}", to_json(struct_pack({fields}))::varchar from message_rows'
        ).fetchall()
    finally:
        con.close()
    return [
        (key.encode() if isinstance(key, str) else key, value.encode()) for key, value in encoded
    ]
