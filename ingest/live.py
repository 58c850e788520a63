"""The live producer: poll Open-Meteo every few minutes, send new observations to `weather-raw`.

No (station_id, timestamp) is sent twice, across restarts too: the last timestamp sent per
station is kept in a small JSON state file, advanced only for records Kafka acknowledged
and replaced atomically. API outages do not stop the loop: a poll that fails after the
client's retries is logged and counted, and the next one runs on schedule.

One gap remains, as with any producer that keeps its state outside Kafka: a crash between
Kafka's acknowledgement and the state write re-sends that one batch on restart; silver
deduplicates on (station_id, timestamp).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingest.datasets import Station, load_stations
from ingest.open_meteo import (
    CurrentConditions,
    HttpOpenMeteoClient,
    OpenMeteoClient,
    OpenMeteoError,
)
from ingest.producer import ProduceError, build_producer, check_topic, encode_record, send_all
from ingest.state import write_json_atomically
from periscope import PeriscopeError, Settings
from periscope.contracts import get_contract
from periscope.messages import Publisher

__all__ = [
    "LiveError",
    "LiveReport",
    "advance_state",
    "default_state_path",
    "load_state",
    "next_poll_at",
    "run_live",
    "save_state",
    "select_new",
    "select_stations",
]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_CLOSE_TIMEOUT_S = 10.0  # on exit, how long in-flight records get to be acknowledged

LiveState = dict[str, datetime]
"""The last timestamp sent per station id."""


class LiveError(PeriscopeError):
    """The live producer cannot start: bad station selection, unreadable state, no topic."""


@dataclass
class LiveReport:
    """What one `run_live` did: polls made, records Kafka acknowledged, skips and failures."""

    polls: int = 0
    sent: int = 0
    duplicates_skipped: int = 0
    failed_polls: int = 0


# --- pure logic ------------------------------------------------------------------------------


def select_stations(stations: Sequence[Station], wanted: str) -> list[Station]:
    """The stations named in a comma-separated id list (`settings.live_stations`); empty = all."""
    ids = [part.strip() for part in wanted.split(",") if part.strip()]
    if not ids:
        return list(stations)
    known = {s.station_id for s in stations}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise LiveError(
            f"unknown station id(s) {', '.join(unknown)} in PERISCOPE_LIVE_STATIONS; "
            f"known: {', '.join(sorted(known))}"
        )
    chosen = set(ids)
    return [s for s in stations if s.station_id in chosen]


def select_new(
    observations: Iterable[CurrentConditions], state: Mapping[str, datetime]
) -> tuple[list[CurrentConditions], int]:
    """The observations newer than the station's last sent timestamp, and how many were not.

    An observation at or before the last sent time was sent already (or is older than what
    was); a repeat of the same (station, timestamp) within the batch is sent once. The
    result is ordered by station, then time, so each station's records reach Kafka in order.
    """
    fresh: dict[tuple[str, datetime], CurrentConditions] = {}
    skipped = 0
    for obs in observations:
        last = state.get(obs.station_id)
        key = (obs.station_id, obs.timestamp)
        if (last is not None and obs.timestamp <= last) or key in fresh:
            skipped += 1
        else:
            fresh[key] = obs
    return [fresh[key] for key in sorted(fresh)], skipped


def advance_state(state: Mapping[str, datetime], sent: Iterable[CurrentConditions]) -> LiveState:
    """A new state where each station's last timestamp is at least that of what was sent."""
    new = dict(state)
    for obs in sent:
        last = new.get(obs.station_id)
        if last is None or obs.timestamp > last:
            new[obs.station_id] = obs.timestamp
    return new


def next_poll_at(scheduled: float, interval_s: float, now: float) -> float:
    """The first slot of the grid `scheduled + k * interval_s` (k >= 1) that is not past `now`.

    Polls keep to a fixed grid of a monotonic clock, so time spent polling does not drift
    the schedule; a poll that overran whole intervals skips those slots instead of bursting.

    >>> next_poll_at(100.0, 60.0, now=103.5)
    160.0
    >>> next_poll_at(100.0, 60.0, now=250.0)
    280.0
    """
    slots = max(1, math.ceil((now - scheduled) / interval_s))
    return scheduled + slots * interval_s


# --- the state file --------------------------------------------------------------------------


def default_state_path(settings: Settings) -> Path:
    """`<local_dir>/ingest/live_state.json`."""
    return settings.local_dir / "ingest" / "live_state.json"


def load_state(path: Path) -> LiveState:
    """The state saved at `path`; empty when there is no file yet.

    An unreadable file is an error, not a fresh start: starting over would send again
    everything the API still reports.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        body = json.loads(text)
        if body.get("version") != _STATE_VERSION:
            raise ValueError(f"version {body.get('version')!r}, expected {_STATE_VERSION}")
        state = {
            str(station): _parse_utc(stamp) for station, stamp in dict(body["last_sent"]).items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LiveError(
            f"cannot read the live state file {path}: {exc}. Fix it, or delete it to start "
            "over (observations the API still reports will then be sent again)."
        ) from exc
    return state


def save_state(path: Path, state: Mapping[str, datetime]) -> None:
    """Write the state atomically: a temporary file beside it, fsynced, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "version": _STATE_VERSION,
        "last_sent": {
            station: stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for station, stamp in sorted(state.items())
        },
    }
    write_json_atomically(path, body)


