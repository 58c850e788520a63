"""Training data from the lake: hourly series from silver observations, silver feature windows.

DuckDB reads the Delta tables in place (no Spark needed to train). The frames are tz-naive UTC,
which is what Prophet and the pure `ml.forecast` / `ml.anomaly` functions expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from periscope import duckdb_lake
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.lake import delta_dataset
from periscope.settings import Settings
from periscope.time import naive_utc, naive_utc_columns

__all__ = [
    "hourly_columns",
    "LakeSlice",
    "SilverFeed",
    "feature_batches",
    "feature_windows",
    "feature_windows_of_batches",
    "hourly_observations",
    "latest_feature_batch",
    "observations_between",
    "series_frames",
]


def hourly_columns(contract: SourceContract) -> dict[str, tuple[str, str | None]]:
    """The hourly frame's value columns: name -> (aggregate, field). Every measure's mean (the
    history anomaly evaluation replays), then each forecast target not already among them
    (`event_count`, `fare_sum`, ...).

    >>> from periscope.contracts import get_contract
    >>> list(hourly_columns(get_contract("weather")))[:2]
    ['temperature', 'humidity']
    """
    columns: dict[str, tuple[str, str | None]] = {m: ("mean", m) for m in contract.measure_names}
    for target in contract.forecast_targets:
        columns.setdefault(target.name, (target.aggregate, target.field))
    return columns


def _hourly_sql(contract: SourceContract) -> str:
    parts = []
    for name, (aggregate, field) in hourly_columns(contract).items():
        if field is None:
            parts.append(f'count(*) as "{name}"')
        else:
            function = {"mean": "avg", "sum": "sum", "count": "count"}[aggregate]
            parts.append(f'{function}("{field}")::double as "{name}"')
    return ", ".join(parts)


@dataclass(frozen=True)
class LakeSlice:
    """Which part of the lake to read: some entities (None = all), event times before `until`."""

    stations: tuple[str, ...] | None = None
    until: datetime | None = None
    since: datetime | None = None

    def where(self, key: str, time_column: str) -> tuple[str, list[object]]:
        clauses: list[str] = ["true"]
        params: list[object] = []
        if self.stations:
            clauses.append(f"{key} in ({', '.join('?' for _ in self.stations)})")
            params += list(self.stations)
        if self.since is not None:
            clauses.append(f"{time_column} >= ?")
            params.append(naive_utc(self.since))
        if self.until is not None:
            clauses.append(f"{time_column} < ?")
            params.append(naive_utc(self.until))
        return " and ".join(clauses), params


def _read(
    settings: Settings, contract: SourceContract, entity: str, sql: str, params: list
) -> pd.DataFrame:
    path = settings.lake_path(contract.table("silver", entity))
    con = duckdb_lake.connect()
    con.sql("set timezone = 'UTC'")
    try:
        frame = con.execute(sql.replace("{table}", f"delta_scan('{path}')"), params).df()
    except Exception as exc:  # duckdb raises IOException/InvalidInputException for a missing table
        if "delta" in str(exc).lower() or "no such file" in str(exc).lower():
            raise PeriscopeError(
                f"no readable silver table at {path} ({exc.__class__.__name__}): replay history and "
                f"run `periscope silver run --source {contract.name} --available-now` first"
            ) from exc
        raise
    finally:
        con.close()
    return naive_utc_columns(frame)


def hourly_observations(
    settings: Settings, contract: SourceContract, lake_slice: LakeSlice | None = None
) -> pd.DataFrame:
    """Silver observations per (entity, hour): columns <key>, ds, then `hourly_columns`
    (measure means and forecast targets)."""
    key = contract.key_field
    where, params = (lake_slice or LakeSlice()).where(key, "event_time")
    sql = f"""
        select "{key}", date_trunc('hour', event_time) as ds, {_hourly_sql(contract)}
        from {{table}} where {where}
        group by all order by "{key}", ds
    """
    return _read(settings, contract, "observations", sql, params)


def feature_windows(
    settings: Settings, contract: SourceContract, lake_slice: LakeSlice | None = None
) -> pd.DataFrame:
    """Silver feature windows (as silver wrote them), ordered by entity and window start."""
    key = contract.key_field
    where, params = (lake_slice or LakeSlice()).where(key, "window_start")
    sql = f"select * from {{table}} where {where} order by {key}, window_start"
    return _read(settings, contract, "features", sql, params)


def feature_batches(settings: Settings, contract: SourceContract, after: int) -> pd.DataFrame:
    """Feature windows per silver batch id above `after`: columns silver_batch_id, windows.

    Each silver batch writes its windows in one commit, stamping them with its batch id (a late
    reading rewrites a window under a newer id), so these are the windows not scored yet.
    Empty when the table holds nothing newer; `latest_feature_batch` tells a rebuilt table.
    """
    sql = """
        select silver_batch_id, count(*) as windows from {table}
        where silver_batch_id > ? group by all order by silver_batch_id
    """
    return _read(settings, contract, "features", sql, [after])


def latest_feature_batch(settings: Settings, contract: SourceContract) -> int | None:
    """The newest silver batch id in the features table (None when it is empty)."""
    frame = _read(
        settings, contract, "features", "select max(silver_batch_id) as b from {table}", []
    )
    value = frame["b"].iloc[0]
    return None if pd.isna(value) else int(value)


def feature_windows_of_batches(
    settings: Settings, contract: SourceContract, after: int, through: int
) -> pd.DataFrame:
    """The feature windows last written by silver batches in (after, through]."""
    key = contract.key_field
    sql = f"""
        select * from {{table}} where silver_batch_id > ? and silver_batch_id <= ?
        order by {key}, window_start
    """
    return _read(settings, contract, "features", sql, [after, through])


class SilverFeed:
    """Silver's features and observations of one source, as a scorer reads them every round.

    The Delta tables stay open between rounds and catch up with only the commits made since
    (`update_incremental`), and delta-rs reads them with filters its file statistics use, so a
    round reads the files of its silver batches and hours, not the whole log and table again
    (DuckDB's delta_scan replays the log and loads its extension on every query). Frames are
    the same as the DuckDB readers above give: tz-naive UTC, the contract's key column.
    """

    def __init__(self, settings: Settings, contract: SourceContract) -> None:
        self.settings = settings
        self.contract = contract
        self._tables: dict[str, DeltaTable] = {}

    def exists(self) -> bool:
        """Whether silver has written the features table yet."""
        return DeltaTable.is_deltatable(self._path("features"))

    def batches(self, after: int) -> pd.DataFrame:
        """As `feature_batches`: windows per silver batch id above `after`."""
        ids = self._scan(
            "features",
            ["silver_batch_id"],
            pc.field("silver_batch_id") > after,
            within={"silver_batch_id": (after + 1, None)},
        )
        counts = ids.group_by("silver_batch_id").aggregate([("silver_batch_id", "count")])
        frame = counts.rename_columns(["silver_batch_id", "windows"]).to_pandas()
        return frame.sort_values("silver_batch_id", ignore_index=True)

    def latest_batch(self) -> int | None:
        """As `latest_feature_batch`: the newest silver batch id (None when empty)."""
        ids = self._scan("features", ["silver_batch_id"], None).column("silver_batch_id")
        return pc.max(ids).as_py()

    def windows(self, after: int, through: int) -> pd.DataFrame:
        """As `feature_windows_of_batches`: the windows last written by batches in (after, through]."""
        batch = pc.field("silver_batch_id")
        rows = self._scan(
            "features",
            None,
            (batch > after) & (batch <= through),
            within={"silver_batch_id": (after + 1, through)},
        )
        rows = rows.sort_by([(self.contract.key_field, "ascending"), ("window_start", "ascending")])
        return naive_utc_columns(rows.to_pandas())

    def hourly(self, lake_slice: LakeSlice) -> pd.DataFrame:
        """As `hourly_observations`: the slice's observations per (entity, hour)."""
        key = self.contract.key_field
        columns = hourly_columns(self.contract)
        fields = list(dict.fromkeys(f for _, f in columns.values() if f is not None))
        where = pc.scalar(True)
        if lake_slice.stations:
            where = where & pc.field(key).isin(list(lake_slice.stations))
        span: list[pa.Scalar | None] = [None, None]
        bounds = ((lake_slice.since, pc.greater_equal), (lake_slice.until, pc.less))
        for i, (bound, compare) in enumerate(bounds):
            if bound is not None:
                span[i] = stamp = pa.scalar(naive_utc(bound), pa.timestamp("us")).cast(_UTC)
                where = where & compare(pc.field("event_time"), stamp)
        rows = self._scan(
            "observations",
            [key, "event_time", *fields],
            where,
            within={"event_time": (span[0], span[1])},
        )
        hours = pc.floor_temporal(rows.column("event_time"), 1, "hour")
        readings = pa.table(
            {
                key: rows.column(key),
                "ds": hours,
                **{f: rows.column(f).cast(pa.float64()) for f in fields},
            }
        )
        arrow_aggregate = {"mean": "mean", "sum": "sum", "count": "count"}
        aggregates = [
            ([], "count_all") if f is None else (f, arrow_aggregate[aggregate])
            for aggregate, f in columns.values()
        ]
        grouped = readings.group_by([key, "ds"]).aggregate(aggregates)
        # Arrow names them <field>_<aggregate>, and the count of rows "count_all".
        arrow_names = [f"{a[0]}_{a[1]}" if a[0] else "count_all" for a in aggregates]
        grouped = pa.table(
            {
                key: grouped[key],
                "ds": grouped["ds"],
                **{
                    name: grouped[arrow_name].cast(pa.float64())
                    for name, arrow_name in zip(columns, arrow_names, strict=True)
                },
            }
        )
        means = grouped.sort_by([(key, "ascending"), ("ds", "ascending")])
        return naive_utc_columns(means.to_pandas())

    def _path(self, entity: str) -> str:
        return self.settings.lake_path(self.contract.table("silver", entity))

    def _scan(
        self,
        entity: str,
        columns: list[str] | None,
        where: pc.Expression | None,
        *,
        within: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> pa.Table:
        """Rows of one silver table matching `where`; `within` as `periscope.lake.read_delta`."""
        table = self._tables.get(entity)
        try:
            if table is None:
                table = self._tables[entity] = DeltaTable(self._path(entity))
            else:
                table.update_incremental()
        except TableNotFoundError as exc:
            raise PeriscopeError(
                f"no readable silver table at {self._path(entity)}: run `periscope silver run "
                f"--source {self.contract.name}` first"
            ) from exc
        except Exception:  # a table rebuilt under the same path: open it afresh
            table = self._tables[entity] = DeltaTable(self._path(entity))
        # Single-threaded like periscope.lake.read_delta (Arrow's scanner threads can abort
        # the interpreter at exit, delta-io/delta-rs#2184).
        return delta_dataset(table, within).to_table(
            columns=columns, filter=where, use_threads=False
        )


_UTC = pa.timestamp("us", tz="UTC")


def series_frames(
    hourly: pd.DataFrame, contract: SourceContract
) -> dict[tuple[str, str], pd.DataFrame]:
    """One `ds`/`y` frame per (entity, forecast target) on a complete hourly grid from the
    entity's first hour to its last. An hour without observations is 0 for a count or sum
    target (no trips in a zone that hour) and NaN for a mean (nothing was measured).

    A complete grid keeps "the same hour yesterday" 24 rows back and shows Prophet the gaps.
    """
    frames: dict[tuple[str, str], pd.DataFrame] = {}
    for entity, rows in hourly.groupby(contract.key_field, sort=True):
        grid = pd.date_range(rows["ds"].min(), rows["ds"].max(), freq="h")
        indexed = rows.set_index("ds").reindex(grid)
        empty = ~grid.isin(rows["ds"])
        for target in contract.forecast_targets:
            y = np.array(indexed[target.name], dtype=float)  # a copy: empty hours are set below
            if target.zero_when_empty:
                y[empty] = 0.0
            if not np.isnan(y).all():
                frames[(str(entity), target.name)] = pd.DataFrame({"ds": grid, "y": y})
    return frames


def observations_between(
    hourly: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Hourly observations in [start, end), as `event_time` rows for the window builders."""
    part = hourly[(hourly["ds"] >= start) & (hourly["ds"] < end)]
    return part.rename(columns={"ds": "event_time"}).reset_index(drop=True)
