"""Silver's sliding-window features computed with DuckDB over a pandas frame, without Spark.

The same windows as silver's (spark_streaming.window_state): epoch-aligned windows of the
contract's size every slide, one row per (station, window) holding at least one reading.
Anomaly evaluation uses this to build features for observations it has altered itself.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from periscope.contracts import SourceContract
from spark_streaming.features import feature_columns, interval_seconds

__all__ = ["window_features"]

_MICROS = 1_000_000


def window_features(observations: pd.DataFrame, contract: SourceContract) -> pd.DataFrame:
    """One row per (station, sliding window): `feature_columns(contract)`, NaN where Spark says null.

    `observations` has the contract's key (station_id), `event_time` (naive UTC or tz-aware)
    and the contract's measures (NaN or None = missing). Sorted by station, window_start;
    window_start and window_end are naive UTC.
    """
    key = contract.key_field
    measures = list(contract.measure_names)
    missing = [c for c in (key, "event_time", *measures) if c not in observations.columns]
    if missing:
        raise ValueError(f"observations lack column(s) {', '.join(missing)}")

    obs = pd.DataFrame(
        {
            "station_id": observations[key].astype(str),
            "event_time": _naive_utc(observations["event_time"]),
            **{
                m: pd.to_numeric(observations[m], errors="coerce").astype("float64")
                for m in measures
            },
        }
    )
    size = interval_seconds(contract.window.size) * _MICROS
    slide = interval_seconds(contract.window.slide) * _MICROS

    con = duckdb.connect()
    try:
        con.register("obs", obs)
        result = con.sql(_sql(measures, size, slide)).df()
    finally:
        con.close()

    result = result.rename(columns={"station_id": key})
    for column in ("window_start", "window_end"):
        result[column] = result[column].astype("datetime64[ns]")
    features = result[feature_columns(contract)].copy()
    floats = features.columns[4:]
    # DuckDB's regr_slope says NaN where the slope is undefined; Spark says null.
    features[floats] = features[floats].astype("float64").replace([np.inf, -np.inf], np.nan)
    features["reading_count"] = features["reading_count"].astype("int64")
    return features.sort_values([key, "window_start"], ignore_index=True)


def _naive_utc(times: pd.Series) -> pd.Series:
    times = pd.to_datetime(times)
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.astype("datetime64[us]")


def _sql(measures: list[str], size: int, slide: int) -> str:
    """Windows as Spark assigns them: every start a multiple of slide with start <= t < start + size."""
    per_measure = []
    for m in measures:
        col = f'"{m}"'
        seen = f"case when {col} is not null then t end"
        per_measure.append(
            f"""
            avg({col}) as "{m}_mean",
            stddev_samp({col}) as "{m}_stddev",
            min({col}) as "{m}_min",
            max({col}) as "{m}_max",
            (arg_max({col}, {seen}) - arg_min({col}, {seen}))
                / nullif((max({seen}) - min({seen})) / 60000000.0, 0) as "{m}_rate_per_min",
            regr_slope({col}, (t - start) / 60000000.0) as "{m}_trend\""""
        )
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
            station_id,
            make_timestamp(start) as window_start,
            make_timestamp(start + {size}) as window_end,
            count(*) as reading_count,
            {",".join(per_measure)}
        from windowed
        where t >= start and t < start + {size}
        group by station_id, start
    """
