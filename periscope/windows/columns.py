"""Sliding-window features per station: their columns and interval parsing.

Windows are Spark's sliding event-time windows: epoch-aligned starts every slide, a reading
at t in every window with start <= t < start + size. For each measure: mean, sample stddev,
min, max, rate of change per minute (first to last reading in the window) and trend
(least-squares slope per minute); plus the count of readings, window_start and window_end.
Silver computes them incrementally (spark_streaming.window_state); ml.windows computes them
from scratch with DuckDB.
"""

from __future__ import annotations

import re

from periscope.contracts import SourceContract

__all__ = [
    "FEATURE_STATS",
    "feature_columns",
    "interval_seconds",
]

FEATURE_STATS = ("mean", "stddev", "min", "max", "rate_per_min", "trend")

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def interval_seconds(text: str) -> int:
    """'5 minutes' -> 300; the interval strings of a WindowSpec.

    >>> interval_seconds("10 minutes"), interval_seconds("1 hour")
    (600, 3600)
    """
    match = re.fullmatch(r"\s*(\d+)\s*(second|minute|hour|day)s?\s*", text.lower())
    if not match:
        raise ValueError(f"unsupported interval {text!r}: use '<n> seconds|minutes|hours|days'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def feature_columns(contract: SourceContract) -> list[str]:
    """The feature columns window_features produces, in order."""
    return [
        contract.key_field,
        "window_start",
        "window_end",
        "reading_count",
        *[f"{m}_{stat}" for m in contract.measure_names for stat in FEATURE_STATS],
    ]
