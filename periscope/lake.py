"""Read lake tables without Spark (delta-rs): row counts and small reads for audits and tests."""

from __future__ import annotations

import pyarrow
from deltalake import DeltaTable

__all__ = ["delta_row_count", "read_delta", "row_count_or_zero"]


def delta_row_count(path: str) -> int:
    """Rows in the current version of a Delta table, from the log's file statistics."""
    actions = DeltaTable(path).get_add_actions(flatten=True)
    return int(sum(actions.column("num_records").to_pylist()))


def row_count_or_zero(path: str) -> int:
    """Like `delta_row_count`, but 0 for a table that does not exist yet."""
    from deltalake.exceptions import TableNotFoundError

    try:
        return delta_row_count(path)
    except TableNotFoundError:
        return 0


def read_delta(path: str, columns: list[str] | None = None) -> pyarrow.Table:
    """The current version of a Delta table as an Arrow table.

    Scans single-threaded: Arrow's scanner threads can outlive the interpreter and abort
    the process at exit (delta-io/delta-rs#2184), which would fail a CLI or a test run.
    """
    return DeltaTable(path).to_pyarrow_dataset().to_table(columns=columns, use_threads=False)
