"""Replay a real dataset into `<source>-raw` in event-time order, optionally paced and rebased.

The pure parts (`prepare_frame`, `rebase`, `build_messages`, `pacing_offsets`) turn a
dataset (or its span `--since`/`--until`) into the exact messages and send times and are tested without Kafka; `replay`
reads the data, sends through `ingest.producer` and reports what Kafka acknowledged.

`replay_follow` (`--follow-clock`) replays history as if it were arriving now: its first
run sends the first D days rebased so they end now and saves that constant offset in
`<local_dir>/replay/<source>.json`; each later run sends only the history records whose
rebased time has passed since (`plan_follow` is the pure part). Like the live producer it
saves state only after Kafka acknowledged everything, so a crash in between re-sends one
run's records; silver deduplicates on (station_id, timestamp).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ingest.chaos import (
    WIRE_TIMESTAMP_FORMAT,
    malformed_kinds,
    malformed_record,
)
from ingest.datasets import read_source
from ingest.producer import encode_record, send_with_progress
from ingest.state import write_json_atomically
from periscope import PeriscopeError, Settings
from periscope.contracts import SourceContract, get_contract

__all__ = [
    "FollowPlan",
    "FollowReport",
    "FollowState",
    "FollowStateError",
    "Message",
    "ReplayReport",
    "bad_count",
    "build_messages",
    "check_follow_stations",
    "check_span",
    "describe_follow",
    "follow_state_path",
    "load_follow_state",
    "pacing_offsets",
    "plan_follow",
    "prepare_frame",
    "rebase",
    "rebase_offset",
    "replay",
    "replay_follow",
    "save_follow_state",
    "shift",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One record to send: key, value, its event time, and the malformed kind (None = good)."""

    key: bytes
    value: bytes
    event_time: datetime
    kind: str | None = None


@dataclass
class ReplayReport:
    """What a replay sent: `good` dataset records plus `bad` malformed ones make `sent`."""

    topic: str
    sent: int
    good: int
    bad: int
    first_event: datetime | None
    last_event: datetime | None


def _contract(source: str) -> SourceContract:
    try:
        return get_contract(source)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def _check_args(limit: int | None, speedup: float, bad_rate: float) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (or None for everything), got {limit}")
    if not (math.isfinite(speedup) and speedup >= 0):
        raise ValueError(f"speedup must be a finite number >= 0 (0 = no pacing), got {speedup}")
    if not (0.0 <= bad_rate < 1.0):
        raise ValueError(f"bad_rate must be in [0, 1), got {bad_rate}")


def bad_count(good: int, bad_rate: float) -> int:
    """Malformed records to add so they make `bad_rate` of everything sent."""
    return round(good * bad_rate / (1.0 - bad_rate)) if good else 0


