"""Delta maintenance: compact the small files streams leave, vacuum the files old versions hold.

Every silver and gold round is a MERGE that writes a few small files (about 1,400 a day at
1,000 stations), and bronze appends one file per partition and micro-batch. Readers pay per
file, so `maintain_lake` (run by `periscope lake maintain` and Dagster's daily job):

- compacts bronze's closed partitions (an `ingest_date` before today, which the bronze stream no
  longer writes) into fewer files;
- rewrites an upserted table sorted by its time column (`window_start` or `event_time`) into
  files of `MERGE_TARGET_FILE_BYTES`: the files then hold disjoint time ranges, so a MERGE of the
  newest windows keeps skipping every closed one (`periscope.lake.merge_rows`);
- vacuums files that left the table more than `retention_hours` ago.

Compaction commits with `dataChange=false`: Spark's Delta streaming source skips such commits
and the rows stay the same, so downstream streams see nothing new. The retention (a week at
least by default) keeps time travel within it working and keeps the files a stream restarted
from its checkpoint still has to read, as long as it was down for less than that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Literal

from periscope.lake import MERGE_TARGET_FILE_BYTES, LakeTable, tables

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from periscope.settings import Settings

__all__ = [
    "MIN_SMALL_FILES",
    "Compaction",
    "TableMaintenance",
    "closed_partitions",
    "maintain_lake",
    "maintain_table",
    "plan_compaction",
]

# Fewer small files than this are left alone: rewriting them would cost more than it saves.
MIN_SMALL_FILES = 8
# The column bronze's stream partitions by (one partition per UTC day of ingest).
INGEST_DATE = "ingest_date"
# Columns an upserted table is sorted by when compacted, the first the table has.
TIME_COLUMNS = ("window_start", "event_time")


@dataclass(frozen=True)
class Compaction:
    """How one table is to be compacted: `kind` none, closed partitions or a sorted rewrite."""

    kind: Literal["none", "partitions", "sorted"]
    partitions: tuple[str, ...] = ()  # closed values of INGEST_DATE, for "partitions"
    sort_column: str | None = None  # for "sorted"
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "partitions":
            return f"{len(self.partitions)} closed {INGEST_DATE} partition(s)"
        if self.kind == "sorted":
            return f"rewritten sorted by {self.sort_column}"
        return f"none ({self.reason})"


@dataclass(frozen=True)
class TableMaintenance:
    """What maintenance did (or, on a dry run, would do) to one table."""

    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    compaction: str
    files_vacuumed: int
    error: str | None = None


def closed_partitions(
    file_partitions: Iterable[str | None], today: date, *, min_files: int = 2
) -> list[str]:
    """The partition values (ISO dates) before `today` that hold at least `min_files` files.

    >>> closed_partitions(["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-03"] * 2,
    ...                   date(2024, 1, 3))
    ['2024-01-01', '2024-01-02']
    """
    counts = Counter(p for p in file_partitions if p is not None)
    return sorted(p for p, n in counts.items() if n >= min_files and p < today.isoformat())


def plan_compaction(
    *,
    columns: Sequence[str],
    partition_columns: Sequence[str],
    file_sizes: Sequence[int],
    file_partitions: Sequence[str | None],
    today: date,
    min_small_files: int = MIN_SMALL_FILES,
    target_bytes: int = MERGE_TARGET_FILE_BYTES,
) -> Compaction:
    """Decide how to compact a table from its columns and files (sizes, partition values).

    >>> plan_compaction(columns=["station_id", "window_start"], partition_columns=[],
    ...                 file_sizes=[1000] * 10, file_partitions=[None] * 10,
    ...                 today=date(2024, 1, 3)).describe()
    'rewritten sorted by window_start'
    """
    if INGEST_DATE in partition_columns:
        closed = closed_partitions(file_partitions, today)
        if closed:
            return Compaction("partitions", partitions=tuple(closed))
        return Compaction("none", reason="no closed partition with several files")
    if partition_columns:
        return Compaction("none", reason=f"partitioned by {', '.join(partition_columns)}")
    small = sum(1 for size in file_sizes if size < target_bytes // 2)
    if small < min_small_files:
        return Compaction("none", reason=f"{small} small file(s)")
    sort_column = next((c for c in TIME_COLUMNS if c in columns), None)
    if sort_column is None:
        return Compaction("none", reason="no time column to sort by")
    return Compaction("sorted", sort_column=sort_column)


def _plan(table: DeltaTable, today: date) -> Compaction:
    actions = table.get_add_actions(flatten=True)
    partition_columns = table.metadata().partition_columns
    partition_field = f"partition.{INGEST_DATE}"
    partitions = (
        [None if v is None else str(v) for v in actions.column(partition_field).to_pylist()]
        if partition_field in actions.schema.names
        else [None] * actions.num_rows
    )
    return plan_compaction(
        columns=table.schema().to_arrow().names,
        partition_columns=partition_columns,
        file_sizes=[int(size) for size in actions.column("size_bytes").to_pylist()],
        file_partitions=partitions,
        today=today,
    )


def _compact(table: DeltaTable, plan: Compaction) -> None:
    # One task at a time: the machine's cores belong to the streams.
    if plan.kind == "partitions":
        for value in plan.partitions:
            table.optimize.compact(
                partition_filters=[(INGEST_DATE, "=", value)], max_concurrent_tasks=1
            )
    elif plan.kind == "sorted":
        assert plan.sort_column is not None
        table.optimize.z_order(
            [plan.sort_column], target_size=MERGE_TARGET_FILE_BYTES, max_concurrent_tasks=1
        )


def maintain_table(
    path: str,
    *,
    retention_hours: int,
    dry_run: bool = False,
    today: date | None = None,
    enforce_retention: bool = True,
    name: str | None = None,
) -> TableMaintenance:
    """Compact one Delta table as `plan_compaction` decides, then vacuum it.

    `enforce_retention=False` lets a retention below the table's
    `delta.deletedFileRetentionDuration` (a week by default) through: for tests only. A commit
    that loses to a concurrent writer is reported in `error` (the next run tries again).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    table = DeltaTable(path)
    version_before = table.version()
    files_before = _file_count(table)
    plan = _plan(table, today or datetime.now(UTC).date())
    error = None
    if not dry_run:
        try:
            _compact(table, plan)
        except CommitFailedError as exc:
            error = f"compaction lost to a concurrent commit, retried next run ({exc})"
        table.update_incremental()
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=enforce_retention,
    )
    return TableMaintenance(
        table=name or path,
        version_before=version_before,
        version_after=table.version(),
        files_before=files_before,
        files_after=_file_count(table),
        compaction=plan.describe() if not dry_run else f"would be {plan.describe()}",
        files_vacuumed=len(vacuumed),
        error=error,
    )


def maintain_lake(
    settings: Settings,
    *,
    only: Iterable[str] | None = None,
    retention_hours: int | None = None,
    dry_run: bool = False,
    on_table: Callable[[LakeTable], None] | None = None,
) -> list[TableMaintenance]:
    """`maintain_table` on every lake table (or those named in `only`, e.g. silver.weather_features).

    `retention_hours` defaults to the `vacuum_retention_hours` setting. One table failing is
    reported in its row and does not stop the others. `on_table` is called before each table.
    """
    wanted = {n.lower() for n in only} if only is not None else None
    hours = settings.vacuum_retention_hours if retention_hours is None else retention_hours
    results = []
    for t in tables(settings):
        if wanted is not None and t.name not in wanted:
            continue
        if on_table is not None:
            on_table(t)
        try:
            results.append(
                maintain_table(t.path, retention_hours=hours, dry_run=dry_run, name=t.name)
            )
        except Exception as exc:  # delta-rs raises several kinds; the row says which
            results.append(
                TableMaintenance(t.name, t.version, t.version, 0, 0, "none", 0, error=str(exc))
            )
    return results


def _file_count(table: DeltaTable) -> int:
    return int(table.get_add_actions(flatten=True).num_rows)
