"""Read lake tables without Spark: delta-rs for counts and small reads, DuckDB for SQL.

`connect()` gives a DuckDB connection with every lake table as a view `<layer>.<table>`:

    con = connect()
    con.sql("select count(*) from silver.weather_features").fetchall()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlparse

import pyarrow
import pyarrow.compute
import pyarrow.dataset
from deltalake import DeltaTable

from periscope.errors import PeriscopeError

if TYPE_CHECKING:
    import duckdb

    from periscope.settings import Settings

__all__ = [
    "LAYERS",
    "LakeTable",
    "MERGE_TARGET_FILE_BYTES",
    "append_in_time_order",
    "append_once",
    "committed_through",
    "connect",
    "delta_dataset",
    "delta_row_count",
    "merge_once",
    "merge_rows",
    "read_delta",
    "row_count_or_zero",
    "tables",
]

LAYERS = ("bronze", "silver", "gold")
LIST_TABLES_HINT = "list the lake's tables with `periscope sql --tables`"


# The Delta app id under which `periscope score` records, in gold, the last silver batch scored.
GOLD_SCORE_APP_ID = "periscope-score"


def committed_through(path: str, app_id: str) -> int | None:
    """The last version `app_id` recorded in a Delta table's log (None: never wrote)."""
    return DeltaTable(path).transaction_version(app_id)


def _commit(app_id: str, version: int, metadata: dict[str, str] | None) -> Any:
    from deltalake import CommitProperties, Transaction

    return CommitProperties(
        app_transactions=[Transaction(app_id=app_id, version=version)],
        # Also in the commit's info, where `DeltaTable.history()` shows it (benchmarks use it).
        custom_metadata={"txnAppId": app_id, "txnVersion": str(version), **(metadata or {})},
    )


def _conform(table: DeltaTable, rows: pyarrow.Table) -> pyarrow.Table:
    """Rows in the table's column order and types (Spark hands over large strings, for one)."""
    schema = pyarrow.schema(table.schema().to_arrow())
    return rows.select(schema.names).cast(schema)


def append_once(
    path: str,
    rows: pyarrow.Table,
    *,
    app_id: str,
    version: int,
    metadata: dict[str, str] | None = None,
) -> bool:
    """Append rows unless `app_id` already committed `version` (or later) to the table.

    Rows and the (app_id, version) mark go in one commit, so a writer that replays a
    version after a crash adds nothing twice. Returns whether anything was written.
    """
    from deltalake import write_deltalake

    table = DeltaTable(path)
    done = table.transaction_version(app_id)
    if rows.num_rows == 0 or (done is not None and done >= version):
        return False
    write_deltalake(
        table,
        _conform(table, rows),
        mode="append",
        commit_properties=_commit(app_id, version, metadata),
    )
    return True


def retry_lost_commits(*, attempts: int, wait_s: tuple[float, float]):
    """Tenacity's loop for a Delta commit that can lose to a concurrent one.

    A commit that fails delta-rs' conflict check changed nothing, so the attempt may run
    again on the table's newer version; any other error, or the last loss, is raised.
    """
    from deltalake.exceptions import CommitFailedError
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

    return Retrying(
        retry=retry_if_exception_type(CommitFailedError),
        stop=stop_after_attempt(attempts),
        wait=wait_random(*wait_s),
        reraise=True,
    )