def _parse_utc(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return stamp.astimezone(UTC)


# --- the loop --------------------------------------------------------------------------------


class _Acks:
    """Which records Kafka acknowledged, one by one.

    `send_all` only says whether the whole batch got through; knowing each record lets the
    state advance for what was delivered even when a batch fails half-way or Ctrl-C
    interrupts the wait (closing the producer then still delivers what was in flight).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[bytes, bytes], CurrentConditions] = {}
        self._acked: list[tuple[bytes, bytes]] = []

    def messages(self, observations: Sequence[CurrentConditions]) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs for `send_all`, remembered so their acknowledgements are known."""
        pairs = []
        for obs in observations:
            pair = (obs.station_id.encode(), encode_record(obs.to_record()))
            self._in_flight[pair] = obs
            pairs.append(pair)
        return pairs

    def delivered(self, key: bytes | None, value: bytes) -> None:
        """The producer's callback for each acknowledged record."""
        assert key is not None  # every live record is keyed by its station
        with self._lock:  # librdkafka calls back on the thread that polls: be safe anyway
            self._acked.append((key, value))

    def take_acked(self) -> list[CurrentConditions]:
        """The records acknowledged since the last call."""
        with self._lock:
            acked, self._acked = self._acked, []
        return [self._in_flight.pop(pair) for pair in acked]


def _check_topic(producer: Publisher, topic: str, settings: Settings) -> None:
    try:
        check_topic(producer, topic, settings)
    except ProduceError as exc:
        raise LiveError(str(exc)) from exc


def run_live(
    settings: Settings,
    *,
    client: OpenMeteoClient | None = None,
    stations: Sequence[Station] | None = None,
    interval_s: float | None = None,
    max_polls: int | None = None,
    state_path: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> LiveReport:
    """Poll Open-Meteo every `interval_s` and send what is new to `weather-raw`.

    Runs until `max_polls` polls were made (forever when None) or Ctrl-C, and returns the
    counts either way. Defaults: the client, interval and stations come from `settings`
    (`open_meteo_*`, `live_poll_interval_s`, `live_stations` over the dataset's cities);
    the state file is `default_state_path(settings)`. Raises LiveError when it cannot start,
    and ProduceError when Kafka does not acknowledge a batch (the state then holds what
    Kafka did acknowledge, so a restart sends the rest and nothing twice).
    """
    interval = settings.live_poll_interval_s if interval_s is None else interval_s
    if interval <= 0:
        raise ValueError(f"interval_s must be positive, got {interval}")
    if max_polls is not None and max_polls < 1:
        raise ValueError(f"max_polls must be at least 1 (or None for no limit), got {max_polls}")
    if stations is None:
        stations = select_stations(load_stations(settings.data_dir), settings.live_stations)
    stations = list(stations)
    if not stations:
        raise LiveError("no stations to poll")
    ids = [s.station_id for s in stations]
    if len(set(ids)) != len(ids):
        raise LiveError(
            f"station ids are not unique: {sorted(i for i in set(ids) if ids.count(i) > 1)}"
        )
    state_path = default_state_path(settings) if state_path is None else state_path
    state = load_state(state_path)
    topic = get_contract("weather").topic("raw")

    acks = _Acks()
    producer = build_producer(settings, on_delivered=acks.delivered)
    own_client = client is None
    api: OpenMeteoClient = (
        HttpOpenMeteoClient(settings.open_meteo_base_url, timeout_s=settings.open_meteo_timeout_s)
        if client is None
        else client
    )
    report = LiveReport()

    def commit() -> None:
        """Persist what Kafka acknowledged since the last commit."""
        nonlocal state
        acked = acks.take_acked()
        if acked:
            state = advance_state(state, acked)
            save_state(state_path, state)
            report.sent += len(acked)

    log.info(
        "polling Open-Meteo for %d station(s) every %g s into %s (state: %s)",
        len(stations),
        interval,
        topic,
        state_path,
    )
    try:
        _check_topic(producer, topic, settings)
        slot = clock()
        while True:
            report.polls += 1
            try:
                observations = api.current(stations)
            except OpenMeteoError as exc:
                report.failed_polls += 1
                log.warning("poll %d failed, trying again next interval: %s", report.polls, exc)
            else:
                new, skipped = select_new(observations, state)
                report.duplicates_skipped += skipped
                if new:
                    try:
                        send_all(producer, topic, acks.messages(new))
                    finally:
                        commit()
                log.info("poll %d: %d new, %d already sent", report.polls, len(new), skipped)
            if max_polls is not None and report.polls >= max_polls:
                break
            previous, slot = slot, next_poll_at(slot, interval, clock())
            if slot - previous > interval * 1.5:
                log.warning(
                    "poll %d took longer than the %g s interval; skipping %d slot(s)",
                    report.polls,
                    interval,
                    round((slot - previous) / interval) - 1,
                )
            sleep(max(0.0, slot - clock()))
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        try:
            producer.close(_CLOSE_TIMEOUT_S)  # delivers what is still in flight
            commit()
        finally:
            if own_client and isinstance(api, HttpOpenMeteoClient):
                api.close()
            log.info(
                "live producer stopped after %d poll(s): %d sent, %d duplicate(s) skipped, "
                "%d failed poll(s)",
                report.polls,
                report.sent,
                report.duplicates_skipped,
                report.failed_polls,
            )
    return report
