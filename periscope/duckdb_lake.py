"""DuckDB connections that can read the lake's Delta tables offline.

DuckDB normally downloads its `delta` extension on first use; here it comes from the
`duckdb-extension-delta` wheel pinned to the same DuckDB version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

__all__ = ["connect"]


def connect(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the delta extension loaded: `select * from delta_scan('<path>')`."""
    import duckdb
    from duckdb_extensions import import_extension

    con = duckdb.connect(database)
    import_extension("delta", con=con)  # installs from the wheel; a no-op once installed
    con.load_extension("delta")
    return con
