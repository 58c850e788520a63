"""Malformed records on `<source>-raw`, one per kind of damage silver must quarantine.

Each kind breaks a valid wire record in exactly one way, so a test (or a person reading
the quarantine) can tell which check caught it. `produce_chaos` sends a batch of them
through the project's producer; `ingest.replay` mixes them into a replay.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest.producer import encode_record, send_with_progress
from periscope import Settings
from periscope.contracts import (
    Category,
    Count,
    Field,
    Flag,
    Measure,
    SourceContract,
    get_contract,
)

__all__ = [
    "BROKEN_RULE",
    "MALFORMED_KINDS",
    "OUT_OF_BAND_SENTINEL",
    "WIRE_TIMESTAMP_FORMAT",
    "ChaosReport",
    "malformed_kinds",
    "malformed_record",
    "malformed_records",
    "produce_chaos",
]

log = logging.getLogger(__name__)

MALFORMED_KINDS: tuple[str, ...] = (
    "broken_json",
    "wrong_type",
    "missing_field",
    "out_of_range",
    "sentinel",
    "oversize",
    "invalid_utf8",
)

# Well-formed but impossible: a record that breaks one of the contract's cross-field rules
# (a trip that ends before it starts). Only contracts with rules get this kind.
BROKEN_RULE = "broken_rule"

# A contract without sentinels (weather) gets the classic "-9999" missing-value marker of
# station networks: outside every weather range, so silver must reject it, not average it.
OUT_OF_BAND_SENTINEL = -9999.0

WIRE_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_NOT_NUMBERS = ("n/a", "error", "--", "high", "twelve", "null?")
# Each is invalid UTF-8: a lone 0xFF, a bad continuation, a UTF-16 surrogate, a stray
# continuation byte.
_INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80")


@dataclass
class ChaosReport:
    """What `produce_chaos` sent: the topic, the total and the count per kind."""

    topic: str
    sent: int
    by_kind: dict[str, int] = field(default_factory=dict)


def malformed_kinds(contract: SourceContract) -> tuple[str, ...]:
    """The kinds of damage for this contract: every field-level kind, then `broken_rule`
    when the contract has rules."""
    return (*MALFORMED_KINDS, BROKEN_RULE) if contract.rules else MALFORMED_KINDS


def _key(contract: SourceContract, record: Mapping[str, Any]) -> bytes:
    return str(record[contract.key_field]).encode()


def _outside(
    measure_min: float, measure_max: float, sentinels: Sequence[float], rng: random.Random
) -> float:
    span = measure_max - measure_min
    while True:
        offset = round(span * rng.uniform(0.05, 1.0) + 1.0, 2)
        value = measure_max + offset if rng.random() < 0.5 else measure_min - offset
        if value not in sentinels:  # a sentinel is its own kind of damage
            return value


def malformed_record(
    contract: SourceContract, kind: str, rng: random.Random, base_record: Mapping[str, Any]
) -> tuple[bytes, bytes]:
    """(key, value) of `base_record` (a valid wire record) damaged in the way `kind` names.

    broken_json: truncated; wrong_type: a measure is a non-numeric string; missing_field:
    no key or no event time; out_of_range: a required measure outside its valid range;
    sentinel: every measure at its sentinel (UCI's -200), or `OUT_OF_BAND_SENTINEL` (-9999.0)
    for a contract without one; oversize: whitespace-padded past `max_record_bytes`;
    invalid_utf8: invalid bytes inside the station id; broken_rule: the values of one of the
    contract's rules' `violation` (a fare for no distance), everything else kept.
    """
    key = _key(contract, base_record)
    record = dict(base_record)
    if kind == "broken_json":
        body = encode_record(record)
        return key, body[: rng.randrange(1, len(body) - 1)]  # no proper prefix of {...} parses
    if kind == "wrong_type":
        record[rng.choice([f.name for f in contract.value_fields if f.numeric])] = rng.choice(
            _NOT_NUMBERS
        )
    elif kind == "missing_field":
        del record[rng.choice((contract.key_field, contract.event_time_field))]
    elif kind == "out_of_range":
        measure = rng.choice([m for m in contract.measures if m.required])
        record[measure.name] = _outside(
            measure.valid_min, measure.valid_max, measure.sentinels, rng
        )
    elif kind == "sentinel":
        for m in contract.measures:
            record[m.name] = m.sentinels[0] if m.sentinels else OUT_OF_BAND_SENTINEL
    elif kind == "oversize":
        body = encode_record(record)
        # Whitespace keeps it valid JSON with the right fields: only its size is wrong.
        padding = contract.max_record_bytes - len(body) + rng.randint(1, 4096)
        return key, body[:-1] + b" " * padding + b"}"
    elif kind == "invalid_utf8":
        body = encode_record(record)
        station = json.dumps(record[contract.key_field], ensure_ascii=False).encode()
        damaged = station[:-1] + rng.choice(_INVALID_UTF8) + station[-1:]
        return key, body.replace(station, damaged, 1)
    elif kind == BROKEN_RULE and contract.rules:
        record.update(rng.choice(contract.rules).violation)
    else:
        known = ", ".join(malformed_kinds(contract))
        raise ValueError(f"unknown malformed kind {kind!r} for {contract.name}; known: {known}")
    return key, encode_record(record)


def _synthetic_record(
    contract: SourceContract, rng: random.Random, entity_id: str, timestamp: datetime
) -> dict[str, Any]:
    """A valid record of any contract: in-range values of every field for one entity."""
    record: dict[str, Any] = {
        contract.key_field: entity_id,
        contract.event_time_field: timestamp.strftime(WIRE_TIMESTAMP_FORMAT),
    }
    for f in contract.value_fields:
        record[f.name] = _valid_value(f, rng)
    return record


def _valid_value(f: Field, rng: random.Random) -> Any:
    if isinstance(f, Measure):
        return round(rng.uniform(f.valid_min, f.valid_max), 2)
    if isinstance(f, Count):
        return rng.randint(0, f.valid_max if f.valid_max is not None else 10)
    if isinstance(f, Category):
        return rng.choice(f.levels)
    if isinstance(f, Flag):
        return rng.random() < 0.5
    return f"{f.name}-{rng.getrandbits(48):012x}"  # a text field: unique enough for an event id


def malformed_records(
    contract: SourceContract,
    count: int,
    *,
    seed: int,
    base_records: Sequence[Mapping[str, Any]] | None = None,
) -> list[tuple[str, bytes, bytes]]:
    """`count` (kind, key, value) records cycling through every kind of the contract
    (`malformed_kinds`), deterministic in `seed`.

    Each damages a record drawn from `base_records`; without them, a synthetic in-range
    record of station `chaos` stamped with the current second.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    if not base_records:
        now = datetime.now(UTC).replace(microsecond=0)
        base_records = [_synthetic_record(contract, rng, "chaos", now)]
    kinds = malformed_kinds(contract)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out.append((kind, *malformed_record(contract, kind, rng, rng.choice(base_records))))
    return out


def _entity_ids(settings: Settings, contract: SourceContract) -> list[str]:
    """The source's real entity ids when its contract names a reader, else `chaos`."""
    if contract.reader is None:
        return ["chaos"]
    return contract.dataset_reader().entities(settings.data_dir)


def produce_chaos(
    settings: Settings, source: str, *, count: int, seed: int = 0, progress: bool = True
) -> ChaosReport:
    """Send `count` malformed records (every kind in turn) to the source's raw topic."""
    try:
        contract = get_contract(source)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    bases = [_synthetic_record(contract, rng, s, now) for s in _entity_ids(settings, contract)]
    records = malformed_records(contract, count, seed=seed, base_records=bases)
    topic = contract.topic("raw")
    delivery = send_with_progress(
        settings,
        topic,
        ((key, value) for _, key, value in records),
        total=len(records),
        description=f"chaos → {topic}",
        progress=progress,
    )
    by_kind: dict[str, int] = {}
    for kind, _, _ in records:
        by_kind[kind] = by_kind.get(kind, 0) + 1
    log.debug("sent %d malformed records to %s: %s", delivery.sent, topic, by_kind)
    return ChaosReport(topic=topic, sent=delivery.sent, by_kind=by_kind)
