"""What a source's windows hold: feature columns, their types, and interval parsing.

Windows are Spark's sliding event-time windows: epoch-aligned starts every slide, a reading
at t in every window with start <= t < start + size. Each window has the entity key,
window_start, window_end and the count of its events (`reading_count`), then the columns of
the contract's aggregations in order: for a measure's `stats` its mean, sample stddev, min,
max, rate of change per minute (first to last reading) and trend (least-squares slope per
minute); `<field>_count` (non-null values), `<field>_sum`, `<field>_distinct_count`, and
`<field>_<level>_count` per level of a category.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from periscope.contracts import MEASURE_STATS, Category, SourceContract

__all__ = [
    "FEATURE_STATS",
    "WindowAggregations",
    "feature_columns",
    "feature_types",
    "interval_micros",
    "interval_seconds",
]

FEATURE_STATS = MEASURE_STATS

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


def interval_micros(text: str) -> int:
    """An interval string in microseconds (Delta's timestamp resolution).

    >>> interval_micros("1 minute")
    60000000
    """
    return interval_seconds(text) * 1_000_000


def feature_columns(contract: SourceContract) -> list[str]:
    """Every column of a source's feature windows, in order (key first)."""
    return [
        contract.key_field,
        "window_start",
        "window_end",
        "reading_count",
        *(name for name, _ in contract.feature_columns()),
    ]


def feature_types(contract: SourceContract) -> dict[str, str]:
    """The aggregate columns (after reading_count) and their type, `double` or `long`."""
    return dict(contract.feature_columns())


@dataclass(frozen=True)
class WindowAggregations:
    """A contract's window aggregations grouped by kind: what the window state keeps."""

    stats: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()
    distinct: tuple[str, ...] = ()
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, levels)

    @classmethod
    def of(cls, contract: SourceContract) -> WindowAggregations:
        def fields(how: str) -> tuple[str, ...]:
            return tuple(a.field for a in contract.aggregations if a.how == how)

        categories = []
        for name in fields("category_counts"):
            category = contract.field(name)
            assert isinstance(category, Category)
            categories.append((name, category.levels))
        return cls(
            stats=fields("stats"),
            counts=fields("count"),
            sums=fields("sum"),
            distinct=fields("distinct_count"),
            categories=tuple(categories),
        )

    @classmethod
    def measures(cls, names: list[str] | tuple[str, ...]) -> WindowAggregations:
        """Only the statistics of these measures (the sensor sources' windows)."""
        return cls(stats=tuple(names))

    @property
    def inputs(self) -> list[str]:
        """The observation columns the windows read, each once, in order."""
        names = [
            *self.stats,
            *self.counts,
            *self.sums,
            *self.distinct,
            *(name for name, _ in self.categories),
        ]
        return list(dict.fromkeys(names))