def merge_rows(
    path: str,
    rows: pyarrow.Table,
    *,
    keys: list[str],
    app_id: str,
    version: int,
    lower_bound: tuple[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Upsert rows on `keys` and record (app_id, version) in the same commit.

    `lower_bound` (column, value) adds `target.column >= value` to the match condition so
    delta-rs skips files that cannot hold a matching row, and the rows go in sorted by that
    column: the files a MERGE writes then hold neighbouring times (a backlog's 88k windows
    went into six files each spanning the whole month, so every later MERGE of the newest
    windows rewrote one of them, and the warehouse load copied it). Returns the rows inserted
    or updated.
    """
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    if lower_bound is not None:
        column, value = lower_bound
        literal = value.isoformat() if hasattr(value, "isoformat") else value
        predicate = f"t.{column} >= '{literal}' AND {predicate}"
        rows = rows.sort_by([(column, "ascending")])
    # A MERGE reaching a closed file (a late record) can lose to maintenance compacting it
    # (periscope.maintenance); the losing commit changed nothing, so it runs again on the
    # table's new version. Unless the loss was to a writer of the same app id (a second
    # engine on one checkpoint): running again would put this older batch over its.
    app_version = DeltaTable(path).transaction_version(app_id)
    for attempt in retry_lost_commits(attempts=4, wait_s=(0.1, 1.0)):
        with attempt:
            table = DeltaTable(path)
            if (now := table.transaction_version(app_id)) != app_version:
                raise PeriscopeError(
                    f"another writer as {app_id!r} committed version {now} to {path} while "
                    f"this one merged version {version}: is a second engine running?"
                )
            _keep_files_small(table)
            metrics = (
                table.merge(
                    _conform(table, rows),
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    commit_properties=_commit(app_id, version, metadata),
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
    return int(metrics.get("num_target_rows_inserted", 0)) + int(
        metrics.get("num_target_rows_updated", 0)
    )


# A MERGE rewrites every file holding a row it updates, and the rows it leaves alone go into
# the new files with the rest. Upserted tables take the newest windows round after round: with
# one large file, the rows of long-closed windows were rewritten every time and a round grew
# linearly with the table (gold: 0.36 s -> 1.3 s per 5,000-window MERGE after one hour of
# 1,000 stations). Files of about 1 MiB leave closed windows in files the lower bound on
# window_start skips, so a MERGE costs about its own rows however large the table grows.
MERGE_TARGET_FILE_BYTES = 1 << 20


def append_in_time_order(
    path: str, rows: pyarrow.Table, column: str, *, commit_properties: Any = None
) -> None:
    """Append rows sorted by `column` in files of `MERGE_TARGET_FILE_BYTES`: the layout later
    MERGEs keep (`merge_rows`), so the first write of a backlog is not one month-wide file."""
    from deltalake import write_deltalake

    write_deltalake(
        path,
        rows.sort_by([(column, "ascending")]),
        mode="append",
        target_file_size=MERGE_TARGET_FILE_BYTES,
        commit_properties=commit_properties,
    )


def _keep_files_small(table: DeltaTable) -> None:
    """Set the table's target file size for delta-rs writers (once; a metadata-only commit)."""
    wanted = str(MERGE_TARGET_FILE_BYTES)
    if table.metadata().configuration.get("delta.targetFileSize") != wanted:
        table.alter.set_table_properties({"delta.targetFileSize": wanted})


def merge_once(
    path: str,
    rows: pyarrow.Table,
    *,
    keys: list[str],
    app_id: str,
    version: int,
    lower_bound: tuple[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> int | None:
    """`merge_rows`, unless `app_id` already committed `version` (or later) to the table.

    Returns the rows inserted or updated, or None when the version was already committed.
    """
    done = committed_through(path, app_id)
    if done is not None and done >= version:
        return None
    if rows.num_rows == 0:
        return 0
    return merge_rows(
        path,
        rows,
        keys=keys,
        app_id=app_id,
        version=version,
        lower_bound=lower_bound,
        metadata=metadata,
    )


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


def read_delta(
    path: str,
    columns: list[str] | None = None,
    where: pyarrow.compute.Expression | None = None,
    *,
    within: Mapping[str, tuple[Any, Any]] | None = None,
) -> pyarrow.Table:
    """The current version of a Delta table as an Arrow table (the rows matching `where`).

    `within` ({column: (lo, hi)}) names ranges outside which `where` keeps no row, so only
    the files that may hold rows in them are opened (`delta_dataset`); `where` still decides
    each row. Scans single-threaded: Arrow's scanner threads can outlive the interpreter and
    abort the process at exit (delta-io/delta-rs#2184), which would fail a CLI or a test run.
    """
    return delta_dataset(DeltaTable(path), within).to_table(
        columns=columns, filter=where, use_threads=False
    )


# Delta writers may truncate timestamp statistics to the millisecond (Spark does): a file's true
# maximum can lie up to this much above the one its statistics give.
_TIMESTAMP_STATS_SLACK_US = 1_000


def delta_dataset(
    table: DeltaTable, within: Mapping[str, tuple[Any, Any]] | None = None
) -> pyarrow.dataset.Dataset:
    """The table's current files as a pyarrow dataset; with `within` ({column: (lo, hi)}, a
    bound None for none), only the files whose statistics allow a row with lo <= column <= hi
    for every column given (a file without statistics for a column is kept).

    deltalake's own dataset describes every file of the table, about 0.25 ms a file, so a
    live table that gains a file per micro-batch made each narrow read slower than the last
    (1,300 rows out of 1,000 files: 0.26 s). Choosing the files from the log's add actions
    first keeps that read at milliseconds. Tables with partition columns, column mapping,
    reader features or a remote store get deltalake's dataset.
    """
    uri = urlparse(table.table_uri)
    metadata = table.metadata()
    plain = (
        uri.scheme in ("", "file")
        and not metadata.partition_columns
        and metadata.configuration.get("delta.columnMapping.mode", "none") == "none"
        and not table.protocol().reader_features
    )
    if not within or not plain:
        return table.to_pyarrow_dataset()
    actions = pyarrow.table(table.get_add_actions(flatten=True))
    keep = pyarrow.array([True] * actions.num_rows, pyarrow.bool_())
    for column, (lo, hi) in within.items():
        if f"min.{column}" not in actions.column_names:
            continue  # no statistics for it: every file may hold the rows
        low, high = actions[f"min.{column}"], actions[f"max.{column}"]
        if pyarrow.types.is_null(low.type) or pyarrow.types.is_null(high.type):
            continue  # no file has statistics for it (empty files, or only nulls)
        if pyarrow.types.is_timestamp(high.type):
            slack = pyarrow.scalar(_TIMESTAMP_STATS_SLACK_US, pyarrow.duration("us"))
            high = pyarrow.compute.add(high, slack.cast(pyarrow.duration(high.type.unit)))
        if lo is not None:
            may = pyarrow.compute.greater_equal(high, _scalar(lo, high.type))
            keep = pyarrow.compute.and_(keep, pyarrow.compute.fill_null(may, True))
        if hi is not None:
            may = pyarrow.compute.less_equal(low, _scalar(hi, low.type))
            keep = pyarrow.compute.and_(keep, pyarrow.compute.fill_null(may, True))
    root = unquote(uri.path).rstrip("/")
    files = [
        path if path.startswith("/") else f"{root}/{unquote(path)}"
        for path in actions.filter(keep)["path"].to_pylist()
    ]
    schema = pyarrow.schema(table.schema().to_arrow())
    return pyarrow.dataset.dataset(files, schema=schema, format="parquet")


def _scalar(value: Any, type_: pyarrow.DataType) -> pyarrow.Scalar:
    scalar = value if isinstance(value, pyarrow.Scalar) else pyarrow.scalar(value)
    return scalar.cast(type_)


class LakeTable(NamedTuple):
    """A Delta table of the lake, seen in DuckDB as the view `<layer>.<table>`."""

    layer: str
    table: str
    path: str
    version: int

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.table}"


def tables(settings: Settings | None = None) -> list[LakeTable]:
    """Every Delta table under `<lake_root>/{bronze,silver,gold}/`, with its current version.

    A folder is a table once its `_delta_log/` holds a commit; other entries are ignored.
    """
    from deltalake.exceptions import TableNotFoundError

    root = _local_lake_root(settings)
    found = []
    for layer in LAYERS:
        layer_dir = root / layer
        if not layer_dir.is_dir():
            continue
        for table_dir in sorted(layer_dir.iterdir()):
            if not (table_dir / "_delta_log").is_dir():
                continue
            try:
                version = DeltaTable(str(table_dir)).version()
            except TableNotFoundError:  # a stream has created the folder but not committed yet
                continue
            found.append(LakeTable(layer, table_dir.name, str(table_dir), version))
    return found


def connect(
    settings: Settings | None = None,
    *,
    as_of_version: int | None = None,
    table: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per lake table, e.g. `silver.weather_features`.

    Each query reads the latest committed version, so it works while streams write.
    `as_of_version=N, table="silver.weather_features"` makes that one view read version N
    (time travel); the other views stay current. Timestamps show in UTC.
    """
    if (as_of_version is None) != (table is None):
        raise PeriscopeError("time travel needs both a version and the table it applies to")
    lake_tables = tables(settings)
    if table is not None and table.lower() not in {t.name for t in lake_tables}:
        raise PeriscopeError(f"no lake table {table}; {LIST_TABLES_HINT}")

    from periscope.duckdb_lake import connect as duckdb_connect

    con = duckdb_connect()
    con.execute("SET TimeZone = 'UTC'")
    for layer in LAYERS:
        con.execute(f"CREATE SCHEMA {layer}")
    for t in lake_tables:
        version = as_of_version if t.name == (table or "").lower() else None
        _create_view(con, t, version)
    return con


def _create_view(con: duckdb.DuckDBPyConnection, t: LakeTable, version: int | None) -> None:
    import duckdb

    path = t.path.replace("'", "''")
    scan = (
        f"delta_scan('{path}')"
        if version is None
        else f"delta_scan('{path}', version => {version:d})"
    )
    try:
        con.execute(f'CREATE VIEW {t.layer}."{t.table}" AS SELECT * FROM {scan}')
    except duckdb.Error as exc:
        if version is not None:
            raise PeriscopeError(
                f"{t.name} has no version {version} to read (its current version is {t.version})"
            ) from None
        raise PeriscopeError(f"cannot read {t.name} at {t.path}: {exc}") from None


def _local_lake_root(settings: Settings | None) -> Path:
    from periscope.settings import get_settings

    root = (settings or get_settings()).lake_root
    if "://" in root:
        raise PeriscopeError(f"SQL reads a local lake only; lake_root is {root}")
    return Path(root).resolve()
