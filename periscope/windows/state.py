"""Sliding-window features kept up to date incrementally (pure: Arrow in, Arrow out; no Spark).

Silver keeps, for every window that can still change (its end is after the watermark), the
sufficient statistics of its readings: the count, and per measure the count of values, mean,
sum of squared deviations (M2), min, max, the first and last value with their times, and the
mean time and the time/time and time/value co-moments for the least-squares slope. A batch's
on-time readings are summarised per window (`batch_partials`) and merged into the state with
Chan's pairwise update (`merge`), so a batch costs work in proportion to its own size rather
than to the history inside its windows. `finish` turns a window's statistics into the
feature row `ml.windows.window_features` (the DuckDB reference) computes from scratch.
Counts, sums and category counts merge by addition; distinct counts keep each window's set
of distinct values (merged by union).

Merges happen in batch order and each batch's partials depend only on its own readings
(sorted per window by time), so the floating-point result is the same whether the state was
kept in memory or rebuilt from the observations table after a restart (`rebuild`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from periscope.contracts import category_column
from periscope.windows.columns import WindowAggregations

__all__ = ["WindowState", "batch_partials", "finish", "merge"]

_MICROS_PER_MINUTE = 60_000_000.0
# Per measure: the statistics a window keeps, and how two windows' values combine.
_STATS = ("n", "mean", "m2", "min", "max", "t_first", "v_first", "t_last", "v_last")
_SLOPE_STATS = ("x_mean", "xx", "xy")
_T_MAX, _T_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _names(measure: str) -> dict[str, str]:
    return {s: f"{measure}__{s}" for s in (*_STATS, *_SLOPE_STATS)}


Aggregations = WindowAggregations | list[str] | tuple[str, ...]


def _plan(aggs: Aggregations) -> WindowAggregations:
    """A list of measure names means their statistics only (the sensor sources' windows)."""
    return aggs if isinstance(aggs, WindowAggregations) else WindowAggregations.measures(aggs)


def _additive(plan: WindowAggregations) -> dict[str, str]:
    """State column -> finished column of the aggregations merged by addition."""
    columns = {f"{f}__count": f"{f}_count" for f in plan.counts}
    for f, levels in plan.categories:
        columns |= {f"{f}__level_{i}": category_column(f, level) for i, level in enumerate(levels)}
    return columns


def batch_partials(
    rows: pa.Table, key: str, aggs: Aggregations, size_us: int, slide_us: int
) -> pa.Table:
    """Statistics per (key, window_start) of `rows` (key, event_time, measures).

    Windows are Spark's: epoch-aligned starts every `slide_us`, a reading at t in every window
    with start <= t < start + size. Readings of a window are taken in time order, so the result
    depends only on which readings a window holds, not on the order of `rows`.
    """
    times = rows["event_time"].cast(pa.timestamp("us", "UTC")).cast(pa.int64())
    t = times.to_numpy(zero_copy_only=False)
    per_reading = -(-size_us // slide_us)
    base = t - t % slide_us  # numpy's % is floored, like Spark's window assignment
    reading = np.repeat(np.arange(len(t)), per_reading)
    start = base[reading] - np.tile(np.arange(per_reading), len(t)) * slide_us
    inside = start + size_us > t[reading]
    reading, start = reading[inside], start[inside]

    expanded = pa.table(
        {
            key: rows[key].take(pa.array(reading)),
            "window_start": pa.array(start, pa.int64()),
            "t": pa.array(t[reading], pa.int64()),
        }
    )
    order = pc.sort_indices(
        expanded, [(key, "ascending"), ("window_start", "ascending"), ("t", "ascending")]
    ).to_numpy()
    expanded = expanded.take(pa.array(order))
    reading = reading[order]
    t_sorted = expanded["t"].to_numpy()
    start_sorted = expanded["window_start"].to_numpy()

    keys = expanded[key]
    if len(order):
        new_key = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(
            zero_copy_only=False
        )
        boundary = np.flatnonzero(
            np.concatenate([[True], new_key | (start_sorted[1:] != start_sorted[:-1])])
        )
    else:
        boundary = np.array([], dtype=np.int64)
    group = np.repeat(np.arange(len(boundary)), np.diff(np.append(boundary, len(order))))
    x = (t_sorted - start_sorted) / _MICROS_PER_MINUTE

    columns: dict[str, pa.Array] = {
        key: keys.take(pa.array(boundary, pa.int64())),
        "window_start": pa.array(start_sorted[boundary], pa.int64()),
        "reading_count": pa.array(np.diff(np.append(boundary, len(order))), pa.int64()),
    }

    def per_window(values: np.ndarray, ufunc: np.ufunc = np.add) -> np.ndarray:
        return ufunc.reduceat(values, boundary) if len(boundary) else values[:0]

    def taken(field: str) -> pa.Array:
        """The field's values in window order, one per (reading, window) pair."""
        return rows[field].take(pa.array(reading, pa.int64())).combine_chunks()

    plan = _plan(aggs)
    for m in plan.stats:
        column = taken(m).cast(pa.float64())
        present = column.is_valid().to_numpy(zero_copy_only=False)
        v = column.fill_null(0.0).to_numpy(zero_copy_only=False)
        n = per_window(present.astype(np.int64))
        has = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = per_window(np.where(present, v, 0.0)) / n
            dev = np.where(present, v - mean[group], 0.0)
            x_mean = per_window(np.where(present, x, 0.0)) / n
            dx = np.where(present, x - x_mean[group], 0.0)
        # Several readings at the first (last) instant: the smallest (largest) value is the
        # first (last), so the result does not depend on the order rows arrive in.
        t_first = per_window(np.where(present, t_sorted, _T_MAX), np.minimum)
        t_last = per_window(np.where(present, t_sorted, _T_MIN), np.maximum)
        at_first = present & (t_sorted == t_first[group])
        at_last = present & (t_sorted == t_last[group])
        v_first = per_window(np.where(at_first, v, np.inf), np.minimum)
        v_last = per_window(np.where(at_last, v, -np.inf), np.maximum)
        stats = {
            "n": n,
            "mean": mean,
            "m2": per_window(dev * dev),
            "min": per_window(np.where(present, v, np.inf), np.minimum),
            "max": per_window(np.where(present, v, -np.inf), np.maximum),
            "t_first": np.where(has, t_first, 0),
            "v_first": np.where(has, v_first, 0.0),
            "t_last": np.where(has, t_last, 0),
            "v_last": np.where(has, v_last, 0.0),
            "x_mean": x_mean,
            "xx": per_window(dx * dx),
            "xy": per_window(dx * dev),
        }
        for stat, name in _names(m).items():
            values = stats[stat]
            kind = pa.int64() if stat in ("n", "t_first", "t_last") else pa.float64()
            columns[name] = pa.array(values, kind, mask=None if stat == "n" else ~has)

    for f in plan.counts:
        present = taken(f).is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        columns[f"{f}__count"] = pa.array(per_window(present), pa.int64())
    for f in plan.sums:
        column = taken(f).cast(pa.float64())
        present = column.is_valid().to_numpy(zero_copy_only=False)
        v = column.fill_null(0.0).to_numpy(zero_copy_only=False)
        has = per_window(present.astype(np.int64)) > 0
        columns[f"{f}__sum"] = pa.array(per_window(np.where(present, v, 0.0)), mask=~has)
    for f, levels in plan.categories:
        column = taken(f).cast(pa.string())
        for i, level in enumerate(levels):
            hits = pc.fill_null(pc.equal(column, level), False).to_numpy(zero_copy_only=False)
            columns[f"{f}__level_{i}"] = pa.array(per_window(hits.astype(np.int64)), pa.int64())
    for f in plan.distinct:
        columns[f"{f}__distinct"] = _distinct_lists(
            taken(f).cast(pa.string()), group, len(boundary)
        )
    return pa.table(columns)


def _distinct_lists(values: pa.Array, group: np.ndarray, windows: int) -> pa.Array:
    """Per window, its distinct non-null values (sorted), as a list<string> column."""
    encoded = values.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    width = max(len(encoded.dictionary), 1)
    pairs = np.unique(group[valid].astype(np.int64) * width + codes[valid].astype(np.int64))
    owner, code = pairs // width, pairs % width
    offsets = np.searchsorted(owner, np.arange(windows + 1)).astype(np.int32)
    items = (
        encoded.dictionary.take(pa.array(code, pa.int64()))
        if len(code)
        else pa.array([], pa.string())
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items.cast(pa.string()))


def _merge_sql(key: str, aggs: Aggregations) -> str:
    """Chan et al.'s pairwise combination of two windows' statistics per measure; counts and
    sums add up, distinct values unite."""
    plan = _plan(aggs)
    measures = plan.stats
    select = [
        f'coalesce(s."{key}", b."{key}") as "{key}"',
        "coalesce(s.window_start, b.window_start) as window_start",
        "coalesce(s.reading_count, 0) + coalesce(b.reading_count, 0) as reading_count",
    ]
    for m in measures:
        c = _names(m)

        def s(stat: str, c: dict[str, str] = c) -> str:
            return f's."{c[stat]}"'

        def b(stat: str, c: dict[str, str] = c) -> str:
            return f'b."{c[stat]}"'

        ns, nb = f"coalesce({s('n')}, 0)", f"coalesce({b('n')}, 0)"
        weight = f"({ns}::double * {nb} / ({ns} + {nb}))"
        d_mean = f"({b('mean')} - {s('mean')})"
        d_x = f"({b('x_mean')} - {s('x_mean')})"
        b_first = f"{b('t_first')} < {s('t_first')}"
        b_last = f"{b('t_last')} > {s('t_last')}"
        s_first = f"{s('t_first')} < {b('t_first')}"
        s_last = f"{s('t_last')} > {b('t_last')}"
        combined = {
            "n": f"{ns} + {nb}",
            "mean": f"{s('mean')} + {d_mean} * {nb} / ({ns} + {nb})",
            "m2": f"{s('m2')} + {b('m2')} + {d_mean} * {d_mean} * {weight}",
            "min": f"least({s('min')}, {b('min')})",
            "max": f"greatest({s('max')}, {b('max')})",
            "t_first": f"least({s('t_first')}, {b('t_first')})",
            "v_first": f"case when {b_first} then {b('v_first')} when {s_first} then {s('v_first')}"
            f" else least({s('v_first')}, {b('v_first')}) end",
            "t_last": f"greatest({s('t_last')}, {b('t_last')})",
            "v_last": f"case when {b_last} then {b('v_last')} when {s_last} then {s('v_last')}"
            f" else greatest({s('v_last')}, {b('v_last')}) end",
            "x_mean": f"{s('x_mean')} + {d_x} * {nb} / ({ns} + {nb})",
            "xx": f"{s('xx')} + {b('xx')} + {d_x} * {d_x} * {weight}",
            "xy": f"{s('xy')} + {b('xy')} + {d_x} * {d_mean} * {weight}",
        }
        for stat, expression in combined.items():
            # Either side without values for the measure leaves the other side's unchanged.
            select.append(
                f"case when {nb} = 0 then {s(stat) if stat != 'n' else ns}"
                f' when {ns} = 0 then {b(stat)} else {expression} end as "{c[stat]}"'
            )

    def add(column: str) -> None:
        select.append(f'coalesce(s."{column}", 0) + coalesce(b."{column}", 0) as "{column}"')

    # In batch_partials' column order: counts, sums, category levels, distinct values.
    for f in plan.counts:
        add(f"{f}__count")
    for f in plan.sums:
        total = f"{f}__sum"
        select.append(
            f'case when s."{total}" is null then b."{total}" when b."{total}" is null'
            f' then s."{total}" else s."{total}" + b."{total}" end as "{total}"'
        )
    for f, levels in plan.categories:
        for i in range(len(levels)):
            add(f"{f}__level_{i}")
    for f in plan.distinct:
        seen = f"{f}__distinct"
        select.append(
            f'list_sort(list_distinct(list_concat(coalesce(s."{seen}", []),'
            f' coalesce(b."{seen}", [])))) as "{seen}"'
        )
    return f"""
        select {", ".join(select)}
        from state s full outer join batch b on s."{key}" = b."{key}" and s.window_start = b.window_start
    """


def merge(state: pa.Table, batch: pa.Table, key: str, measures: Aggregations) -> pa.Table:
    """The statistics of every window after adding `batch`'s partials to `state`."""
    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("state", state)
        con.register("batch", batch)
        return con.sql(_merge_sql(key, measures)).to_arrow_table().cast(state.schema)
    finally:
        con.close()


def finish(state: pa.Table, key: str, aggs: Aggregations, size_us: int) -> pa.Table:
    """Feature rows (the columns of `feature_columns`) from windows' statistics."""
    plan = _plan(aggs)
    measures = plan.stats
    start = state["window_start"]
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        key: state[key],
        "window_start": start.cast(pa.timestamp("us", "UTC")),
        "window_end": pc.add(start, size_us).cast(pa.timestamp("us", "UTC")),
        "reading_count": state["reading_count"],
    }
    for m in measures:
        c = _names(m)
        n = state[c["n"]].to_numpy(zero_copy_only=False)

        def values(stat: str, c: dict[str, str] = c) -> np.ndarray:
            return state[c[stat]].cast(pa.float64()).fill_null(np.nan).to_numpy()

        with np.errstate(invalid="ignore", divide="ignore"):
            stddev = np.sqrt(values("m2") / (n - 1))
            span = (values("t_last") - values("t_first")) / _MICROS_PER_MINUTE
            rate = (values("v_last") - values("v_first")) / span
            trend = values("xy") / values("xx")
        several = n >= 2
        columns |= {
            f"{m}_mean": _nullable(values("mean"), n >= 1),
            f"{m}_stddev": _nullable(stddev, several),
            f"{m}_min": _nullable(values("min"), n >= 1),
            f"{m}_max": _nullable(values("max"), n >= 1),
            f"{m}_rate_per_min": _nullable(rate, several & (span > 0)),
            f"{m}_trend": _nullable(trend, several & (values("xx") > 0)),
        }
    for column, name in _additive(plan).items():
        columns[name] = state[column]
    for f in plan.sums:
        columns[f"{f}_sum"] = state[f"{f}__sum"]
    for f in plan.distinct:
        columns[f"{f}_distinct_count"] = pc.list_value_length(state[f"{f}__distinct"]).cast(
            pa.int64()
        )
    return pa.table(columns)


def _nullable(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(np.where(valid, values, 0.0), pa.float64(), mask=~valid)


@dataclass
class WindowState:
    """The statistics of a source's open windows, and the batch they are complete through."""

    key: str
    aggs: Aggregations
    size_us: int
    slide_us: int
    windows: pa.Table
    through: int  # the state holds exactly the on-time readings of batches < through

    @classmethod
    def empty(
        cls, key: str, aggs: Aggregations, size_us: int, slide_us: int, through: int
    ) -> WindowState:
        plan = _plan(aggs)
        text = {*plan.distinct, *(name for name, _ in plan.categories)}
        schema = batch_partials(
            pa.table(
                {
                    key: pa.array([], pa.string()),
                    "event_time": pa.array([], pa.timestamp("us", "UTC")),
                    **{
                        f: pa.array([], pa.string() if f in text else pa.float64())
                        for f in plan.inputs
                    },
                }
            ),
            key,
            plan,
            size_us,
            slide_us,
        )
        return cls(key, plan, size_us, slide_us, schema, through)

    @classmethod
    def rebuild(
        cls,
        readings: pa.Table,
        key: str,
        aggs: Aggregations,
        size_us: int,
        slide_us: int,
        through: int,
    ) -> WindowState:
        """The state after batches < `through`, from their on-time readings (`silver_batch_id`).

        Batches are merged one by one in order, exactly as the live state merged them.
        """
        state = cls.empty(key, aggs, size_us, slide_us, through)
        batch_ids = readings["silver_batch_id"]
        for batch_id in sorted(pc.unique(batch_ids).to_pylist()):
            state._absorb(readings.filter(pc.equal(batch_ids, batch_id)))
        return state

    def _absorb(self, readings: pa.Table) -> pa.Table:
        partials = batch_partials(readings, self.key, self.aggs, self.size_us, self.slide_us).cast(
            self.windows.schema
        )
        self.windows = merge(self.windows, partials, self.key, self.aggs)
        return partials

    def add(self, readings: pa.Table) -> pa.Table:
        """Merge one batch's on-time readings; returns the feature rows of the windows they touch."""
        partials = self._absorb(readings)
        self.through += 1
        coordinates = [self.key, "window_start"]
        # Arrow joins carry no list columns (distinct values): join positions, then take.
        positions = self.windows.select(coordinates).append_column(
            "_position", pa.array(np.arange(self.windows.num_rows), pa.int64())
        )
        hits = positions.join(partials.select(coordinates), coordinates, join_type="left semi")
        touched = self.windows.take(pa.array(np.sort(hits["_position"].to_numpy()), pa.int64()))
        return finish(touched, self.key, self.aggs, self.size_us)

    def forget_closed(self, watermark_us: int) -> None:
        """Drop windows that end at or before the watermark: no on-time reading can reach them."""
        ends = pc.add(self.windows["window_start"], self.size_us)
        self.windows = self.windows.filter(pc.greater(ends, watermark_us))
