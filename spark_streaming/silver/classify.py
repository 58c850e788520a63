"""What becomes of each validated bronze row: quarantined, duplicate, late or an observation
(pure Arrow; no Spark, no I/O).

Deduplication is on the contract's event id when it has one (many trips may share a zone
and an instant), otherwise on (key, event time) (one reading per station per instant). The
first bronze offset of a record wins, within the batch and against the observations of
earlier batches the caller passes in. A new observation older than the watermark is late:
kept as an observation, but too late for the windows.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from periscope.contracts import SourceContract

__all__ = ["DUPLICATE", "LATE", "OBSERVATION", "OUTCOMES", "QUARANTINED", "classify", "dedupe_keys"]

QUARANTINED, DUPLICATE, LATE, OBSERVATION = "quarantined", "duplicate", "late", "observation"
OUTCOMES = (QUARANTINED, DUPLICATE, LATE, OBSERVATION)


def dedupe_keys(contract: SourceContract) -> list[str]:
    """The columns that name one record: the event id, or key and event time.

    >>> from periscope.contracts import get_contract
    >>> dedupe_keys(get_contract("weather"))
    ['station_id', 'event_time']
    """
    if contract.event_id_field:
        return [contract.event_id_field]
    return [contract.key_field, "event_time"]


def classify(
    validated: pa.Table,
    earlier: pa.Table,
    keys: list[str],
    watermark: datetime | None,
) -> pa.Array:
    """The outcome of every row of `validated` (in order), one of OUTCOMES.

    `validated` has `reason` (null = good), the `keys` columns, `event_time`, `partition`
    and `offset`; `earlier` holds the `keys` of observations written by earlier batches.

    >>> rows = pa.table({"k": ["a", "a", "b", "c"], "event_time": [1, 1, 1, 0],
    ...                  "reason": [None, None, "oversize", None],
    ...                  "partition": [0, 0, 0, 0], "offset": [5, 4, 6, 7]})
    >>> classify(rows, pa.table({"k": ["c"]}), ["k"], None).to_pylist()
    ['duplicate', 'observation', 'quarantined', 'duplicate']
    """
    n = validated.num_rows
    outcome = np.full(n, OBSERVATION, dtype=object)
    good = pc.is_null(validated["reason"]).to_numpy(zero_copy_only=False)
    outcome[~good] = QUARANTINED
    rows = np.flatnonzero(good)
    if len(rows):
        candidates = validated.select([*keys, "partition", "offset"]).take(pa.array(rows))
        candidates = candidates.append_column("_row", pa.array(rows, pa.int64()))
        order = [(k, "ascending") for k in (*keys, "partition", "offset")]
        ranked = candidates.sort_by(order)
        first = _first_of_each(ranked, keys)
        repeated = ranked["_row"].to_numpy()[~first]
        outcome[repeated] = DUPLICATE
        if earlier.num_rows:
            seen = ranked.filter(pa.array(first)).join(
                earlier.select(keys).group_by(keys).aggregate([]), keys, join_type="left semi"
            )
            outcome[seen["_row"].to_numpy()] = DUPLICATE
        if watermark is not None:
            before = pc.less(
                validated["event_time"], pa.scalar(watermark, validated["event_time"].type)
            )
            late = pc.fill_null(before, False).to_numpy(zero_copy_only=False)
            outcome[late & (outcome == OBSERVATION)] = LATE
    return pa.array(outcome.tolist(), pa.string())


def _first_of_each(ranked: pa.Table, keys: list[str]) -> np.ndarray:
    """True for the first row of each run of equal `keys` in a table sorted by them."""
    n = ranked.num_rows
    first = np.ones(n, dtype=bool)
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for k in keys:
            column = ranked[k]
            equal = pc.equal(column.slice(1), column.slice(0, n - 1))
            same &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
        first[1:] = ~same
    return first
