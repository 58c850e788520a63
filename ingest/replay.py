"""Replay a real dataset into `<source>-raw` in event-time order, optionally paced and rebased.

The pure parts (`prepare_frame`, `rebase`, `build_messages`, `pacing_offsets`) turn a
dataset into the exact messages and send times and are tested without Kafka; `replay`
reads the data, sends through `ingest.producer` and reports what Kafka acknowledged.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from ingest.chaos import (
    MALFORMED_KINDS,
    WIRE_TIMESTAMP_FORMAT,
    malformed_record,
)
from ingest.datasets import read_source
from ingest.producer import encode_record, send_with_progress
from periscope import Settings
from periscope.contracts import SourceContract, get_contract

__all__ = [
    "Message",
    "ReplayReport",
    "build_messages",
    "pacing_offsets",
    "prepare_frame",
    "rebase",
    "replay",
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


def _bad_count(good: int, bad_rate: float) -> int:
    """Malformed records to add so they make `bad_rate` of everything sent."""
    return round(good * bad_rate / (1.0 - bad_rate)) if good else 0


def rebase(frame: pl.DataFrame, now: datetime, *, column: str = "timestamp") -> pl.DataFrame:
    """Shift every timestamp by one constant so the last one is `now` truncated to the second."""
    if frame.is_empty():
        return frame
    last = frame.get_column(column).max()
    assert isinstance(last, datetime)
    shift = now.astimezone(UTC).replace(microsecond=0) - last
    return frame.with_columns(pl.col(column) + shift)


def prepare_frame(
    frame: pl.DataFrame,
    contract: SourceContract,
    *,
    limit: int | None = None,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The rows to replay: event-time order, the first `limit`, rebased to `now` if given."""
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
    fields, key_field, ts = contract.fields, contract.key_field, contract.event_time_field
    rng = random.Random(seed)
    total = frame.height + _bad_count(frame.height, bad_rate)
    bad_at = set(rng.sample(range(total), total - frame.height))  # positions in what is sent
    wire = frame.select(fields).with_columns(pl.col(ts).dt.strftime(WIRE_TIMESTAMP_FORMAT))
    records = (
        (dict(zip(fields, row, strict=True)), event_time)
        for row, event_time in zip(wire.iter_rows(), frame.get_column(ts), strict=True)
    )
    upcoming = next(records, None)  # the next good record to send
    previous = upcoming
    made_bad = 0
    for position in range(total):
        if position in bad_at:
            # Damage the good record it precedes (the last one, once all are sent).
            base = upcoming or previous
            assert base is not None  # no good records means no bad ones
            kind = MALFORMED_KINDS[made_bad % len(MALFORMED_KINDS)]
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
) -> ReplayReport:
    """Replay a source's real history into its raw topic; raises unless Kafka acked every record.

    `limit` counts good records (the first ones in event time); `speedup` N > 0 sends N times
    faster than real time; `rebase_now` moves the replay so its last record is now;
    `bad_rate` mixes in that share of malformed records from `ingest.chaos`.
    """
    contract = _contract(source)
    _check_args(limit, speedup, bad_rate)
    now = datetime.now(UTC) if rebase_now else None
    frame = prepare_frame(
        read_source(contract.name, settings.data_dir, stations=stations),
        contract,
        limit=limit,
        now=now,
    )
    total = frame.height + _bad_count(frame.height, bad_rate)
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
