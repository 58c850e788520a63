"""The I/O of `periscope warehouse load`: Delta files in (delta-rs, pyarrow), Postgres COPY out.

Each table is one transaction: take the loader lock, read the high-water mark, COPY the rows
of the new Delta files into a temporary staging table, upsert them by key into `lake.<table>`,
record the new version and counts in `lake._load_state`, commit. A crash at any point rolls
the whole batch back, so readers see the previous load or the new one, never half of one.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
from deltalake import DeltaTable

from periscope.contracts import CONTRACTS
from periscope.errors import PeriscopeError
from periscope.settings import Settings
from warehouse import ddl
from warehouse.plan import (
    ALWAYS_COLUMNS,
    LoadPlan,
    Orphan,
    TableSpec,
    flatten_forecasts,
    forecast_counts,
    loadable_columns,
    orphan_warning,
    orphans,
    plan_load,
)

__all__ = ["LoadResult", "ProgressCallback", "load_tables"]

log = logging.getLogger(__name__)

# One loader at a time: with the lock taken before `_loaded_at` is read, `_loaded_at` grows in
# commit order, so dbt's "rows loaded after the last run" never skips a slower transaction.
_LOCK_KEY = 0x7065726973  # "peris"
_BATCH_ROWS = 100_000
_PARENT_STAGE, _CHILD_STAGE = "_stage", "_stage_forecasts"

ProgressCallback = Callable[[TableSpec, int, int], None]
"""Called with (table, rows copied so far, rows to copy) while a table loads."""


@dataclass(frozen=True)
class LoadResult:
    """What one table's load did."""

    table: str
    status: str  # loaded | up to date | skipped
    mode: str = ""  # full | incremental
    from_version: int | None = None
    to_version: int | None = None
    rows_loaded: int = 0  # rows of the new Delta files, copied
    rows_changed: int = 0  # of those, rows inserted or changed in Postgres
    forecasts_loaded: int = 0
    delta_rows: int = 0
    lake_rows: int = 0
    reason: str = ""


def load_tables(
    settings: Settings,
    specs: Sequence[TableSpec],
    *,
    full: bool = False,
    on_progress: ProgressCallback | None = None,
    before_upsert: Callable[[TableSpec], None] | None = None,
    drop_orphans: bool = False,
) -> list[LoadResult]:
    """Load each table (own transaction each); tables not in the lake yet are skipped.

    Tables left under an older name (`plan.orphans`) are named in a warning with what drops
    them, or dropped from Postgres with `drop_orphans`. `before_upsert` runs after the COPY
    and before the upsert of each table: tests use it to crash a load half-way.
    """
    import psycopg2

    try:
        conn = psycopg2.connect(settings.postgres_dsn("owner"), connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise PeriscopeError(
            f"cannot reach Postgres at {settings.postgres_host}:{settings.postgres_port} "
            f"({str(exc).strip()}); start it with `periscope services up postgres`"
        ) from None
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"create schema if not exists {ddl.ident(ddl.LAKE_SCHEMA)}")
            cur.execute(ddl.create_state_sql())
            _report_orphans(cur, settings, drop=drop_orphans)
        return [
            _load_table(
                conn,
                settings,
                spec,
                full=full,
                on_progress=on_progress,
                before_upsert=before_upsert,
            )
            for spec in specs
        ]
    finally:
        conn.close()


def _report_orphans(cur: Any, settings: Settings, *, drop: bool) -> list[Orphan]:
    """Warn about (or with `drop`, drop from Postgres) the tables left under an older name."""
    cur.execute(
        "select table_name from information_schema.tables where table_schema = %s",
        (ddl.LAKE_SCHEMA,),
    )
    tables = {row[0] for row in cur.fetchall()}
    cur.execute(f"select table_name from {ddl.ident(ddl.LAKE_SCHEMA, ddl.STATE_TABLE)}")
    state_rows = {row[0] for row in cur.fetchall()}
    candidates = orphans(CONTRACTS.values(), [f"{c}_event_predictions" for c in CONTRACTS])
    in_delta = {
        o.name for o in candidates if DeltaTable.is_deltatable(settings.lake_path(o.delta_table))
    }
    found = orphans(CONTRACTS.values(), tables | state_rows | in_delta)
    for orphan in found:
        in_postgres = orphan.name in tables or orphan.name in state_rows
        if drop and in_postgres:
            for statement in orphan.drop_sql():
                cur.execute(statement)
        log.warning(
            "%s",
            orphan_warning(
                orphan,
                table=orphan.name in tables,
                state_row=orphan.name in state_rows,
                delta_path=settings.lake_path(orphan.delta_table)
                if orphan.name in in_delta
                else None,
                dropped=drop and in_postgres,
            ),
        )
    return found


