"""The pure core of `periscope score`: silver feature windows in, gold prediction rows out.

Each window gets the anomaly model's score and flag, and the forecast bundle's forecasts of
every series it knows for the window's entity, made from the window's `forecast_origin`
(the last full hour before window_end that had ended when it was scored). No Ray, Delta or
MLflow here: the actors and the lake I/O call `score_windows` and `to_arrow`.

Forecasts are batched: for each measure, every station's origins go to the bundle's
`forecast_many` in one call (`ml.forecast`, the code training and evaluation use), which
serves the method chosen per horizon bucket with its conformal band, clipped to the valid
range; each item names its method. Prophet's point forecasts are kept per series in blocks of
hours inside the loaded bundle, so later batches reuse them. The global model also reads other
stations' recent hours (its learnt neighbours: where the weather comes from), so every station's
history is passed to every call. A window's row depends only on the window, the history up to
its origin and the models, never on which other windows share the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.anomaly import AnomalyModel
from ml.forecast import HISTORY_HOURS, METHOD_NAMES, ForecastBundle, SeriesForecast
from ml.gold.table import FORECAST_TYPE, gold_columns, gold_schema
from ml.registry import model_name
from periscope.time import utc

__all__ = [
    "HISTORY_HOURS",
    "LoadedModels",
    "history_window",
    "score_windows",
    "to_arrow",
]

_HOUR_US = 3_600_000_000
_UTC_US = "datetime64[us, UTC]"


# Entries a memo keeps per measure before starting afresh (a few rounds of 1,000 stations).
_MEMO_ENTRIES = 20_000


@dataclass
class ForecastMemo:
    """The served forecasts of recent rounds, by request, for as long as the history they
    read stays the same.

    A forecast reads the hours up to its origin, the last full hour before the window's end
    that had ended by the scoring time, so a live station's rounds ask the same question for
    a whole hour: its windows slide, its origin does not, and the hour in progress is not
    read (it is not in the history, nor in the context's digest). A served forecast is a pure
    function of the request (entity, origins, grid start, observed hours), the context the
    global model reads (every station's hours of the measure, up to the latest origin) and
    the loaded bundle; the memo keys on all of them, so a late reading that changes any hour
    changes the key and is forecast afresh. It belongs to one LoadedModels:
    a new model version starts with an empty one.
    """

    _context: dict[str, bytes] = field(default_factory=dict)
    _served: dict[str, dict[tuple[str, bytes, int, bytes], SeriesForecast]] = field(
        default_factory=dict
    )

    def forecast_many(
        self,
        bundle: ForecastBundle,
        measure: str,
        requests: list[tuple[str, np.ndarray, int, np.ndarray]],
        context: dict[str, tuple[int, np.ndarray]],
    ) -> list[SeriesForecast]:
        """`bundle.forecast_many(measure, requests, context=context)`, computing only the
        requests not answered since the context last changed."""
        digest = _digest(context)
        if self._context.get(measure) != digest:
            self._context[measure], self._served[measure] = digest, {}
        served = self._served[measure]
        keys = [(e, o.tobytes(), g, y.tobytes()) for e, o, g, y in requests]
        results = [served.get(k) for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fresh = bundle.forecast_many(measure, [requests[i] for i in missing], context=context)
            if len(served) + len(missing) > _MEMO_ENTRIES:
                served.clear()
            for i, result in zip(missing, fresh, strict=True):
                results[i] = served[keys[i]] = result
        return results  # type: ignore[return-value]  # every None was filled


def _digest(context: dict[str, tuple[int, np.ndarray]]) -> bytes:
    """A fingerprint of every station's hours of one measure."""
    digest = hashlib.blake2b(digest_size=16)
    for station in sorted(context):
        start, values = context[station]
        digest.update(station.encode())
        digest.update(start.to_bytes(8, "little", signed=True))
        digest.update(len(values).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class LoadedModels:
    """The champion models of one source as an actor holds them: loaded once, used per batch.

    Either model may be missing (no champion yet); its version is given exactly when it is.
    """

    source: str
    forecast: ForecastBundle | None
    forecast_version: int | None
    anomaly: AnomalyModel | None
    anomaly_version: int | None
    memo: ForecastMemo = field(default_factory=ForecastMemo, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind, model, version in (
            ("forecast", self.forecast, self.forecast_version),
            ("anomaly", self.anomaly, self.anomaly_version),
        ):
            if (model is None) != (version is None):
                raise ValueError(f"{kind} model and version must be given together")
            if model is not None and model.source != self.source:
                raise ValueError(f"a {model.source} {kind} model cannot score {self.source}")

    @property
    def forecast_model(self) -> str | None:
        return None if self.forecast is None else model_name(self.source, "forecast")

    @property
    def anomaly_model(self) -> str | None:
        return None if self.anomaly is None else model_name(self.source, "anomaly")

    def warm(self, keep: Callable[[str], bool], at: datetime) -> int:
        """Compute the cached Prophet hours from a day before `at` to the forecast horizon
        after it, for the series of the stations `keep` accepts.

        Done when a model is loaded, so the first rounds of a stream do not pay for it
        (about 0.1 s per series). Returns the number of series warmed.
        """
        if self.forecast is None:
            return 0
        now = int(pd.Timestamp(at).value // (_HOUR_US * 1000))
        hours = np.arange(now - HISTORY_HOURS, now + self.forecast.config.horizon_hours + 1)
        stations = {station for station, _ in self.forecast.series() if keep(station)}
        return self.forecast.warm(stations, hours)


def _hours(times: pd.Series) -> np.ndarray:
    """Whole hours since the epoch, rounded down."""
    micros = utc(times).dt.tz_localize(None).to_numpy().view("int64")
    return np.floor_divide(micros, _HOUR_US)


def _windows(features: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per (key, window_start), the last given; sorted; times UTC."""
    frame = features.assign(
        **{key: features[key].astype(str)},
        window_start=utc(features["window_start"]).array,
        window_end=utc(features["window_end"]).array,
    )
    frame = frame.drop_duplicates([key, "window_start"], keep="last")
    return frame.sort_values([key, "window_start"], kind="stable", ignore_index=True)


def _origins(windows: pd.DataFrame, scored_at: datetime | None = None) -> np.ndarray:
    """forecast_origin in hours since the epoch: the last hour that ends by window_end and,
    given `scored_at`, had ended by then.

    A live window ends after the present, and the hour in progress is no origin: its mean
    so far (a few minutes of readings) is not the hourly mean every model was trained on,
    and it moves with each reading, so each round would forecast afresh from it. A window
    scored again once the hour has ended forecasts from it then; a window long past is
    unaffected."""
    origins = _hours(windows["window_end"]) - 1
    if scored_at is None:
        return origins
    ended = _hours(pd.Series([scored_at]))[0] - 1  # the last hour that had ended by scored_at
    return np.minimum(origins, ended)


def history_window(
    features: pd.DataFrame, key: str, scored_at: datetime | None = None
) -> pd.DataFrame:
    """The hourly history `score_windows` needs: per entity, hours in [since, until).

    One row per entity (column `key`) of `features`: key, since, until (naive UTC, as
    `ml.data.LakeSlice` takes them); from HISTORY_HOURS - 1 hours (a week) before its first
    forecast origin (as scoring at `scored_at` takes them; None: the latest each window
    allows) to the end of its windows' last full hour, which the anomaly detectors read even
    while it is in progress. Anything outside is ignored by `score_windows`.
    """
    if len(features) == 0:
        return pd.DataFrame({key: pd.Series(dtype=str), "since": [], "until": []})
    origins = pd.DataFrame(
        {
            key: features[key].astype(str).to_numpy(),
            "first": _origins(features, scored_at),
            "last": _origins(features),
        }
    )
    spans = origins.groupby(key, sort=True).agg(first=("first", "min"), last=("last", "max"))
    return pd.DataFrame(
        {
            key: spans.index.to_numpy(),
            "since": _naive_hours(spans["first"].to_numpy() + 1 - HISTORY_HOURS),
            "until": _naive_hours(spans["last"].to_numpy() + 1),
        }
    )


def _naive_hours(hours: np.ndarray) -> np.ndarray:
    """Hours since the epoch as naive UTC datetimes."""
    return (hours * _HOUR_US).astype("datetime64[us]")


def score_windows(
    features: pd.DataFrame,
    hourly: pd.DataFrame,
    models: LoadedModels,
    *,
    scored_at: datetime,
    key: str,
    zero_when_empty: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Gold prediction rows (`gold_columns(key)`) for silver feature windows.

    `features`: silver feature rows (the entity column `key`, window_start, window_end, the
    feature columns; times naive UTC or tz-aware). `hourly`: observations per (key, ds) hour,
    the forecast targets as columns, ds naive UTC or tz-aware, of the windows' entities and
    any others (the global model's neighbours: give every entity's for the same rows whatever
    the batch); only the hours up to a window's origin reach its row. Returns one row per (key, window_start), the last one given, sorted by
    both; times are UTC and `forecasts` is an Arrow list column (`to_arrow` writes it as is).

    - anomaly_score / is_anomaly: the anomaly model's; null (NaN / NA) without one, so a
      window nobody checked never reads as normal. anomaly_kind: the detector that flagged
      it (one of periscope.predictions.ANOMALY_DETECTORS; null when not flagged). The hourly
      detectors read `hourly`'s measure means of the LOOKBACK_HOURS before each window, of
      its station and of the stations the model learnt as its neighbours.
    - forecasts: for each (station, measure) the bundle knows, horizons 1..horizon_hours
      from forecast_origin, measure by measure; empty for a station it does not know, or
      without a forecast model. The targets named in `zero_when_empty` (counts, sums) are 0
      in an hour of the entity's history without rows, as training saw them; others NaN.
    The same inputs and scored_at always give the same rows.
    """
    windows = _windows(features, key)
    n = len(windows)
    if models.anomaly is not None and n:
        # The detectors read a station's own hours and its neighbours' (the model picks them).
        score, kind = models.anomaly.detect(windows, hourly)
        anomaly_score = pd.Series(score, dtype="float64")
        is_anomaly = pd.Series(score >= models.anomaly.threshold, dtype="boolean")
        anomaly_kind = pd.Series(kind, dtype=object)
    else:
        anomaly_score = pd.Series(np.full(n, np.nan))
        is_anomaly = pd.Series(pd.NA, index=range(n), dtype="boolean")
        anomaly_kind = pd.Series([None] * n, dtype=object)
    origins = _origins(windows, scored_at)
    return pd.DataFrame(
        {
            key: windows[key].astype(object),
            "window_start": windows["window_start"],
            "window_end": windows["window_end"],
            "anomaly_score": anomaly_score,
            "is_anomaly": is_anomaly,
            "anomaly_kind": anomaly_kind,
            "forecast_origin": utc(_naive_hours(origins)),
            "forecasts": pd.Series(
                pd.arrays.ArrowExtensionArray(
                    _forecasts(
                        windows[key].to_numpy(), origins, hourly, models, key, zero_when_empty
                    )
                )
            ),
            "forecast_model": pd.Series([models.forecast_model] * n, dtype=object),
            "forecast_version": pd.Series([models.forecast_version] * n, dtype="Int64"),
            "anomaly_model": pd.Series([models.anomaly_model] * n, dtype=object),
            "anomaly_version": pd.Series([models.anomaly_version] * n, dtype="Int64"),
            "scored_at": pd.Series([utc([scored_at]).iloc[0]] * n, dtype=_UTC_US),
        },
        columns=gold_columns(key),
    )


def _forecasts(
    stations: np.ndarray,
    origins: np.ndarray,
    hourly: pd.DataFrame,
    models: LoadedModels,
    key: str,
    zero_when_empty: frozenset[str] = frozenset(),
) -> pa.ListArray:
    """The forecasts column: rows are grouped by entity, as score_windows sorts them.

    Each measure is forecast for every station in one `forecast_many` call; a row's list is
    measure by measure, horizons ascending.
    """
    bundle = models.forecast
    by_station: dict[str, list[str]] = {}
    for entity_id, measure in bundle.series() if bundle is not None else []:
        by_station.setdefault(entity_id, []).append(measure)
    names = sorted({m for measures in by_station.values() for m in measures})
    counts = np.zeros(len(stations), dtype="int64")
    if bundle is None or not len(stations):
        return _forecast_lists([], counts, names)
    zeros = np.array([m in zero_when_empty for m in names], dtype=bool)
    # Every known station's: the global model reads its neighbours' hours up to each origin.
    # None later: an hour in progress would change the memo's key each round, read or not.
    history = _hourly(hourly, sorted(by_station), names, key, zeros, through=int(origins.max()))
    new_station = np.ones(len(stations), dtype=bool)
    new_station[1:] = stations[1:] != stations[:-1]
    bounds = np.r_[np.flatnonzero(new_station), len(stations)]
    segments = []  # (first row, last row, station, unique origins, row -> origin, grid)
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        station = str(stations[first])
        if station not in by_station:
            continue
        unique, row_origin = np.unique(origins[first:last], return_inverse=True)
        grid_start = int(unique[0]) + 1 - HISTORY_HOURS
        grid = _on_grid(history.get(station), grid_start, int(unique[-1]) + 1, len(names))
        segments.append((first, last, station, unique, row_origin, grid_start, grid))
    served = {}
    for measure in names:
        using = [s for s in segments if measure in by_station[s[2]]]
        requests = [(s[2], s[3], s[5], s[6][:, names.index(measure)]) for s in using]
        column = names.index(measure)
        context = {
            station: (start, means[:, column]) for station, (start, means) in history.items()
        }
        results = models.memo.forecast_many(bundle, measure, requests, context)
        for s, result in zip(using, results, strict=True):
            served[(s[0], measure)] = result
    parts: list[dict[str, np.ndarray]] = []
    for first, last, station, _, row_origin, _, _ in segments:
        measures = by_station[station]
        results = [served[(first, m)] for m in measures]
        # (rows, measures, horizon), flattened row by row: a row's list is measure by measure.
        yhat, lower, upper, method = (
            np.stack([getattr(r, name)[row_origin] for r in results], axis=1)
            for name in ("yhat", "lower", "upper", "method")
        )
        shape = yhat.shape
        ahead = np.arange(1, shape[2] + 1)
        row_origins = origins[first:last]
        parts.append(
            {
                "measure": np.broadcast_to(
                    np.array([names.index(m) for m in measures])[None, :, None], shape
                ).ravel(),
                "horizon_h": np.broadcast_to(ahead, shape).ravel(),
                "target_time": np.broadcast_to(
                    (row_origins[:, None, None] + ahead) * _HOUR_US, shape
                ).ravel(),
                "yhat": yhat.ravel(),
                "yhat_lower": lower.ravel(),
                "yhat_upper": upper.ravel(),
                "method": method.ravel(),
            }
        )
        counts[first:last] = shape[1] * shape[2]
    return _forecast_lists(parts, counts, names)


def _forecast_lists(
    parts: list[dict[str, np.ndarray]], counts: np.ndarray, names: list[str]
) -> pa.ListArray:
    """The forecasts column from per-station item arrays (`measure` an index into `names`,
    `method` into METHOD_NAMES) and the number of items of each row."""
    flat = {
        key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0, dtype)
        for key, dtype in (
            ("measure", "int32"),
            ("horizon_h", "int32"),
            ("target_time", "int64"),
            ("yhat", "float64"),
            ("yhat_lower", "float64"),
            ("yhat_upper", "float64"),
            ("method", "int32"),
        )
    }
    struct_type = FORECAST_TYPE.value_type
    values = pa.StructArray.from_arrays(
        [
            pa.DictionaryArray.from_arrays(
                pa.array(flat["measure"], pa.int32()), pa.array(names, pa.string())
            ).cast(pa.string()),
            pa.array(flat["horizon_h"], pa.int32()),
            pa.array(flat["target_time"], pa.int64()).cast(struct_type.field("target_time").type),
            pa.array(flat["yhat"]),
            pa.array(flat["yhat_lower"]),
            pa.array(flat["yhat_upper"]),
            pa.DictionaryArray.from_arrays(
                pa.array(flat["method"], pa.int32()), pa.array(METHOD_NAMES, pa.string())
            ).cast(pa.string()),
        ],
        fields=list(struct_type),
    )
    offsets = pa.array(np.r_[0, np.cumsum(counts)], pa.int32())
    return pa.ListArray.from_arrays(offsets, values, type=FORECAST_TYPE)


def _hourly(
    hourly: pd.DataFrame,
    stations: list[str],
    measures: list[str],
    key: str,
    zero_when_empty: np.ndarray | None = None,
    *,
    through: int | None = None,
) -> dict[str, tuple[int, np.ndarray]]:
    """Per station: its first hour (since the epoch) and the hourly means of `measures` from
    that hour on (up to the hour `through`, if given), an (hours x measures) array with NaN
    where nothing was observed, or 0 for the measures `zero_when_empty` marks (a count of
    nothing).

    Averaging again is a no-op on hourly rows and tolerates duplicate or finer rows; inf is
    no observation a forecast could start from.
    """
    if not stations or len(hourly) == 0:
        return {}
    part = hourly[hourly[key].astype(str).isin(stations)]
    if len(part) == 0:
        return {}
    hours = _hours(part["ds"])
    if through is not None:
        part, hours = part[hours <= through], hours[hours <= through]
        if len(part) == 0:
            return {}
    codes, names = pd.factorize(part[key].astype(str).to_numpy())
    values = np.column_stack(
        [
            pd.to_numeric(part[m], errors="coerce").to_numpy("float64", na_value=np.nan)
            if m in part.columns
            else np.full(len(part), np.nan)
            for m in measures
        ]
    )
    values[np.isinf(values)] = np.nan
    order = np.lexsort((hours, codes))
    codes, hours, values = codes[order], hours[order], values[order]
    firsts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    history: dict[str, tuple[int, np.ndarray]] = {}
    for a, b in zip(firsts, np.r_[firsts[1:], len(codes)], strict=True):
        start = int(hours[a])
        at = hours[a:b] - start
        seen = ~np.isnan(values[a:b])
        sums = np.zeros((int(at[-1]) + 1, len(measures)))
        counts = np.zeros_like(sums)
        np.add.at(sums, at, np.where(seen, values[a:b], 0.0))
        np.add.at(counts, at, seen)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts  # 0/0: NaN
        if zero_when_empty is not None:
            means[:, zero_when_empty] = np.where(
                counts[:, zero_when_empty] == 0, 0.0, means[:, zero_when_empty]
            )
        history[str(names[codes[a]])] = (start, means)
    return history


def _on_grid(
    history: tuple[int, np.ndarray] | None, start: int, end: int, measures: int
) -> np.ndarray:
    """A station's hourly means on the hours [start, end), NaN outside what it observed."""
    grid = np.full((end - start, measures), np.nan)
    if history is not None:
        first, means = history
        lo, hi = max(start, first), min(end, first + len(means))
        if lo < hi:
            grid[lo - start : hi - start] = means[lo - first : hi - first]
    return grid


def to_arrow(predictions: pd.DataFrame, key: str) -> pa.Table:
    """`score_windows` rows as a table of exactly gold_schema(key), for write_deltalake / MERGE."""
    schema = gold_schema(key)
    return pa.Table.from_pandas(
        predictions[schema.names], schema=schema, preserve_index=False
    ).replace_schema_metadata(None)
