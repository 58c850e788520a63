"""The gold table, `gold/<source>_predictions`: its schema, its path, and its writes.

One row per (entity, window_start), the entity under the contract's key name (`station_id`). The last silver batch scored is recorded in the table
itself, as a Delta app transaction committed by the same MERGE as the rows (see `ml.gold.rounds`).
"""

from __future__ import annotations

import pyarrow as pa

from periscope.contracts import SourceContract
from periscope.lake import GOLD_SCORE_APP_ID, append_in_time_order, merge_rows
from periscope.settings import Settings

__all__ = [
    "FORECAST_TYPE",
    "SCORE_APP_ID",
    "gold_columns",
    "gold_schema",
    "predictions_path",
    "scored_through",
    "write_predictions",
]

# The Delta app id under which gold records the last silver batch it scored.
SCORE_APP_ID = GOLD_SCORE_APP_ID

# --- the schema ----------------------------------------------------------------------------
_TIMESTAMP = pa.timestamp("us", tz="UTC")
FORECAST_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("measure", pa.string(), nullable=False),
            pa.field("horizon_h", pa.int32(), nullable=False),
            pa.field("target_time", _TIMESTAMP, nullable=False),
            pa.field("yhat", pa.float64(), nullable=False),
            pa.field("yhat_lower", pa.float64(), nullable=False),
            pa.field("yhat_upper", pa.float64(), nullable=False),
            # The forecaster that made this value (ml.forecast.METHOD_NAMES): the one chosen
            # on validation for the horizon, or the fallback that stood in for it. Null only in
            # rows scored before forecasts named their method.
            pa.field("method", pa.string()),
        ]
    )
)
# After the key: what every gold row holds, whatever the source.
_GOLD_FIELDS = [
    pa.field("window_start", _TIMESTAMP, nullable=False),
    pa.field("window_end", _TIMESTAMP, nullable=False),
    pa.field("anomaly_score", pa.float64()),  # null: no anomaly model
    pa.field("is_anomaly", pa.bool_()),
    pa.field("anomaly_kind", pa.string()),  # the detector that flagged it; null: not flagged
    pa.field("forecast_origin", _TIMESTAMP, nullable=False),
    pa.field("forecasts", FORECAST_TYPE, nullable=False),  # empty: nothing to forecast
    pa.field("forecast_model", pa.string()),
    pa.field("forecast_version", pa.int64()),
    pa.field("anomaly_model", pa.string()),
    pa.field("anomaly_version", pa.int64()),
    pa.field("scored_at", _TIMESTAMP, nullable=False),
]


def gold_schema(key: str) -> pa.Schema:
    """The schema of gold/<source>_predictions, `key` being the contract's key field; one row
    per (key, window_start).

    >>> gold_schema("station_id").names[:3]
    ['station_id', 'window_start', 'window_end']
    """
    return pa.schema([pa.field(key, pa.string(), nullable=False), *_GOLD_FIELDS])


def gold_columns(key: str) -> list[str]:
    """The gold table's columns, in order."""
    return gold_schema(key).names


# --- reads and writes ----------------------------------------------------------------------
def predictions_path(settings: Settings, contract: SourceContract) -> str:
    return settings.lake_path(contract.table("gold", "predictions"))


def scored_through(path: str) -> int | None:
    """The last silver batch id whose windows are in gold (None: nothing scored yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(path).transaction_version(SCORE_APP_ID)
    except TableNotFoundError:
        return None


def write_predictions(path: str, rows: pa.Table, through: int, *, key: str) -> int:
    """MERGE rows into gold on (key, window_start) and record `through`, in one commit.

    Returns the gold table's new version. The literal lower bound on window_start lets
    delta-rs skip files no row of this round can match (live rounds touch recent windows).
    No skip on an already recorded mark: `--rescore` rewrites windows below it on purpose.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction

    rows = rows.select(gold_columns(key)).cast(gold_schema(key))
    metadata = {"periscope.operation": "score", "periscope.silver_through": str(through)}
    if DeltaTable.is_deltatable(path):
        _add_forecast_method(path, key)
    if DeltaTable.is_deltatable(path) and rows.num_rows:
        lowest = pa.compute.min(rows["window_start"]).as_py()
        merge_rows(
            path,
            rows,
            keys=[key, "window_start"],
            app_id=SCORE_APP_ID,
            version=through,
            lower_bound=("window_start", lowest),
            metadata=metadata,
        )
    else:  # a new table, or nothing to write but the mark still moves past the batches read
        commit = CommitProperties(
            app_transactions=[Transaction(app_id=SCORE_APP_ID, version=through)],
            custom_metadata=metadata,
        )
        append_in_time_order(path, rows, "window_start", commit_properties=commit)
    return DeltaTable(path).version()


def _add_forecast_method(path: str, key: str) -> None:
    """Give a gold table written before forecasts named their `method` that field (null in
    its old rows): an empty append that merges the schema, so MERGE can write new rows."""
    from deltalake import DeltaTable, write_deltalake

    schema = pa.schema(DeltaTable(path).schema().to_arrow())
    item = schema.field("forecasts").type.value_type
    if item.get_field_index("method") < 0:
        write_deltalake(path, gold_schema(key).empty_table(), mode="append", schema_mode="merge")