def _load_table(
    conn: Any,
    settings: Settings,
    spec: TableSpec,
    *,
    full: bool,
    on_progress: ProgressCallback | None,
    before_upsert: Callable[[TableSpec], None] | None,
) -> LoadResult:
    path = settings.lake_path(spec.delta_table)
    if not DeltaTable.is_deltatable(path):
        log.info("skipping %s: no Delta table at %s yet", spec.name, path)
        return LoadResult(spec.name, "skipped", reason=f"no Delta table at {path}")
    table = DeltaTable(path)
    version = table.version()
    current = _file_rows(table)
    delta_rows = sum(current.values())
    dataset = table.to_pyarrow_dataset()
    columns = loadable_columns(dataset.schema)

    with conn, conn.cursor() as cur:  # one transaction: commit on success, roll back on error
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur.execute("select clock_timestamp()")
        loaded_at = cur.fetchone()[0]
        _ensure_tables(cur, spec, dataset.schema, columns)
        cur.execute(
            f"select delta_version from {ddl.ident(ddl.LAKE_SCHEMA, ddl.STATE_TABLE)} "
            "where table_name = %s",
            (spec.name,),
        )
        row = cur.fetchone()
        loaded_version = None if row is None else int(row[0])
        plan = plan_load(
            loaded_version=loaded_version,
            current_version=version,
            current_files=current,
            loaded_files=_files_at(path, loaded_version, version, full),
            full=full,
        )
        if plan.mode == "none":
            return LoadResult(spec.name, "up to date", "", version, version, delta_rows=delta_rows)
        if plan.reason and plan.mode == "full" and loaded_version is not None:
            log.warning("%s: full reload (%s)", spec.name, plan.reason)

        rows, changed, forecasts = _apply(
            cur, spec, dataset, columns, plan, current, loaded_at, on_progress, before_upsert
        )
        lake_rows = _count(cur, spec.name)
        if lake_rows != delta_rows and plan.mode == "incremental":
            # Rows deleted from Delta leave no new file to copy: reload to drop them too.
            log.warning(
                "%s: %d rows in Postgres, %d in Delta after an incremental load; reloading in full",
                spec.name,
                lake_rows,
                delta_rows,
            )
            plan = LoadPlan("full", plan.from_version, version, tuple(current), "counts differ")
            rows, changed, forecasts = _apply(
                cur, spec, dataset, columns, plan, current, loaded_at, on_progress, None
            )
            lake_rows = _count(cur, spec.name)
        cur.execute(
            ddl.upsert_state_sql(),
            {
                "table_name": spec.name,
                "source": spec.source,
                "delta_table": spec.delta_table,
                "delta_version": version,
                "delta_rows": delta_rows,
                "lake_rows": lake_rows,
                "rows_loaded": rows,
                "rows_changed": changed,
                "mode": plan.mode,
                "loaded_at": loaded_at,
            },
        )
        # Fresh statistics for dbt's joins: autovacuum may not have looked at a table just
        # loaded, and stale estimates made the planner pick nested loops over 400k forecasts.
        for name in filter(None, (spec.name, spec.forecasts_table)):
            cur.execute(f"analyze {ddl.ident(ddl.LAKE_SCHEMA, name)}")
    return LoadResult(
        spec.name,
        "loaded",
        plan.mode,
        plan.from_version,
        version,
        rows,
        changed,
        forecasts,
        delta_rows,
        lake_rows,
        plan.reason,
    )


