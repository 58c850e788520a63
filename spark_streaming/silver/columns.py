"""The columns of every silver table, derived from the contract: one spec per table, from
which both the Spark schemas (table creation) and the lists of columns each write selects
come, so the two can never disagree.

>>> from periscope.contracts import get_contract
>>> [c.name for c in table_columns(get_contract("weather"), "duplicates")][:6]
['topic', 'partition', 'offset', 'kafka_timestamp', 'station_id', 'event_time']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from periscope.contracts import Field, SourceContract
from periscope.windows import feature_types

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

__all__ = [
    "COORDINATES",
    "SILVER_TABLES",
    "Column",
    "observation_columns",
    "spark_schema",
    "table_columns",
    "write_columns",
]

ColumnType = Literal["string", "double", "long", "int", "boolean", "timestamp", "binary"]
SilverTable = Literal["observations", "quarantine", "duplicates", "late", "features", "batches"]
SILVER_TABLES: tuple[SilverTable, ...] = (
    "observations",
    "quarantine",
    "duplicates",
    "late",
    "features",
    "batches",
)


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType


# Where a row came from in Kafka (kept through bronze for lineage).
COORDINATES = (
    Column("topic", "string"),
    Column("partition", "int"),
    Column("offset", "long"),
    Column("kafka_timestamp", "timestamp"),
)
# Every silver row but the ledger's says which batch wrote it, and when.
_STAMP = (Column("silver_batch_id", "long"), Column("processed_at", "timestamp"))

_FIELD_TYPES: dict[str, ColumnType] = {
    "measure": "double",
    "count": "long",
    "category": "string",
    "text": "string",
    "flag": "boolean",
}


def field_type(field: Field) -> ColumnType:
    return _FIELD_TYPES[field.kind]


def _identity(contract: SourceContract) -> tuple[Column, ...]:
    """Key, event time and (when the contract has one) the event id: what names a record.
    Keys are strings in the lake whatever their wire type (a zone id 132 is "132")."""
    event_id = (Column(contract.event_id_field, "string"),) if contract.event_id_field else ()
    return (Column(contract.key_field, "string"), Column("event_time", "timestamp"), *event_id)


def table_columns(contract: SourceContract, table: SilverTable) -> tuple[Column, ...]:
    """The columns `table` holds, in order, without the batch stamp."""
    identity = _identity(contract)
    if table == "observations":
        event_id = contract.event_id_field
        values = tuple(
            Column(f.name, field_type(f)) for f in contract.value_fields if f.name != event_id
        )
        qa = (Column("qa_missing_fields", "int"), Column("qa_out_of_range_fields", "int"))
        return (*identity, *values, *qa, *COORDINATES)
    if table == "quarantine":
        raw = (Column("key", "binary"), Column("value", "binary"))
        reason = (Column("reason", "string"), Column("reason_detail", "string"))
        return (*COORDINATES, *raw, *reason, *identity)
    if table == "duplicates":
        return (*COORDINATES, *identity)
    if table == "late":
        return (*COORDINATES, *identity, Column("watermark", "timestamp"))
    if table == "features":
        return (
            Column(contract.key_field, "string"),
            Column("window_start", "timestamp"),
            Column("window_end", "timestamp"),
            Column("reading_count", "long"),
            *(Column(name, kind) for name, kind in feature_types(contract).items()),  # type: ignore[arg-type]
        )
    if table == "batches":
        counts = ("bronze_rows", "observations", "quarantined", "duplicates", "late")
        return (
            Column("batch_id", "long"),
            *(Column(name, "long") for name in (*counts, "windows_updated")),
            Column("max_event_time", "timestamp"),
            Column("watermark", "timestamp"),
            Column("processed_at", "timestamp"),
        )
    raise ValueError(f"unknown silver table {table!r}; known: {', '.join(SILVER_TABLES)}")


def write_columns(contract: SourceContract, table: SilverTable) -> list[str]:
    """The columns a write selects from a batch's rows (the stamp is added by the writer)."""
    return [c.name for c in table_columns(contract, table)]


def observation_columns(contract: SourceContract) -> list[str]:
    """Columns of `silver/<source>_observations`, in order (bronze coordinates kept for lineage)."""
    return write_columns(contract, "observations")


def spark_schema(contract: SourceContract, table: SilverTable) -> StructType:
    """The Delta schema of a silver table (stamped unless it is the ledger)."""
    from pyspark.sql import types as T

    spark_types = {
        "string": T.StringType(),
        "double": T.DoubleType(),
        "long": T.LongType(),
        "int": T.IntegerType(),
        "boolean": T.BooleanType(),
        "timestamp": T.TimestampType(),
        "binary": T.BinaryType(),
    }
    columns = table_columns(contract, table)
    if table != "batches":
        columns = (*columns, *_STAMP)
    return T.StructType([T.StructField(c.name, spark_types[c.type]) for c in columns])
