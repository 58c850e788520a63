"""Delta maintenance: compact the small files streams leave, vacuum the files old versions hold.

Every silver and gold round is a MERGE that writes a few small files (about 1,400 a day at
1,000 stations), and bronze appends one file per partition and micro-batch. Readers pay per
file, so `maintain_lake` (run by `periscope lake maintain` and Dagster's hourly job):

- compacts bronze's partitions (one per `ingest_date`) into fewer files, today's too once it
  holds `MIN_SMALL_FILES`: the stream only appends, and appends never conflict with compaction;
- rewrites an upserted table's *closed* small files (their newest row more than
  `CLOSED_AFTER` older than the table's newest) sorted by its time column (`window_start` or
  `event_time`) into files of `CLOSED_FILE_BYTES`. The files then hold disjoint time
  ranges, so a MERGE of the newest windows keeps skipping them (`periscope.lake.merge_rows`),
  and the streams' MERGEs, which rewrite open files, do not fight compaction over them (a
  rewrite of the whole table lost to them every time while they ran); only a late record's
  MERGE can, and it runs again;
- rewrites every small file of a table appended to only (no MERGE, UPDATE or DELETE in its
  recent history: silver's observations, quarantine, duplicates and late rows) the same way,
  its newest files too: appends never conflict with the rewrite;
- packs the small files of a table without a time column (silver's batch ledger, appended to
  once a batch) together;
- vacuums files that left the table more than `retention_hours` ago.

Compaction commits with `dataChange=false`: Spark's Delta streaming source and the direct
silver engine skip such commits and the rows stay the same, so downstream streams see nothing
new. The retention (a week at least by default) keeps time travel within it working and keeps
the files a stream restarted from its checkpoint still has to read, as long as it was down for
less than that.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from periscope.lake import MERGE_TARGET_FILE_BYTES, LakeTable, retry_lost_commits, tables

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from periscope.settings import Settings

__all__ = [
    "CLOSED_AFTER",
    "MIN_SMALL_FILES",
    "Compaction",
    "DataFile",
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
# A file is closed once its newest row is this much older than the table's newest: longer than
# any contract's watermark plus window size (hourly sources: 6 h + 3 h; a unit test checks), so
# no on-time record reaches it again and the streams' MERGEs (lower bound: their batch's oldest
# window) skip it. Relative to the table, not the clock, so a replay of past years works too.
CLOSED_AFTER = timedelta(days=1)
# Closed files are rewritten this big: no stream's MERGE rewrites them, so fewer, larger files
# only make reads cheaper (at 1 MiB, a table's file count grew with its data: the soak's gold
# table kept 168 full files after 10 minutes).
CLOSED_FILE_BYTES = 16 << 20
# Bytes of closed files one rewrite (one commit) reads: bounds its memory, as the rows are
# decoded and sorted in memory, several times their size on disk.
MAX_REWRITE_BYTES = 64 << 20
# Bytes of closed files one run rewrites at most; the next run goes on where it stopped.
MAX_RUN_BYTES = 1 << 30
# A scratch table this old was left by a run that died between its rename and its commit.
LEFTOVER_AGE_S = 3600
# Operations that rewrite a table's files. A table none of whose last HISTORY_LOOKBACK commits
# did (silver's observations and quarantine, appended once a batch) is appended to only: its
# newest files are compacted too, since appends never conflict with the rewrite (the closed-file
# rule is for MERGE targets, whose open files the streams rewrite every round). Live at real
# time, the rule kept a day of a stream's files, about one a second, out of reach.
REWRITING_OPERATIONS = frozenset({"MERGE", "UPDATE", "DELETE"})
HISTORY_LOOKBACK = 100
# Table features the hand-made commit of closed files knows it keeps (others: no rewrite).
REWRITABLE_FEATURES = frozenset({"appendOnly", "invariants", "checkConstraints", "timestampNtz"})


@dataclass(frozen=True)
class DataFile:
    """One file of a table's current version, as compaction sees it."""

    path: str  # as the log names it
    size: int
    partition: str | None = None  # its INGEST_DATE, in a table partitioned by it
    newest: datetime | None = None  # the maximum of the table's time column (statistics)


