"""The read layer of the API (and of the dashboard): gold tables kept warm, and pure queries on them.

Why warm: `/predictions/{source}/{entity}` must answer in milliseconds under load, and a Delta
scan of gold (72 forecasts a row, millions of rows) takes seconds. So each gold table is held in
memory as one small `index` (every row without its forecasts) plus the latest row of each entity
with its forecasts. It is re-read only when the table's version moves, and then only the data
files added since (a MERGE rewrites files: rows of removed files go, rows of added files come),
so a live gold table costs its new files, not its whole size.

The query functions (`latest_prediction`, `history`, `anomalies`, `entities`) are pure: they take
a `GoldSnapshot` and plain arguments and return JSON-ready dicts. Columns are read by name and
passed through, so a column or forecast field gold adds (`anomaly_kind`, `method`) shows up
without a change here.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from periscope.contracts import SourceContract
from periscope.settings import Settings

__all__ = [
    "FORECASTS",
    "GoldSnapshot",
    "WarmGold",
    "anomalies",
    "anomalies_json",
    "build_snapshot",
    "empty_snapshot",
    "entities",
    "gold_path",
    "history",
    "latest_prediction",
    "latest_prediction_json",
    "read_forecasts",
    "shared_gold",
]

log = logging.getLogger(__name__)

FORECASTS = "forecasts"
WINDOW_START = "window_start"
# Where an index row came from: its data file and its row number in that file, so the
# forecasts of a few rows can be read without reading the rest.
_FILE = "_file"
_ROW = "_row"
_PRIVATE = (_FILE, _ROW)

Row = dict[str, Any]


# --- the snapshot ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldSnapshot:
    """One version of a gold table, ready to query.

    `index` holds every row but its forecasts, sorted by (entity, window_start); `spans` gives
    each entity's rows in it; `latest` each entity's newest row with its forecasts; `flagged`
    the anomalous rows, newest first.
    """

    source: str
    key: str
    version: int | None
    committed_at: datetime | None
    index: pa.Table
    spans: dict[str, tuple[int, int]]
    latest: dict[str, Row]
    flagged: pa.Table
    # window_start of `flagged` in µs, negated: ascending, for bisect.
    flagged_order: list[int] = field(repr=False)
    # The data files the index rows came from, by the id in their `_file` column.
    files: dict[int, str] = field(default_factory=dict, repr=False)
    # The API's JSON of `flagged` rows by row number and of `latest` rows by entity (without
    # their ages), made on first use: see anomalies_json, latest_prediction_json.
    flagged_json: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)
    latest_json: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)


def empty_snapshot(source: str, key: str) -> GoldSnapshot:
    """A gold table that does not exist yet: no entities, no rows."""
    index = pa.table({key: pa.array([], pa.string())})
    return GoldSnapshot(source, key, None, None, index, {}, {}, index, [], {})


def _micros(column: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.cast(column, pa.int64()).to_pylist()  # type: ignore[no-any-return]


def build_snapshot(
    source: str,
    key: str,
    version: int | None,
    committed_at: datetime | None,
    files: dict[int, str],
    file_rows: Iterable[pa.Table],
    read_forecasts: Callable[[str, list[int]], list[Any]],
) -> GoldSnapshot:
    """A snapshot from the index rows of each data file (each with `_file`, an id in `files`,
    and `_row`). `read_forecasts(uri, rows)` returns the forecasts of those rows of one file.
    """
    tables = [t for t in file_rows if t.num_rows]
    if not tables:
        return replace(empty_snapshot(source, key), version=version, committed_at=committed_at)
    # Files written before gold gained a column lack it: promote fills it with nulls.
    index = _naive_utc(pa.concat_tables(tables, promote_options="default"))
    index = index.sort_by([(key, "ascending"), (WINDOW_START, "ascending")]).combine_chunks()

    # Sorted by key: each entity is one run of rows.
    runs = pc.run_end_encode(index.column(key).combine_chunks())
    ends = runs.run_ends.to_pylist()
    spans = dict(zip(runs.values.to_pylist(), zip([0, *ends[:-1]], ends, strict=True), strict=True))

    last_rows = index.take([end - 1 for _, end in spans.values()])
    latest = {row[key]: row for row in last_rows.to_pylist()}
    _attach_forecasts(latest.values(), files, read_forecasts)

    flagged = index.filter(pc.fill_null(index.column("is_anomaly"), False))
    flagged = flagged.sort_by([(WINDOW_START, "descending"), (key, "ascending")])
    order = [-m for m in _micros(flagged.column(WINDOW_START))]
    flagged = flagged.drop(_PRIVATE)
    return GoldSnapshot(
        source,
        key,
        version,
        committed_at,
        index,
        spans,
        latest,
        flagged,
        order,
        files,
    )


def _naive_utc(table: pa.Table) -> pa.Table:
    """Timestamps as naive UTC: Arrow makes Python datetimes ~2.5x faster without a zone, and
    the API's JSON writes them with +00:00 (orjson's OPT_NAIVE_UTC)."""
    fields = [
        f.with_type(pa.timestamp(f.type.unit)) if pa.types.is_timestamp(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _attach_forecasts(
    rows: Iterable[Row],
    files: dict[int, str],
    read_forecasts: Callable[[str, list[int]], list[Any]],
) -> None:
    """Give each row its forecasts, reading each data file once; drop `_file` and `_row`."""
    by_file: dict[int, list[Row]] = {}
    for row in rows:
        by_file.setdefault(row.pop(_FILE), []).append(row)
    for file_id, file_rows in by_file.items():
        values = read_forecasts(files[file_id], [r.pop(_ROW) for r in file_rows])
        for row, forecasts in zip(file_rows, values, strict=True):
            row[FORECASTS] = forecasts or []


# --- the queries -------------------------------------------------------------------------------
def _age_s(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # the index's timestamps are naive UTC
        now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    return round((now - moment).total_seconds(), 3)


def _public(row: Row, key: str) -> Row:
    """A gold row as the API shows it: the entity under `entity_id`, private columns gone."""
    shown = {"entity_id": row[key]}
    shown.update((k, v) for k, v in row.items() if k != key and k not in _PRIVATE)
    return shown


def latest_prediction(snapshot: GoldSnapshot, entity_id: str, now: datetime) -> Row | None:
    """The newest window of one entity: anomaly score and flag, forecasts with their 80% bands
    (`yhat_lower`/`yhat_upper`), model versions, and how old the window and its scoring are.
    None: the entity has no gold row."""
    row = snapshot.latest.get(entity_id)
    if row is None:
        return None
    shown = _public(row, snapshot.key)
    shown["source"] = snapshot.source
    shown["window_age_s"] = _age_s(row.get("window_end"), now)
    shown["scored_age_s"] = _age_s(row.get("scored_at"), now)
    return shown


def latest_prediction_json(snapshot: GoldSnapshot, entity_id: str, now: datetime) -> bytes | None:
    """`latest_prediction` as the API's JSON body. The row's JSON (72 forecasts for weather,
    half of a request's CPU time) is made once per snapshot; only the ages are new each time."""
    row = snapshot.latest.get(entity_id)
    if row is None:
        return None
    head = snapshot.latest_json.get(entity_id)
    if head is None:
        shown = _public(row, snapshot.key)
        shown["source"] = snapshot.source
        head = orjson.dumps(shown, option=orjson.OPT_NAIVE_UTC)[:-1]  # open: ages follow
        snapshot.latest_json[entity_id] = head
    ages = {
        "window_age_s": _age_s(row.get("window_end"), now),
        "scored_age_s": _age_s(row.get("scored_at"), now),
    }
    return head + b"," + orjson.dumps(ages)[1:]


def entities(snapshot: GoldSnapshot) -> list[Row]:
    """Every entity with gold rows: how many windows, the first and the last, its latest score."""
    index, found = snapshot.index, []
    for entity_id, (first, end) in snapshot.spans.items():
        latest = snapshot.latest[entity_id]
        found.append(
            {
                "entity_id": entity_id,
                "windows": end - first,
                "first_window_start": index.column(WINDOW_START)[first].as_py(),
                "last_window_start": latest[WINDOW_START],
                "anomaly_score": latest.get("anomaly_score"),
                "is_anomaly": latest.get("is_anomaly"),
            }
        )
    return found


def history(
    snapshot: GoldSnapshot,
    entity_id: str,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    read_forecasts: Callable[[str, list[int]], list[Any]] | None = None,
) -> list[Row] | None:
    """An entity's windows with start <= window_start <= end, oldest first, at most `limit`
    (the newest ones). With `read_forecasts`, each window carries its forecasts (read from the
    table's files: slower). None: the entity has no gold row."""
    span = snapshot.spans.get(entity_id)
    if span is None:
        return None
    first, end_row = span
    starts = _micros(snapshot.index.column(WINDOW_START).slice(first, end_row - first))
    lo = bisect.bisect_left(starts, _to_micros(start))
    hi = bisect.bisect_right(starts, _to_micros(end))
    lo = max(lo, hi - limit)
    rows = snapshot.index.slice(first + lo, hi - lo).to_pylist()
    if read_forecasts is not None:
        _attach_forecasts(rows, snapshot.files, read_forecasts)
    else:
        for row in rows:
            row[FORECASTS] = None  # not read: the same shape either way
    return [_public(r, snapshot.key) for r in rows]


def anomalies(snapshots: Iterable[GoldSnapshot], since: datetime | None, limit: int) -> list[Row]:
    """Flagged windows of the given sources, newest first, window_start >= since, at most `limit`."""
    keyed: list[tuple[tuple[int, str, str], Row]] = []
    for snap in snapshots:
        end = _flagged_end(snap, since, limit)
        for order, row in zip(
            snap.flagged_order[:end], snap.flagged.slice(0, end).to_pylist(), strict=True
        ):
            shown = _flagged_row(snap, row)
            keyed.append(((order, snap.source, shown["entity_id"]), shown))
    keyed.sort(key=lambda item: item[0])  # newest first; within a window by source, entity
    return [row for _, row in keyed[:limit]]


def anomalies_json(snapshots: Iterable[GoldSnapshot], since: datetime | None, limit: int) -> bytes:
    """`anomalies` as a JSON array (the API's body), from rows serialised once per snapshot.

    Why: turning Arrow timestamps into Python datetimes costs ~3 µs each, 1-2 ms of CPU for an
    answer of 100 rows; a flagged row of one gold version never changes, so its JSON is kept
    (on first use: the rows asked for, not all of them) until the version moves.
    """
    keyed: list[tuple[tuple[int, str, str], bytes]] = []
    for snap in snapshots:
        end = _flagged_end(snap, since, limit)
        entities = snap.flagged.column(snap.key).slice(0, end).to_pylist()
        cached = snap.flagged_json
        missing = [i for i in range(end) if i not in cached]
        if missing:  # one slice covering them: usually the rows after an earlier answer's
            lo, hi = missing[0], missing[-1] + 1
            for i, row in enumerate(snap.flagged.slice(lo, hi - lo).to_pylist(), lo):
                cached[i] = orjson.dumps(_flagged_row(snap, row), option=orjson.OPT_NAIVE_UTC)
        keyed += [
            ((order, snap.source, entity), cached[i])
            for i, (order, entity) in enumerate(
                zip(snap.flagged_order[:end], entities, strict=True)
            )
        ]
    keyed.sort(key=lambda item: item[0])
    return b"[" + b",".join(body for _, body in keyed[:limit]) + b"]"


def _flagged_end(snap: GoldSnapshot, since: datetime | None, limit: int) -> int:
    """How many of `snap.flagged` (newest first) start at or after `since`, at most `limit`."""
    end = len(snap.flagged_order)
    if since is not None:
        end = bisect.bisect_right(snap.flagged_order, -_to_micros(since))
    return min(end, limit)


def _flagged_row(snap: GoldSnapshot, row: Row) -> Row:
    shown = _public(row, snap.key)
    shown["source"] = snap.source
    return shown


def _to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


# --- the warm table ----------------------------------------------------------------------------
class WarmGold:
    """One gold table kept in memory; re-read (its new files only) when its version moves.

    `snapshot()` never blocks on a re-read: it returns the last snapshot and, at most every
    `refresh_s`, starts a background check for a new version.
    """

    def __init__(self, path: str, contract: SourceContract, *, refresh_s: float = 1.0) -> None:
        self.path = path
        self.source = contract.name
        self.key = contract.key_field
        self.refresh_s = refresh_s
        self._table: Any = None  # the open DeltaTable, once the table exists
        self._files: dict[str, pa.Table] = {}
        self._file_ids: dict[str, int] = {}
        self._next_file_id = 0
        self._snapshot = empty_snapshot(self.source, self.key)
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def snapshot(self) -> GoldSnapshot:
        if time.monotonic() - self._checked_at >= self.refresh_s and not self._lock.locked():
            self._checked_at = time.monotonic()
            threading.Thread(target=self.refresh, name=f"warm-{self.source}", daemon=True).start()
        return self._snapshot

    def refresh(self) -> GoldSnapshot:
        """Read what changed since the last snapshot (blocking); returns the new snapshot."""
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                self._snapshot = self._read()
            except Exception:  # a half-written or vanished table: keep serving the last one
                log.exception("could not refresh %s", self.path)
                self._table = None  # and open it afresh next time
            return self._snapshot

    def _read(self) -> GoldSnapshot:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            if self._table is None:
                self._table = DeltaTable(self.path)
            else:  # reads only the log entries after the version it holds
                self._table.update_incremental()
        except TableNotFoundError:
            self._table, self._files = None, {}
            return empty_snapshot(self.source, self.key)
        table = self._table
        version = table.version()
        if version == self._snapshot.version:
            return self._snapshot
        columns = [n for n in table.schema().to_arrow().names if n != FORECASTS]
        current = table.file_uris()
        for uri in current:
            if uri not in self._file_ids:  # ids are never reused: old rows keep theirs
                self._file_ids[uri] = self._next_file_id
                self._next_file_id += 1
        self._files = {
            uri: self._files.get(uri) or _index_rows(uri, columns, self._file_ids[uri])
            for uri in current
        }
        self._file_ids = {uri: self._file_ids[uri] for uri in current}
        files = {file_id: uri for uri, file_id in self._file_ids.items()}
        committed_at = _last_commit_time(table)
        return build_snapshot(
            self.source,
            self.key,
            version,
            committed_at,
            files,
            self._files.values(),
            read_forecasts,
        )


_SHARED: dict[str, tuple[WarmGold, threading.Event]] = {}  # path -> table, first read done
_SHARED_LOCK = threading.Lock()


def shared_gold(path: str, contract: SourceContract, *, refresh_s: float = 1.0) -> WarmGold:
    """This process's one warm table of `path`, read once before it is handed out.

    The dashboard's sessions share it, and `periscope dashboard` fills it while Streamlit
    starts, so a first visitor does not wait for millions of rows to load. A caller that
    arrives during the first read waits for it (never an empty table); other paths do not."""
    with _SHARED_LOCK:
        entry = _SHARED.get(path)
        first = entry is None
        if entry is None:
            entry = _SHARED[path] = (
                WarmGold(path, contract, refresh_s=refresh_s),
                threading.Event(),
            )
    table, read = entry
    if first:
        try:
            table.refresh()
        finally:
            read.set()
    else:
        read.wait()
    return table


def _plain(kind: pa.DataType) -> pa.DataType:
    """Views and large variants as plain strings: delta-rs' MERGE writes string views, which
    Arrow cannot sort, beside files with plain strings."""
    if pa.types.is_string_view(kind) or pa.types.is_large_string(kind):
        return pa.string()
    if pa.types.is_binary_view(kind) or pa.types.is_large_binary(kind):
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        item = kind.value_field
        return pa.list_(item.with_type(_plain(item.type)))
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_plain(f.type)) for f in kind])
    return kind


