"""Silver's sliding-window features computed with DuckDB over a pandas frame, without Spark.

The same windows as silver's (periscope.windows.state): epoch-aligned windows of the
contract's size every slide, one row per (entity, window) holding at least one reading, with
every aggregation the contract's window names. It is the from-scratch reference the
incremental state is tested against; anomaly evaluation uses it to build features for
observations it has altered itself.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from periscope.contracts import SourceContract, category_column
from periscope.time import naive_utc
from periscope.windows import (
    WindowAggregations,
    feature_columns,
    feature_types,
    interval_micros,
)

__all__ = ["window_features"]


def window_features(observations: pd.DataFrame, contract: SourceContract) -> pd.DataFrame:
    """One row per (entity, sliding window): `feature_columns(contract)`, NaN where Spark says null.

    `observations` has the contract's key, `event_time` (naive UTC or tz-aware) and the
    fields the windows aggregate (NaN or None = missing). Sorted by key, window_start;
    window_start and window_end are naive UTC.
    """
    key = contract.key_field
    plan = WindowAggregations.of(contract)
    missing = [c for c in (key, "event_time", *plan.inputs) if c not in observations.columns]
    if missing:
        raise ValueError(f"observations lack column(s) {', '.join(missing)}")

    text = {*plan.distinct, *(name for name, _ in plan.categories)}

    def column(name: str) -> pd.Series:
        if name in text:
            return observations[name].astype("string")
        return pd.to_numeric(observations[name], errors="coerce").astype("float64")

    obs = pd.DataFrame(
        {
            "entity": observations[key].astype(str),
            "event_time": naive_utc(observations["event_time"]).astype("datetime64[us]"),
            **{f"v_{name}": column(name) for name in plan.inputs},
        }
    )
    con = duckdb.connect()
    try:
        con.register("obs", obs)
        sql = _sql(
            plan, interval_micros(contract.window.size), interval_micros(contract.window.slide)
        )
        result = con.sql(sql).df()
    finally:
        con.close()

    result = result.rename(columns={"entity": key})
    for name in ("window_start", "window_end"):
        result[name] = result[name].astype("datetime64[ns]")
    features = result[feature_columns(contract)].copy()
    types = feature_types(contract)
    floats = [c for c, kind in types.items() if kind == "double"]
    # DuckDB's regr_slope says NaN where the slope is undefined; Spark says null.
    features[floats] = features[floats].astype("float64").replace([np.inf, -np.inf], np.nan)
    for name in ["reading_count", *(c for c, kind in types.items() if kind == "long")]:
        features[name] = features[name].astype("int64")
    return features.sort_values([key, "window_start"], ignore_index=True)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _aggregates(plan: WindowAggregations) -> list[str]:
    """The select list of every aggregation, named as the feature columns."""
    out = []
    # At a tie in time the smallest value is the first, the largest the last (as silver's).
    for m in plan.stats:
        col = f'"v_{m}"'
        seen = f"case when {col} is not null then t end"
        out.append(
            f"""
            avg({col}) as "{m}_mean",
            stddev_samp({col}) as "{m}_stddev",
            min({col}) as "{m}_min",
            max({col}) as "{m}_max",
            (first({col} order by {seen} desc nulls last, {col} desc)
                - first({col} order by {seen} asc nulls last, {col} asc))
                / nullif((max({seen}) - min({seen})) / 60000000.0, 0) as "{m}_rate_per_min",
            regr_slope({col}, (t - start) / 60000000.0) as "{m}_trend\""""
        )
    out += [f'count("v_{f}") as "{f}_count"' for f in plan.counts]
    out += [f'sum("v_{f}") as "{f}_sum"' for f in plan.sums]
    out += [f'count(distinct "v_{f}") as "{f}_distinct_count"' for f in plan.distinct]
    out += [
        f'count(*) filter (where "v_{f}" = {_quoted(level)}) as "{category_column(f, level)}"'
        for f, levels in plan.categories
        for level in levels
    ]
    return out


def _sql(plan: WindowAggregations, size: int, slide: int) -> str:
    """Windows as Spark assigns them: every start a multiple of slide with start <= t < start + size."""
    windows_per_reading = -(-size // slide)
    return f"""
        with timed as (
            select *, epoch_us(event_time) as t from obs
        ),
        windowed as (
            select timed.*, t - ((t % {slide}) + {slide}) % {slide} - k * {slide} as start
            from timed, range(0, {windows_per_reading}) w(k)
        )
        select
            entity,
            make_timestamp(start) as window_start,
            make_timestamp(start + {size}) as window_end,
            {", ".join(["count(*) as reading_count", *_aggregates(plan)])}
        from windowed
        where t >= start and t < start + {size}
        group by entity, start
    """
