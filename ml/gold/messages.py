"""Gold rows as `<source>-predictions` messages: one JSON encoder, and the publish call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.gold.table import gold_columns, gold_schema
from periscope.contracts import SourceContract
from periscope.messages import Publisher
from periscope.settings import Settings

__all__ = [
    "event_message_kind",
    "event_prediction_messages",
    "prediction_messages",
    "publish_event_predictions",
    "publish_predictions",
    "scorer_publisher",
]


def event_message_kind(contract: SourceContract) -> str:
    """The `kind` of a per-event prediction message, named by the contract's event.

    Per-event predictions share `<source>-predictions` with the window rows; this field tells
    a consumer which one it holds (window messages have no `kind`).

    >>> from periscope.contracts import get_contract
    >>> event_message_kind(get_contract("taxi"))
    'trip_prediction'
    """
    return f"{contract.event_label}_prediction"


def prediction_messages(rows: pa.Table, key: str) -> list[tuple[bytes | None, bytes]]:
    """(entity, JSON) pairs for `<source>-predictions`: the gold row, forecasts by measure.

    `forecasts` becomes {measure: {"yhat": [...], "yhat_lower": [...], "yhat_upper": [...],
    "method": [...]}}, element i being the forecast for forecast_origin + (i + 1) hours (and
    the method that made it): the same numbers as the
    gold row without repeating names and target times 72 times (a third of the bytes). Times
    are RFC 3339 (UTC, "Z"), a missing value (or NaN) is null.

    >>> rows = gold_schema("station_id").empty_table()
    >>> prediction_messages(rows, "station_id")
    []
    """
    import orjson

    rows = rows.select(gold_columns(key)).cast(gold_schema(key))
    forecasts = _forecast_fragments(rows.column("forecasts").combine_chunks(), rows.num_rows)
    scalars = _with_text_times(rows.drop_columns(["forecasts"])).to_pylist()
    return [
        (str(row[key]).encode(), orjson.dumps({**row, "forecasts": fragment}))
        for row, fragment in zip(scalars, forecasts, strict=True)
    ]


def _forecast_fragments(forecasts: pa.ListArray, num_rows: int) -> list[Any]:
    """Per row, its `forecasts` object as encoded JSON (an orjson.Fragment): {measure: {"yhat":
    ..., "yhat_lower": ..., "yhat_upper": ..., "method": [...]}}, horizons 1..H.

    Rows with the same forecast items share one encoding: a station's overlapping windows
    have one forecast origin, so a live round holds each list about five times, and encoding
    was most of a round's publish.
    """
    import orjson

    offsets = forecasts.offsets.to_numpy()
    items = forecasts.flatten()
    if offsets[0] != 0:  # a slice: rebase the flattened items on the row offsets
        offsets = offsets - offsets[0]
    encoded = items.field("measure").dictionary_encode()
    names = encoded.dictionary.to_pylist()
    measure = encoded.indices.to_numpy().astype("int64")
    horizon = items.field("horizon_h").to_numpy().astype("int64")
    values = {name: items.field(name).to_numpy() for name in ("yhat", "yhat_lower", "yhat_upper")}
    # Few distinct names: encode once, decode per run (orjson takes lists of str, not objects).
    methods = items.field("method").dictionary_encode()
    method_names = [*methods.dictionary.to_pylist(), None]  # index -1: no method (old rows)
    values["method"] = pc.fill_null(methods.indices, -1).to_numpy()
    # In runs of one measure within a row, horizons ascending: scoring lists them so, and the
    # sort (only when they are not) makes the layout a guarantee, not an assumption.
    row_of = np.repeat(np.arange(num_rows), np.diff(offsets))
    order_key = (row_of * (len(names) + 1) + measure) * (int(horizon.max(initial=0)) + 1) + horizon
    if len(order_key) and (np.diff(order_key) < 0).any():
        order = np.argsort(order_key, kind="stable")
        measure, horizon = measure[order], horizon[order]
        values = {name: column[order] for name, column in values.items()}
    boundary = np.ones(len(measure), dtype=bool)
    boundary[1:] = (measure[1:] != measure[:-1]) | (row_of[1:] != row_of[:-1])
    starts = np.flatnonzero(boundary)
    ends = np.r_[starts[1:], len(measure)]
    if len(measure) and not np.array_equal(
        horizon, np.arange(len(horizon)) - np.repeat(starts, ends - starts) + 1
    ):
        raise ValueError("forecasts must hold horizons 1..H for each measure")
    columns = [measure, *values.values()]
    fragments: list[Any] = []
    known: dict[tuple[bytes, ...], Any] = {}
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        signature = tuple(column[lo:hi].tobytes() for column in columns)
        fragment = known.get(signature)
        if fragment is None:
            by_measure = {}
            first_run, end_run = np.searchsorted(starts, [lo, hi])
            bounds = [*starts[first_run:end_run].tolist(), hi]
            for first, last in zip(bounds[:-1], bounds[1:], strict=False):
                by_measure[names[measure[first]]] = {
                    "yhat": values["yhat"][first:last],
                    "yhat_lower": values["yhat_lower"][first:last],
                    "yhat_upper": values["yhat_upper"][first:last],
                    "method": [method_names[i] for i in values["method"][first:last].tolist()],
                }
            fragment = known[signature] = orjson.Fragment(
                orjson.dumps(by_measure, option=orjson.OPT_SERIALIZE_NUMPY)
            )
        fragments.append(fragment)
    return fragments


def _with_text_times(rows: pa.Table) -> pa.Table:
    """Timestamp columns as RFC 3339 text ("2026-01-01T06:00:00.000000Z"): Arrow formats them in
    bulk, several times faster than making a datetime object per value. A zoned column is
    formatted from its UTC values without the zone (Arrow looks the zone up for every value,
    7x slower) and marked "Z"; a naive one (UTC by the lake's convention) gets no mark."""
    for i, column in enumerate(rows.columns):
        if pa.types.is_timestamp(column.type):
            zoned = column.type.tz is not None
            naive = column.cast(pa.timestamp(column.type.unit)) if zoned else column
            text = pc.replace_substring(naive.cast(pa.string()), " ", "T", max_replacements=1)
            if zoned:
                text = pc.binary_join_element_wise(text, "Z", "")
            rows = rows.set_column(i, rows.field(i).name, text)
    return rows


def scorer_publisher(settings: Settings) -> Publisher:
    """The scorer's producer, kept for its whole run: an idempotent producer's first send
    waits about 0.5 s for its producer id, which a producer per round paid every round."""
    return Publisher(settings, client_id="periscope-score")


def publish_predictions(publisher: Publisher, contract: SourceContract, rows: pa.Table) -> int:
    return publisher.publish(
        contract.topic("predictions"), prediction_messages(rows, contract.key_field)
    )


def event_prediction_messages(
    rows: pa.Table, key: str, *, kind: str
) -> list[tuple[bytes | None, bytes]]:
    """(entity, JSON) pairs for `<source>-predictions`, one per gold event row: the row's
    columns and `"kind": kind` (`event_message_kind`); times RFC 3339 (UTC, "Z"), missing
    values null.

    >>> import pyarrow as pa
    >>> rows = pa.table({"zone": ["7"], "trip_id": ["t1"], "predicted_fare_amount": [9.5]})
    >>> event_prediction_messages(rows, "zone", kind="trip_prediction")
    [(b'7', b'{"zone":"7","trip_id":"t1","predicted_fare_amount":9.5,"kind":"trip_prediction"}')]
    """
    import orjson

    scalars = _with_text_times(rows).to_pylist()
    return [(str(row[key]).encode(), orjson.dumps({**row, "kind": kind})) for row in scalars]


def publish_event_predictions(
    publisher: Publisher, contract: SourceContract, rows: pa.Table
) -> int:
    return publisher.publish(
        contract.topic("predictions"),
        event_prediction_messages(rows, contract.key_field, kind=event_message_kind(contract)),
    )
