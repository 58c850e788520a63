"""Round planning: how many silver batches a round takes, and which actor scores an entity."""

from __future__ import annotations

import zlib

import pandas as pd

__all__ = ["entity_owner", "plan_round", "split_by_entity"]


def plan_round(batches: pd.DataFrame, max_rows: int) -> int | None:
    """The last silver batch id of the next round: as many whole batches as fit in `max_rows`
    windows, and always at least one (a batch is never split: its rows commit together)."""
    if len(batches) == 0:
        return None
    within = batches["windows"].cumsum() <= max_rows
    last = int(within.to_numpy().nonzero()[0].max()) if within.any() else 0
    return int(batches["silver_batch_id"].iloc[last])


def entity_owner(entity_id: str, parts: int) -> int:
    """Which of `parts` actors scores an entity (a station, a zone): always the same one (a
    stable hash), so its forecast caches are built once, on one actor.

    >>> entity_owner("denver", 2) == entity_owner("denver", 2)
    True
    """
    return zlib.crc32(entity_id.encode()) % parts


def split_by_entity(features: pd.DataFrame, parts: int, key: str) -> list[pd.DataFrame]:
    """`parts` frames (some may be empty): frame i holds the entities (column `key`) actor i
    owns."""
    owner = features[key].astype(str).map(lambda entity: entity_owner(entity, parts))
    return [features[owner == p] for p in range(parts)]