def _index_rows(uri: str, columns: list[str], file_id: int) -> pa.Table:
    """A data file's rows without forecasts, with `_file` and `_row` to find them again."""
    present = set(pq.read_schema(uri).names)
    rows = pq.read_table(uri, columns=[c for c in columns if c in present], use_threads=False)
    rows = rows.cast(pa.schema([f.with_type(_plain(f.type)) for f in rows.schema]))
    rows = rows.append_column(_FILE, pa.array(np.full(rows.num_rows, file_id, np.int32)))
    return rows.append_column(_ROW, pa.array(np.arange(rows.num_rows, dtype=np.int32)))


def read_forecasts(uri: str, rows: list[int]) -> list[Any]:
    """The forecasts of some rows of one gold data file, as lists of dicts (fields by name).

    Reads only the row groups holding those rows (a day of 1,000 stations is 1.7M forecasts).
    """
    parquet = pq.ParquetFile(uri)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    group_of = (np.searchsorted(starts, rows, side="right") - 1).tolist()
    groups = sorted(set(group_of))
    column = parquet.read_row_groups(groups, columns=[FORECASTS], use_threads=False).column(0)
    begins, at = {}, 0  # where each group read begins in `column`
    for g in groups:
        begins[g], at = at, at + sizes[g]
    local = [begins[g] + r - int(starts[g]) for r, g in zip(rows, group_of, strict=True)]
    # cast first: Arrow has no take for the string views delta-rs' MERGE writes
    return column.cast(_plain(column.type)).take(local).to_pylist()  # type: ignore[no-any-return]


def _last_commit_time(table: Any) -> datetime | None:
    history = table.history(1)
    stamp = history[0].get("timestamp") if history else None
    return None if stamp is None else datetime.fromtimestamp(stamp / 1000, tz=UTC)


def gold_path(settings: Settings, contract: SourceContract) -> str:
    """Where a source's gold predictions live (the name gold gives the table)."""
    return settings.lake_path(contract.table("gold", "predictions"))
