"""The window kernel every stage shares: feature columns, interval parsing and the incremental
window state (pure Arrow/numpy/DuckDB, no Spark). Silver keeps windows with it; ml reads the
same column names; `ml.windows` is the from-scratch DuckDB reference the tests compare with."""

from periscope.windows.columns import (
    FEATURE_STATS,
    WindowAggregations,
    feature_columns,
    feature_types,
    interval_micros,
    interval_seconds,
)
from periscope.windows.state import WindowState, batch_partials, finish, merge

__all__ = [
    "FEATURE_STATS",
    "WindowAggregations",
    "WindowState",
    "batch_partials",
    "feature_columns",
    "feature_types",
    "finish",
    "interval_micros",
    "interval_seconds",
    "merge",
]