def _apply(
    cur: Any,
    spec: TableSpec,
    dataset: pads.FileSystemDataset,
    columns: list[str],
    plan: LoadPlan,
    file_rows: dict[str, int],
    loaded_at: datetime,
    on_progress: ProgressCallback | None,
    before_upsert: Callable[[TableSpec], None] | None,
) -> tuple[int, int, int]:
    """COPY the plan's files into staging, then upsert (or replace, for `full`). Returns
    (rows copied, rows inserted or changed, forecasts copied)."""
    child = spec.forecasts_table
    parent_columns = [*columns, "forecast_count"] if child else columns
    stages = [(spec.name, _PARENT_STAGE, parent_columns)]
    if child:
        stages.append((child, _CHILD_STAGE, list(spec.forecast_columns)))
    for table, stage, cols in stages:
        cur.execute(f"drop table if exists {ddl.ident(stage)}")
        cur.execute(ddl.stage_sql(table, stage, cols))

    total = sum(file_rows[f] for f in plan.files)
    rows = forecasts = 0
    read = [*columns, "forecasts"] if child else columns
    for batch in _batches(dataset, plan.files, read):
        data = pa.Table.from_batches([batch])
        if child:
            forecasts += _copy(cur, _CHILD_STAGE, flatten_forecasts(data, spec.contract.key_field))
            data = data.select(columns).append_column("forecast_count", forecast_counts(data))
        rows += _copy(cur, _PARENT_STAGE, data.select(parent_columns))
        if on_progress:
            on_progress(spec, rows, total)
    if on_progress:
        on_progress(spec, rows, total)

    if before_upsert:
        before_upsert(spec)
    params = {"version": plan.to_version, "loaded_at": loaded_at}
    if plan.mode == "full":
        targets = [spec.name, *([child] if child else [])]
        cur.execute(f"truncate {', '.join(ddl.ident(ddl.LAKE_SCHEMA, t) for t in targets)}")
    cur.execute(ddl.upsert_sql(spec.name, _PARENT_STAGE, parent_columns, spec.key), params)
    changed = cur.rowcount
    if child:
        if plan.mode != "full":
            cur.execute(
                ddl.delete_missing_children_sql(
                    child, _PARENT_STAGE, spec.key, _CHILD_STAGE, spec.forecast_key
                )
            )
        cur.execute(
            ddl.upsert_sql(child, _CHILD_STAGE, spec.forecast_columns, spec.forecast_key), params
        )
    return rows, changed, forecasts


def _copy(cur: Any, stage: str, data: pa.Table) -> int:
    """COPY an Arrow table into a staging table through an in-memory CSV."""
    if data.num_rows == 0:
        return 0
    buffer = io.BytesIO()
    pacsv.write_csv(data, buffer)
    buffer.seek(0)
    cur.copy_expert(ddl.copy_sql(stage, data.column_names), buffer)
    return data.num_rows


def _batches(dataset: pads.FileSystemDataset, files: Sequence[str], columns: list[str]) -> Any:
    """Record batches of just the given data files of a Delta table's dataset."""
    wanted = set(files)
    fragments = [f for f in dataset.get_fragments() if f.path in wanted]
    if len(fragments) != len(wanted):
        raise PeriscopeError(
            f"{len(wanted) - len(fragments)} of {len(wanted)} new Delta files were not found "
            "in the table's dataset; reload in full with --full"
        )
    subset = pads.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
    # Single-threaded: Arrow's scanner threads can abort the process at exit (periscope.lake).
    return subset.to_batches(columns=columns, batch_size=_BATCH_ROWS, use_threads=False)


def _ensure_tables(cur: Any, spec: TableSpec, schema: pa.Schema, columns: list[str]) -> None:
    parent = ddl.pg_columns(schema, columns)
    # Columns an older Delta table lacks (e.g. gold before anomaly_kind) stay null in Postgres.
    parent += [(n, t) for n, t in ALWAYS_COLUMNS.get(spec.entity, ()) if n not in columns]
    tables = [(spec.name, parent, spec.key)]
    if spec.forecasts_table:
        parent.append(("forecast_count", "integer"))
        forecast_schema = flatten_forecasts(schema.empty_table(), spec.contract.key_field).schema
        tables.append(
            (
                spec.forecasts_table,
                ddl.pg_columns(forecast_schema, spec.forecast_columns),
                spec.forecast_key,
            )
        )
    for name, cols, key in tables:
        cur.execute(ddl.create_table_sql(name, cols, key))
        for statement in ddl.add_columns_sql(name, cols):
            cur.execute(statement)


def _count(cur: Any, table: str) -> int:
    cur.execute(f"select count(*) from {ddl.ident(ddl.LAKE_SCHEMA, table)}")
    return int(cur.fetchone()[0])


def _file_rows(table: DeltaTable) -> dict[str, int]:
    """Data file -> rows, for the table's loaded version (from the log's statistics)."""
    actions = table.get_add_actions(flatten=True)
    paths = actions.column("path").to_pylist()
    counts = actions.column("num_records").to_pylist()
    return dict(zip(paths, (int(c or 0) for c in counts), strict=True))


def _files_at(path: str, loaded: int | None, current: int, full: bool) -> list[str] | None:
    """The data files of the loaded version, or None when it is not needed or not readable."""
    if full or loaded is None or loaded >= current:
        return None
    try:
        return list(_file_rows(DeltaTable(path, version=loaded)))
    except Exception as exc:  # delta-rs raises its own errors for a cleaned-up log
        log.warning("cannot read version %d of %s (%s)", loaded, path, exc)
        return None