def _floor_second(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(microsecond=0)


def rebase_offset(frame: pl.DataFrame, now: datetime, *, column: str = "timestamp") -> timedelta:
    """The constant that moves the last timestamp of a non-empty frame to `now` (to the second)."""
    last = frame.get_column(column).max()
    if not isinstance(last, datetime):
        raise ValueError(f"cannot rebase: column {column!r} has no timestamps")
    return _floor_second(now) - last


def shift(frame: pl.DataFrame, offset: timedelta, *, column: str = "timestamp") -> pl.DataFrame:
    """Every timestamp moved by `offset`; gaps, order and every other column unchanged."""
    return frame.with_columns(pl.col(column) + offset)


def rebase(frame: pl.DataFrame, now: datetime, *, column: str = "timestamp") -> pl.DataFrame:
    """Shift every timestamp by one constant so the last one is `now` truncated to the second."""
    if frame.is_empty():
        return frame
    return shift(frame, rebase_offset(frame, now, column=column), column=column)


def _as_utc(stamp: datetime) -> datetime:
    """A datetime in UTC; a naive one is read as UTC (the datasets' and the CLI's convention)."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def check_span(since: datetime | None, until: datetime | None) -> None:
    """Raise ValueError unless `since` is before `until` (when both are given)."""
    if since is not None and until is not None and _as_utc(since) >= _as_utc(until):
        raise ValueError(
            f"since ({_utc(_as_utc(since))}) must be before until ({_utc(_as_utc(until))})"
        )


def prepare_frame(
    frame: pl.DataFrame,
    contract: SourceContract,
    *,
    limit: int | None = None,
    now: datetime | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """The rows to replay: event times in [since, until) (naive = UTC; None = open), in
    event-time order, the first `limit` of them, rebased to `now` if given."""
    check_span(since, until)
    ts = pl.col(contract.event_time_field)
    if since is not None:
        frame = frame.filter(ts >= _as_utc(since))
    if until is not None:
        frame = frame.filter(ts < _as_utc(until))
    ordered = frame.sort(contract.event_time_field, contract.key_field)
    if limit is not None:
        ordered = ordered.head(limit)
    return ordered if now is None else rebase(ordered, now, column=contract.event_time_field)


def build_messages(
    frame: pl.DataFrame, contract: SourceContract, *, bad_rate: float = 0.0, seed: int = 0
) -> Iterator[Message]:
    """Every row as a wire record, with malformed records mixed in at random positions.

    `bad_rate` is the share of malformed records in what is sent (0.1: one in ten), so
    `len(frame) * bad_rate / (1 - bad_rate)` of them, rounded, cycling through every kind.
    A malformed record is made from the good record it precedes and shares its event time.
    Deterministic in `seed`; lazy, so a whole dataset never sits in memory as bytes.
    """
    _check_args(None, 0.0, bad_rate)
    fields, key_field, ts = contract.wire_fields, contract.key_field, contract.event_time_field
    rng = random.Random(seed)
    total = frame.height + bad_count(frame.height, bad_rate)
    bad_at = set(rng.sample(range(total), total - frame.height))  # positions in what is sent
    wire = frame.select(fields).with_columns(pl.col(ts).dt.strftime(WIRE_TIMESTAMP_FORMAT))
    records = (
        (dict(zip(fields, row, strict=True)), event_time)
        for row, event_time in zip(wire.iter_rows(), frame.get_column(ts), strict=True)
    )
    upcoming = next(records, None)  # the next good record to send
    previous = upcoming
    made_bad, kinds = 0, malformed_kinds(contract)
    for position in range(total):
        if position in bad_at:
            # Damage the good record it precedes (the last one, once all are sent).
            base = upcoming or previous
            assert base is not None  # no good records means no bad ones
            kind = kinds[made_bad % len(kinds)]
            made_bad += 1
            key, value = malformed_record(contract, kind, rng, base[0])
            yield Message(key, value, base[1], kind)
        else:
            assert upcoming is not None
            record, event_time = upcoming
            yield Message(str(record[key_field]).encode(), encode_record(record), event_time)
            previous, upcoming = upcoming, next(records, None)


def _due(first: datetime, event_time: datetime, speedup: float) -> float:
    return (event_time - first).total_seconds() / speedup if speedup > 0 else 0.0


def pacing_offsets(event_times: Iterable[datetime], speedup: float) -> Iterator[float]:
    """Seconds after the start at which each record is due: event-time gaps divided by `speedup`.

    Hourly data at speedup 3600 is one second per hour of data; speedup 0 sends at once.
    """
    first: datetime | None = None
    for event_time in event_times:
        first = event_time if first is None else first
        yield _due(first, event_time, speedup)


@dataclass
class _Tally:
    good: int = 0
    bad: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None

    def add(self, message: Message) -> None:
        if message.kind is not None:
            self.bad += 1
            return
        self.good += 1
        self.first_event = self.first_event or message.event_time
        self.last_event = message.event_time


def _paced(
    messages: Iterable[Message],
    speedup: float,
    tally: _Tally,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs, each released at its pacing offset and counted in `tally`."""
    start = clock()  # offsets are measured from one start, so sleeps never drift
    first: datetime | None = None
    for message in messages:
        first = message.event_time if first is None else first
        wait = start + _due(first, message.event_time, speedup) - clock()
        if speedup > 0 and wait > 0:
            sleep(wait)
        tally.add(message)
        yield message.key, message.value


def _send(
    settings: Settings,
    contract: SourceContract,
    frame: pl.DataFrame,
    *,
    speedup: float,
    bad_rate: float,
    seed: int,
    progress: bool,
) -> ReplayReport:
    """Send a prepared frame (plus malformed records) to the raw topic; raises unless all acked."""
    total = frame.height + bad_count(frame.height, bad_rate)
    topic = contract.topic("raw")
    tally = _Tally()
    delivery = send_with_progress(
        settings,
        topic,
        _paced(build_messages(frame, contract, bad_rate=bad_rate, seed=seed), speedup, tally),
        total=total,
        description=f"replay → {topic}",
        progress=progress,
    )
    report = ReplayReport(
        topic=topic,
        sent=delivery.sent,
        good=tally.good,
        bad=tally.bad,
        first_event=tally.first_event,
        last_event=tally.last_event,
    )
    log.debug(
        "replayed %d records to %s (%d good, %d malformed), events %s .. %s",
        report.sent,
        topic,
        report.good,
        report.bad,
        report.first_event,
        report.last_event,
    )
    return report


def replay(
    settings: Settings,
    source: str,
    *,
    limit: int | None = None,
    stations: list[str] | None = None,
    speedup: float = 0.0,
    rebase_now: bool = False,
    bad_rate: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ReplayReport:
    """Replay a source's real history into its raw topic; raises unless Kafka acked every record.

    `since`/`until` choose the event-time span [since, until) (naive = UTC), e.g. the months
    a backfill or an evaluation needs; `limit` counts good records (the first ones in event
    time, within the span); `speedup` N > 0 sends N times faster than real time;
    `rebase_now` moves the replay so its last record is now; `bad_rate` mixes in that share
    of malformed records from `ingest.chaos`.
    """
    contract = _contract(source)
    _check_args(limit, speedup, bad_rate)
    check_span(since, until)  # before the (slow) read of the history
    now = datetime.now(UTC) if rebase_now else None
    frame = prepare_frame(
        read_source(contract.name, settings.data_dir, stations=stations),
        contract,
        limit=limit,
        now=now,
        since=since,
        until=until,
    )
    return _send(
        settings,
        contract,
        frame,
        speedup=speedup,
        bad_rate=bad_rate,
        seed=seed,
        progress=progress,
    )


# --- follow the clock --------------------------------------------------------------------------

_FOLLOW_STATE_VERSION = 1


class FollowStateError(PeriscopeError):
    """A follow-clock replay cannot go on from its state file (unreadable, or other stations)."""


@dataclass(frozen=True)
class FollowState:
    """Where a follow-clock replay stands: saved after each run Kafka fully acknowledged.

    `offset` is added to every original event time (fixed by the first run);
    `replayed_through` is the last original event time sent; `stations` is the sorted
    station filter (None = every station); `days` is the first run's `--days`.
    """

    source: str
    offset: timedelta
    replayed_through: datetime
    stations: tuple[str, ...] | None
    days: float


@dataclass(frozen=True)
class FollowPlan:
    """One follow-clock run: the rebased rows to send and the state to save once acked.

    `next_due` is the rebased time of the first history record after this run (None when
    the history is exhausted); `since` is the rebased time of the last record sent before
    this run (None on a first run).
    """

    frame: pl.DataFrame
    state: FollowState
    first_run: bool
    since: datetime | None
    next_due: datetime | None


@dataclass
class FollowReport:
    """What one `replay_follow` run sent (`replay.sent == 0`: nothing was due) and its state."""

    replay: ReplayReport
    state_path: Path
    state: FollowState
    first_run: bool
    since: datetime | None
    next_due: datetime | None
    notes: list[str] = field(default_factory=list)


def _station_key(stations: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if stations is None else tuple(sorted(set(stations)))


def _describe_stations(stations: tuple[str, ...] | None) -> str:
    return "all stations" if stations is None else "stations " + ",".join(stations)


def _utc(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_days(days: float) -> None:
    if not (math.isfinite(days) and days > 0):
        raise ValueError(f"days must be a finite number > 0, got {days}")


def check_follow_stations(
    state: FollowState, stations: Sequence[str] | None, state_path: Path | None = None
) -> None:
    """Raise FollowStateError unless `stations` is the filter the replay was started with."""
    wanted = _station_key(stations)
    if wanted != state.stations:
        where = str(state_path) if state_path is not None else "its state file"
        raise FollowStateError(
            f"this follow-clock replay of {state.source} was started with "
            f"{_describe_stations(state.stations)}, not {_describe_stations(wanted)}: "
            f"run it with the same --stations, or delete {where} to start a new one "
            "(rebased to now again)"
        )


def _head_whole_timestamps(frame: pl.DataFrame, limit: int, column: str) -> pl.DataFrame:
    """At most `limit` rows of an event-time ordered frame, never splitting one timestamp.

    A later run sends what comes strictly after the last time sent, so rows of that time
    left out now would never be sent: the partial last timestamp is dropped instead.
    """
    if frame.height <= limit:
        return frame
    cut = frame.get_column(column)[limit]  # the first row that does not fit
    kept = frame.filter(pl.col(column) < cut)
    if kept.is_empty():
        raise ValueError(
            f"limit {limit} is smaller than the {frame.filter(pl.col(column) == cut).height} "
            f"records at the first timestamp ({_utc(cut)}); raise --limit or drop it"
        )
    return kept


def _first_after(ordered: pl.DataFrame, column: str, after: datetime) -> datetime | None:
    later = ordered.get_column(column).filter(ordered.get_column(column) > after)
    first = later.min()
    return first if isinstance(first, datetime) else None


def plan_follow(
    frame: pl.DataFrame,
    contract: SourceContract,
    state: FollowState | None,
    *,
    now: datetime,
    days: float | None = None,
    stations: Sequence[str] | None = None,
    limit: int | None = None,
    state_path: Path | None = None,
) -> FollowPlan:
    """What a follow-clock run sends, given the history `frame`, the saved state and `now`.

    First run (`state` None): the first `days` days of history in event time, at most
    `limit` rows cut at a whole timestamp, shifted by one constant so the last is `now`
    (to the second). Later runs: the rows whose original event time is in
    (`replayed_through`, now - offset], shifted by the saved offset; `days` and `limit`
    are ignored. Raises FollowStateError when `stations` differ from the saved filter.
    """
    ts = contract.event_time_field
    ordered = frame.sort(ts, contract.key_field)
    if state is None:
        if days is None:
            raise FollowStateError(
                "the first follow-clock run of a source needs --days D: how many days of "
                "history to replay, ending now"
            )
        _check_days(days)
        if ordered.is_empty():
            raise ValueError(f"no {contract.name} records to replay")
        start = ordered.get_column(ts).min()
        assert isinstance(start, datetime)
        chosen = ordered.filter(pl.col(ts) < start + timedelta(days=days))
        if limit is not None:
            chosen = _head_whole_timestamps(chosen, limit, ts)
        offset = rebase_offset(chosen, now, column=ts)
        through = chosen.get_column(ts).max()
        assert isinstance(through, datetime)
        new_state = FollowState(contract.name, offset, through, _station_key(stations), days)
        since = None
    else:
        check_follow_stations(state, stations, state_path)
        cutoff = _floor_second(now) - state.offset
        chosen = ordered.filter((pl.col(ts) > state.replayed_through) & (pl.col(ts) <= cutoff))
        through = chosen.get_column(ts).max() if not chosen.is_empty() else state.replayed_through
        assert isinstance(through, datetime)
        new_state = FollowState(state.source, state.offset, through, state.stations, state.days)
        since = state.replayed_through + state.offset
    upcoming = _first_after(ordered, ts, new_state.replayed_through)
    return FollowPlan(
        frame=shift(chosen, new_state.offset, column=ts),
        state=new_state,
        first_run=state is None,
        since=since,
        next_due=None if upcoming is None else upcoming + new_state.offset,
    )


def follow_state_path(settings: Settings, source: str) -> Path:
    """`<local_dir>/replay/<source>.json`."""
    return settings.local_dir / "replay" / f"{source}.json"


def load_follow_state(path: Path, source: str) -> FollowState | None:
    """The state saved at `path`; None when there is none yet (a first run).

    An unreadable file is an error, not a fresh start: starting over would rebase the
    history to now again and send it a second time under other timestamps.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        body = json.loads(text)
        if body.get("version") != _FOLLOW_STATE_VERSION:
            raise ValueError(f"version {body.get('version')!r}, expected {_FOLLOW_STATE_VERSION}")
        if body["source"] != source:
            raise ValueError(f"it is for source {body['source']!r}, not {source!r}")
        through = datetime.fromisoformat(body["replayed_through"])
        if through.tzinfo is None:
            raise ValueError(f"replayed_through {body['replayed_through']!r} has no time zone")
        stations = body["stations"]
        state = FollowState(
            source=source,
            offset=timedelta(seconds=float(body["offset_seconds"])),
            replayed_through=through.astimezone(UTC),
            stations=None if stations is None else _station_key([str(s) for s in stations]),
            days=float(body["days"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise FollowStateError(
            f"cannot read the follow-clock replay state {path}: {problem}. Fix it, or delete it "
            "to start a new follow-clock replay (rebased to now again)."
        ) from exc
    return state


def save_follow_state(path: Path, state: FollowState) -> None:
    """Write the state atomically: a temporary file beside it, fsynced, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = state.offset.total_seconds()
    body: dict[str, Any] = {
        "version": _FOLLOW_STATE_VERSION,
        "source": state.source,
        "offset_seconds": int(seconds) if seconds.is_integer() else seconds,
        "replayed_through": state.replayed_through.astimezone(UTC).isoformat(),
        "stations": None if state.stations is None else list(state.stations),
        "days": int(state.days) if float(state.days).is_integer() else state.days,
    }
    write_json_atomically(path, body)


def replay_follow(
    settings: Settings,
    source: str,
    *,
    days: float | None = None,
    limit: int | None = None,
    stations: list[str] | None = None,
    bad_rate: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    now: datetime | None = None,
    state_path: Path | None = None,
) -> FollowReport:
    """One follow-clock run (see `plan_follow`): send what is due, then save the state.

    The state (default `follow_state_path`) is written only after Kafka acknowledged every
    record; a run with nothing due sends nothing and leaves it as it was.
    """
    contract = _contract(source)
    _check_args(limit, 0.0, bad_rate)
    if days is not None:
        _check_days(days)
    now = datetime.now(UTC) if now is None else now
    path = follow_state_path(settings, contract.name) if state_path is None else state_path
    state = load_follow_state(path, contract.name)
    if state is not None:  # before the (slow) read of the history
        check_follow_stations(state, stations, path)
    plan = plan_follow(
        read_source(contract.name, settings.data_dir, stations=stations),
        contract,
        state,
        now=now,
        days=days,
        stations=stations,
        limit=limit,
        state_path=path,
    )
    notes: list[str] = []
    if state is not None and days is not None and days != state.days:
        notes.append(
            f"--days {days:g} ignored: this follow-clock replay started with --days "
            f"{state.days:g} (delete {path} to start a new one)"
        )
    if plan.frame.is_empty():
        report = ReplayReport(contract.topic("raw"), 0, 0, 0, None, None)
    else:
        report = _send(
            settings,
            contract,
            plan.frame,
            speedup=0.0,
            bad_rate=bad_rate,
            seed=seed,
            progress=progress,
        )
        save_follow_state(path, plan.state)  # _send raised unless Kafka acked every record
    return FollowReport(
        replay=report,
        state_path=path,
        state=plan.state,
        first_run=plan.first_run,
        since=plan.since,
        next_due=plan.next_due,
        notes=notes,
    )


def describe_follow(report: FollowReport) -> str:
    """The one-line summary of a follow-clock run: what was sent, its rebased times, the state."""
    sent = report.replay
    exhausted = report.next_due is None
    if sent.sent == 0:
        since = _utc(report.since) if report.since is not None else "the start"
        if exhausted:
            return (
                f"{sent.topic}: history exhausted, nothing new since {since} and nothing more "
                f"will follow (delete {report.state_path} to start a new follow-clock replay)"
            )
        assert report.next_due is not None
        return (
            f"{sent.topic}: nothing new since {since}; next record due at "
            f"{_utc(report.next_due)} (state {report.state_path})"
        )
    assert sent.first_event is not None and sent.last_event is not None
    run = "first run" if report.first_run else "follow-up"
    line = (
        f"replayed {sent.sent} records into {sent.topic} ({run}: {sent.good} good, "
        f"{sent.bad} malformed); events {_utc(sent.first_event)} .. {_utc(sent.last_event)}; "
        f"state {report.state_path}"
    )
    if exhausted:
        line += "; history now exhausted"
    return line