@dataclass(frozen=True)
class Compaction:
    """How one table is to be compacted: `kind` none, partitions, closed files rewritten,
    every small file of a table appended to only rewritten ("appended"), or every small file
    packed (a table without a time column)."""

    kind: Literal["none", "partitions", "closed", "appended", "packed"]
    partitions: tuple[str, ...] = ()  # values of INGEST_DATE, for "partitions"
    files: tuple[DataFile, ...] = ()  # for "closed" and "appended", oldest first
    sort_column: str | None = None  # for "closed" and "appended"
    reason: str = ""  # for "none" and "packed"

    def batches(self, max_bytes: int) -> list[tuple[DataFile, ...]]:
        """The files in successive groups of at most `max_bytes` (one file at least), each
        rewritten and committed on its own; a group of one file is left as it is.

        >>> plan = Compaction("closed", files=tuple(DataFile(str(i), 40) for i in range(5)))
        >>> [[f.path for f in group] for group in plan.batches(100)]
        [['0', '1'], ['2', '3']]
        """
        groups: list[list[DataFile]] = [[]]
        for f in self.files:
            if groups[-1] and sum(g.size for g in groups[-1]) + f.size > max_bytes:
                groups.append([])
            groups[-1].append(f)
        return [tuple(group) for group in groups if len(group) > 1]

    def describe(self) -> str:
        if self.kind == "partitions":
            return f"{len(self.partitions)} {INGEST_DATE} partition(s)"
        if self.kind == "appended":
            return f"{len(self.files)} small file(s) rewritten sorted by {self.sort_column} (appended to only)"
        if self.kind == "closed":
            return f"{len(self.files)} closed file(s) rewritten sorted by {self.sort_column}"
        if self.kind == "packed":
            return f"{self.reason} packed together"
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
    files: Sequence[DataFile],
    today: date,
    now: datetime | None = None,
    closed_after: timedelta = CLOSED_AFTER,
    min_small_files: int = MIN_SMALL_FILES,
    target_bytes: int = MERGE_TARGET_FILE_BYTES,
    closed_file_bytes: int | None = None,
    max_run_bytes: int = MAX_RUN_BYTES,
    append_only: bool = False,
) -> Compaction:
    """Decide how to compact a table from its columns and files.

    >>> day = datetime(2024, 1, 1, tzinfo=UTC)
    >>> files = [DataFile(f"{i}.parquet", 1000, newest=day + timedelta(hours=i)) for i in range(40)]
    >>> plan_compaction(columns=["station_id", "window_start"], partition_columns=[],
    ...                 files=files, today=date(2024, 1, 3)).describe()
    '15 closed file(s) rewritten sorted by window_start'
    """
    if INGEST_DATE in partition_columns:
        partitions = closed_partitions((f.partition for f in files), today)
        today_files = sum(1 for f in files if f.partition == today.isoformat())
        if today_files >= min_small_files:  # the stream appends to it: compaction never conflicts
            partitions.append(today.isoformat())
        if partitions:
            return Compaction("partitions", partitions=tuple(partitions))
        return Compaction("none", reason="no partition with several files")
    if partition_columns:
        return Compaction("none", reason=f"partitioned by {', '.join(partition_columns)}")
    sort_column = next((c for c in TIME_COLUMNS if c in columns), None)
    if sort_column is None:  # a ledger: appended to only, so no writer rewrites its files
        small = sum(1 for f in files if f.size < target_bytes // 2)
        if small < min_small_files:
            return Compaction("none", reason=f"{small} small file(s)")
        return Compaction("packed", reason=f"{small} small files")
    small_size = (closed_file_bytes or CLOSED_FILE_BYTES) // 2
    if append_only:  # nothing rewrites its files but compaction: every small file will do
        oldest_first = sorted(
            (f for f in files if f.size < small_size),
            key=lambda f: (f.newest is not None, f.newest or datetime.min.replace(tzinfo=UTC)),
        )
        return _within_budget(oldest_first, sort_column, max_run_bytes, min_small_files, "appended")
    newest = max((f.newest for f in files if f.newest is not None), default=None)
    if newest is None:
        return Compaction("none", reason=f"no statistics of {sort_column}")
    # A bad future time in one row must not make every file look closed.
    newest = min(newest, now or datetime.now(UTC))
    closed = sorted(
        (
            f
            for f in files
            if f.newest is not None and f.newest < newest - closed_after and f.size < small_size
        ),
        key=lambda f: f.newest or newest,
    )
    return _within_budget(closed, sort_column, max_run_bytes, min_small_files, "closed")


def _within_budget(
    files: Sequence[DataFile],
    sort_column: str,
    max_run_bytes: int,
    min_small_files: int,
    kind: Literal["closed", "appended"],
) -> Compaction:
    """The first of `files` (oldest first) up to a run's bytes, to rewrite sorted by time."""
    chosen: list[DataFile] = []
    total = 0
    for f in files:
        if chosen and total + f.size > max_run_bytes:
            break
        chosen.append(f)
        total += f.size
    if len(chosen) < min_small_files:
        which = "closed small" if kind == "closed" else "small"
        return Compaction("none", reason=f"{len(chosen)} {which} file(s)")
    return Compaction(kind, files=tuple(chosen), sort_column=sort_column)


def _plan(table: DeltaTable, today: date, closed_after: timedelta) -> Compaction:
    import pyarrow

    actions = pyarrow.table(table.get_add_actions(flatten=True))
    columns = pyarrow.schema(table.schema().to_arrow()).names
    partition_field = f"partition.{INGEST_DATE}"
    partitions = (
        [None if v is None else str(v) for v in actions.column(partition_field).to_pylist()]
        if partition_field in actions.column_names
        else [None] * actions.num_rows
    )
    sort_column = next((c for c in TIME_COLUMNS if c in columns), None)
    stat = f"max.{sort_column}"
    newest = (
        actions.column(stat).to_pylist()
        if stat in actions.column_names and not pyarrow.types.is_null(actions.column(stat).type)
        else [None] * actions.num_rows
    )
    files = [
        DataFile(path, int(size), partition, _utc(last))
        for path, size, partition, last in zip(
            actions.column("path").to_pylist(),
            actions.column("size_bytes").to_pylist(),
            partitions,
            newest,
            strict=True,
        )
    ]
    metadata = table.metadata()
    plan = plan_compaction(
        columns=columns,
        partition_columns=metadata.partition_columns,
        files=files,
        today=today,
        closed_after=closed_after,
        append_only=_appended_only(table),
    )
    if plan.kind in ("closed", "appended") and not _rewritable(table):
        return Compaction("none", reason="column mapping, table features or a remote store")
    return plan


def _appended_only(table: DeltaTable) -> bool:
    """Did none of the table's last HISTORY_LOOKBACK commits rewrite files (MERGE, UPDATE,
    DELETE)? Compaction's own commits are appends of files that change no data."""
    recent = table.history(limit=HISTORY_LOOKBACK)
    return not any(commit.get("operation") in REWRITING_OPERATIONS for commit in recent)


def _utc(value: datetime | None) -> datetime | None:
    """Statistics of a timestamp without a zone are read as UTC, to compare with the rest."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _rewritable(table: DeltaTable) -> bool:
    """Files this module can read and replace by hand: a local table without column mapping,
    deletion vectors, row tracking or any other feature whose actions need more fields."""
    uri = urlparse(table.table_uri)
    protocol = table.protocol()
    features = set(protocol.reader_features or ()) | set(protocol.writer_features or ())
    return (
        uri.scheme in ("", "file")
        and table.metadata().configuration.get("delta.columnMapping.mode", "none") == "none"
        and features <= REWRITABLE_FEATURES
    )


def _compact(table: DeltaTable, plan: Compaction) -> None:
    # One task at a time: the machine's cores belong to the streams.
    if plan.kind == "partitions":
        for value in plan.partitions:
            table.optimize.compact(
                partition_filters=[(INGEST_DATE, "=", value)], max_concurrent_tasks=1
            )
    elif plan.kind in ("closed", "appended"):
        assert plan.sort_column is not None
        for files in plan.batches(MAX_REWRITE_BYTES):
            _rewrite_closed(table, files, plan.sort_column)
    elif plan.kind == "packed":
        table.optimize.compact(target_size=MERGE_TARGET_FILE_BYTES, max_concurrent_tasks=1)


class ChosenFilesRewritten(RuntimeError):
    """A stream rewrote a file compaction had chosen before it could commit: try next run."""


def _rewrite_closed(table: DeltaTable, files: Sequence[DataFile], sort_column: str) -> None:
    """Replace `files` by their rows sorted by `sort_column`, in files of about
    CLOSED_FILE_BYTES, in one commit that changes no data.

    delta-rs' optimize picks files by partition only, and in an unpartitioned table that means
    every small file, the open ones the streams' MERGEs rewrite too. So the new files are
    written (with delta-rs' statistics) into a scratch table inside this one, moved beside the
    table's files, and committed with the chosen files' removes, on the table's newest version
    and through delta-rs' conflict check. If a MERGE removed one of the chosen files meanwhile
    (a late record), it raises ChosenFilesRewritten, the new files are deleted, and nothing
    changed.
    """
    import pyarrow
    import pyarrow.dataset
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, RemoveAction

    root = Path(unquote(urlparse(table.table_uri).path))
    schema = pyarrow.schema(table.schema().to_arrow())
    rows = pyarrow.dataset.dataset(
        [str(root / unquote(f.path)) for f in files], schema=schema, format="parquet"
    ).to_table(use_threads=False)  # one core: the other belongs to the streams
    stats_settings = {
        key: value
        for key, value in table.metadata().configuration.items()
        if key.startswith("delta.dataSkipping")
    }
    _sweep_leftovers(table, root)
    scratch = root / f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"  # "_": hidden from Delta readers
    moved: list[Path] = []
    try:
        write_deltalake(
            str(scratch),
            rows.sort_by([(sort_column, "ascending")]),
            mode="error",
            target_file_size=CLOSED_FILE_BYTES,
            configuration=stats_settings or None,
        )
        log = (scratch / "_delta_log" / f"{0:020d}.json").read_text().splitlines()
        adds = [action["add"] for action in map(json.loads, log) if "add" in action]
        for add in adds:
            target = root / unquote(add["path"])
            os.rename(scratch / unquote(add["path"]), target)
            moved.append(target)
        now_ms = int(time.time() * 1000)
        actions: list[AddAction | RemoveAction] = [
            RemoveAction(f.path, data_change=False, deletion_timestamp=now_ms, size=f.size)
            for f in files
        ]
        actions += [
            AddAction(a["path"], a["size"], {}, a["modificationTime"], False, a["stats"])
            for a in adds
        ]
        commit = CommitProperties(custom_metadata={"periscope.operation": "compact closed files"})
        # delta-rs counts a write as reading the whole table, so any commit after the version
        # the rows were read from (a stream's MERGE of its open files, every second or two)
        # would fail this one. The rows cannot have changed while the chosen files are still
        # live, so commit on the newest version after checking that, and try again on a loss.
        try:
            for attempt in retry_lost_commits(attempts=5, wait_s=(0.0, 0.5)):
                with attempt:
                    table.update_incremental()
                    if gone := [f.path for f in files if f.path not in _live(table)]:
                        raise ChosenFilesRewritten(
                            f"{len(gone)} chosen file(s) were rewritten meanwhile (a late record)"
                        )
                    table.create_write_transaction(
                        actions, mode="append", schema=table.schema(), commit_properties=commit
                    )
        except (CommitFailedError, ChosenFilesRewritten):
            # Known not committed: the new files belong to nobody. (After any other error the
            # commit may have landed, e.g. a post-commit hook failed: the files stay, and a
            # later run's sweep deletes them if the log does not name them.)
            for path in moved:
                path.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH_PREFIX = "_compaction-"


def _live(table: DeltaTable) -> set[str]:
    import pyarrow

    return set(pyarrow.table(table.get_add_actions(flatten=True))["path"].to_pylist())


def _sweep_leftovers(table: DeltaTable, root: Path, *, older_than_s: float = LEFTOVER_AGE_S) -> int:
    """Delete what a rewrite killed between its rename and its commit left: its scratch table
    (vacuum skips "_" folders) and the files it moved that the log does not name (vacuum only
    deletes files the log once named). Returns the files deleted."""
    deleted = 0
    for scratch in root.glob(f"{SCRATCH_PREFIX}*"):
        if time.time() - scratch.stat().st_mtime < older_than_s:
            continue  # perhaps a run still going
        log = scratch / "_delta_log" / f"{0:020d}.json"
        if log.exists():
            live = _live(table)
            for action in map(json.loads, log.read_text().splitlines()):
                path = action.get("add", {}).get("path")
                if path and path not in live and (root / unquote(path)).exists():
                    (root / unquote(path)).unlink()
                    deleted += 1
        shutil.rmtree(scratch, ignore_errors=True)
    return deleted


def maintain_table(
    path: str,
    *,
    retention_hours: int,
    dry_run: bool = False,
    today: date | None = None,
    enforce_retention: bool = True,
    name: str | None = None,
    closed_after: timedelta = CLOSED_AFTER,
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
    plan = _plan(table, today or datetime.now(UTC).date(), closed_after)
    error = None
    if not dry_run:
        try:
            _compact(table, plan)
        except (CommitFailedError, ChosenFilesRewritten) as exc:
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
