"""The asset keys and lineage of the lake and the warehouse load, derived from the contracts.

Pure functions of the contracts (no Dagster objects), so the graph is testable on its own:
`kafka/<source>-raw` -> `lake/bronze/<source>_raw` -> `lake/silver/<source>_observations`,
`_quarantine`, `_features` -> `lake/gold/<source>_predictions` (and the speed layer's
`<source>_<event>_predictions`, e.g. `taxi_trip_predictions`, where the contract names event
predictions) -> `warehouse/lake/<table>` (the loader's Postgres
tables, a subset per source) -> dbt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from periscope.contracts import SourceContract

__all__ = [
    "LOAD_STATE_KEY",
    "LakeNode",
    "WarehouseTable",
    "lake_key",
    "lake_nodes",
    "source_of_lake_table",
    "warehouse_key",
    "warehouse_tables",
]

Key = tuple[str, ...]

# The loader's control table (lake._load_state), written by every load.
LOAD_STATE_KEY: Key = ("warehouse", "lake", "_load_state")


@dataclass(frozen=True)
class LakeNode:
    """One lake table (or the Kafka topic feeding bronze) and the nodes it is made from."""

    key: Key
    source: str
    table: str | None  # the table relative to the lake root, e.g. silver/weather_features
    deps: tuple[Key, ...] = ()
    description: str = ""


def _lake_key(table: str) -> Key:
    return ("lake", *table.split("/"))


def lake_nodes(contract: SourceContract) -> list[LakeNode]:
    """The topic and the lake tables of one source, upstream first.

    >>> from periscope.contracts import get_contract
    >>> [n.key[-1] for n in lake_nodes(get_contract("weather"))]
    ['weather-raw', 'weather_raw', 'weather_observations', 'weather_quarantine', 'weather_features', 'weather_predictions']
    """
    name = contract.name
    topic: Key = ("kafka", contract.topic("raw"))
    bronze = contract.table("bronze", "raw")
    observations = contract.table("silver", "observations")
    features = contract.table("silver", "features")
    nodes = [
        LakeNode(topic, name, None, (), f"Kafka topic {contract.topic('raw')}: raw records."),
        LakeNode(_lake_key(bronze), name, bronze, (topic,), "Raw bytes and Kafka offsets."),
        LakeNode(
            _lake_key(observations),
            name,
            observations,
            (_lake_key(bronze),),
            "Validated, deduplicated observations.",
        ),
        LakeNode(
            _lake_key(contract.table("silver", "quarantine")),
            name,
            contract.table("silver", "quarantine"),
            (_lake_key(bronze),),
            "Rejected records with their reason code.",
        ),
        LakeNode(
            _lake_key(features),
            name,
            features,
            (_lake_key(observations),),
            "Feature windows.",
        ),
        LakeNode(
            _lake_key(contract.table("gold", "predictions")),
            name,
            contract.table("gold", "predictions"),
            (_lake_key(features),),
            "Forecasts and anomaly scores per feature window (the champions').",
        ),
    ]
    if contract.event_predictions:
        events = contract.table("gold", contract.event_predictions_entity)
        nodes.append(
            LakeNode(
                _lake_key(events),
                name,
                events,
                (_lake_key(observations),),
                "The speed layer: one prediction per event.",
            )
        )
    return nodes


class WarehouseTable(NamedTuple):
    """A table `periscope warehouse load` fills in Postgres' schema `lake`, and its Delta table."""

    name: str  # e.g. weather_forecasts
    delta_table: str  # e.g. gold/weather_predictions
    source: str


def warehouse_tables(contract: SourceContract) -> list[WarehouseTable]:
    """The Postgres tables `periscope warehouse load --source <name>` fills (warehouse.plan's
    table specs: silver observations and features, gold predictions and their forecasts, and the
    event predictions where the contract names some).

    >>> from periscope.contracts import get_contract
    >>> [t.name for t in warehouse_tables(get_contract("taxi"))][-2:]
    ['taxi_forecasts', 'taxi_trip_predictions']
    """
    name = contract.name
    tables = [
        WarehouseTable(f"{name}_observations", contract.table("silver", "observations"), name),
        WarehouseTable(f"{name}_features", contract.table("silver", "features"), name),
        WarehouseTable(f"{name}_predictions", contract.table("gold", "predictions"), name),
        WarehouseTable(f"{name}_forecasts", contract.table("gold", "predictions"), name),
    ]
    if contract.event_predictions:
        entity = contract.event_predictions_entity
        tables.append(WarehouseTable(f"{name}_{entity}", contract.table("gold", entity), name))
    return tables


def warehouse_key(table: str) -> Key:
    """The asset of a Postgres table the loader fills, e.g. warehouse/lake/weather_features."""
    return ("warehouse", "lake", table)


def lake_key(table: str) -> Key:
    """The asset of a Delta table, e.g. lake/silver/weather_features."""
    return _lake_key(table)


def source_of_lake_table(table: str, sources: Iterable[str]) -> str | None:
    """The source a Postgres `lake.<table>` belongs to: the longest source name it starts with.

    >>> source_of_lake_table("air_quality_forecasts", ["air", "air_quality", "weather"])
    'air_quality'
    >>> source_of_lake_table("_load_state", ["weather"]) is None
    True
    """
    matches = [s for s in sources if table.startswith(f"{s}_")]
    return max(matches, key=len) if matches else None
