"""Sliding-window features per station (pure DataFrame -> DataFrame).

For each measure: mean, sample stddev, min, max, rate of change per minute (first to last
reading in the window) and trend (least-squares slope per minute); plus the count of
readings, window_start and window_end.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from periscope.contracts import SourceContract, WindowSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "FEATURE_STATS",
    "assign_windows",
    "feature_columns",
    "interval_seconds",
    "window_features",
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


def assign_windows(observations: DataFrame, spec: WindowSpec) -> DataFrame:
    """One row per (observation, sliding window containing it), with window_start/window_end."""
    from pyspark.sql import functions as F

    return (
        observations.withColumn("_window", F.window("event_time", spec.size, spec.slide))
        .withColumn("window_start", F.col("_window.start"))
        .withColumn("window_end", F.col("_window.end"))
        .drop("_window")
    )


def window_features(windowed: DataFrame, contract: SourceContract) -> DataFrame:
    """Aggregate windowed observations into one row per (station, window)."""
    from pyspark.sql import functions as F

    minutes_into_window = (F.unix_micros("event_time") - F.unix_micros("window_start")) / F.lit(
        60_000_000.0
    )
    aggregates = [F.count(F.lit(1)).alias("reading_count")]
    finish = []
    for m in contract.measure_names:
        value = F.col(m)
        seen_at = F.when(value.isNotNull(), F.col("event_time"))
        aggregates += [
            F.avg(value).alias(f"{m}_mean"),
            F.stddev_samp(value).alias(f"{m}_stddev"),
            F.min(value).alias(f"{m}_min"),
            F.max(value).alias(f"{m}_max"),
            F.min_by(value, seen_at).alias(f"_{m}_first"),
            F.max_by(value, seen_at).alias(f"_{m}_last"),
            F.min(seen_at).alias(f"_{m}_t_first"),
            F.max(seen_at).alias(f"_{m}_t_last"),
            F.regr_slope(value, minutes_into_window).alias(f"{m}_trend"),
        ]
        span_min = (F.unix_micros(f"_{m}_t_last") - F.unix_micros(f"_{m}_t_first")) / F.lit(
            60_000_000.0
        )
        finish.append(
            F.when(span_min > 0, (F.col(f"_{m}_last") - F.col(f"_{m}_first")) / span_min).alias(
                f"{m}_rate_per_min"
            )
        )
    grouped = windowed.groupBy(contract.key_field, "window_start", "window_end").agg(*aggregates)
    return grouped.select(
        contract.key_field,
        "window_start",
        "window_end",
        "reading_count",
        *[
            col
            for m, rate in zip(contract.measure_names, finish, strict=True)
            for col in (
                F.col(f"{m}_mean"),
                F.col(f"{m}_stddev"),
                F.col(f"{m}_min"),
                F.col(f"{m}_max"),
                rate,
                F.col(f"{m}_trend"),
            )
        ],
    )


def feature_columns(contract: SourceContract) -> list[str]:
    """The feature columns window_features produces, in order."""
    return [
        contract.key_field,
        "window_start",
        "window_end",
        "reading_count",
        *[f"{m}_{stat}" for m in contract.measure_names for stat in FEATURE_STATS],
    ]
