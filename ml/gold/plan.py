"""Round planning: how many silver batches a round takes, and which actor scores a station."""

from __future__ import annotations

import zlib

import pandas as pd

from ml.gold.table import KEY

__all__ = ["plan_round", "split_by_station", "station_owner"]


def plan_round(batches: pd.DataFrame, max_rows: int) -> int | None:
    """The last silver batch id of the next round: as many whole batches as fit in `max_rows`
    windows, and always at least one (a batch is never split: its rows commit together)."""
    if len(batches) == 0:
        return None
    within = batches["windows"].cumsum() <= max_rows
    last = int(within.to_numpy().nonzero()[0].max()) if within.any() else 0
    return int(batches["silver_batch_id"].iloc[last])


def station_owner(station_id: str, parts: int) -> int:
    """Which of `parts` actors scores a station: always the same one (a stable hash), so a
    station's forecast caches are built once, on one actor.

    >>> station_owner("denver", 2) == station_owner("denver", 2)
    True
    """
    return zlib.crc32(station_id.encode()) % parts


def split_by_station(features: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    """`parts` frames (some may be empty): frame i holds the stations actor i owns."""
    owner = features[KEY].astype(str).map(lambda station: station_owner(station, parts))
    return [features[owner == p] for p in range(parts)]
