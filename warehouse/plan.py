"""What the loader copies, decided without I/O: the lake tables, their keys, and which files are new.

Silver features and gold are MERGE-updated in Delta: a MERGE rewrites the data files holding the
rows it changes (copy-on-write; the lake keeps deletion vectors off). So the rows that are new
or changed since version `v` are exactly the rows of the files in the current version that were
not in version `v`; upserting them on the table's key brings Postgres up to date.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from periscope.contracts import CONTRACTS, SourceContract, get_contract
from warehouse.ddl import LAKE_SCHEMA, STATE_TABLE

__all__ = [
    "ALWAYS_COLUMNS",
    "ENTITIES",
    "FORECAST_FIELDS",
    "LoadPlan",
    "Orphan",
    "TableSpec",
    "flatten_forecasts",
    "forecast_columns",
    "forecast_counts",
    "forecast_key",
    "has_entity",
    "loadable_columns",
    "generic_table_note",
    "orphan_warning",
    "orphans",
    "plan_load",
    "table_entity",
    "table_key",
    "table_names",
    "table_specs",
]

Entity = Literal["observations", "features", "predictions", "event_predictions"]
ENTITIES: tuple[Entity, ...] = ("observations", "features", "predictions", "event_predictions")

_LAYER = {
    "observations": "silver",
    "features": "silver",
    "predictions": "gold",
    "event_predictions": "gold",  # the speed layer: one row per scored event
}
# gold's nested `forecasts` list becomes its own table, one row per forecast: the contract's key
# and window_start of the gold row, then these fields of each forecast. `method` (the forecaster
# served) is null in gold rows written before forecasts named it.
FORECAST_FIELDS = (
    "measure",
    "horizon_h",
    "target_time",
    "yhat",
    "yhat_lower",
    "yhat_upper",
    "method",
)
# Scalar columns a lake table always has in Postgres, even when an older Delta table lacks
# them (null there), so the staging views can read them at every stage of the lake.
ALWAYS_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "predictions": (("anomaly_kind", "text"),),
}


def has_entity(contract: SourceContract, entity: str) -> bool:
    """Whether the contract has this lake table: event predictions only where it names some.

    >>> has_entity(get_contract("weather"), "event_predictions")
    False
    """
    return entity != "event_predictions" or bool(contract.event_predictions)


def table_entity(contract: SourceContract, entity: Entity) -> str:
    """The entity in a lake table's name: the plan's own, but the speed layer's table is named
    by the contract's event.

    >>> table_entity(get_contract("taxi"), "event_predictions")
    'trip_predictions'
    """
    return contract.event_predictions_entity if entity == "event_predictions" else entity


def table_key(contract: SourceContract, entity: Entity) -> tuple[str, ...]:
    """The natural key of a lake table, from the contract: observations are unique per event
    id when the contract has one (silver dedupes on it), else per (key, event time); event
    predictions per event id; windows and predictions per (key, window_start).

    >>> table_key(get_contract("weather"), "observations")
    ('station_id', 'event_time')
    """
    if entity == "event_predictions":
        assert contract.event_id_field is not None, contract.name  # the contract checks it
        return (contract.event_id_field,)
    if entity == "observations":
        if contract.event_id_field is not None:
            return (contract.event_id_field,)
        return (contract.key_field, "event_time")
    return (contract.key_field, "window_start")


def forecast_key(contract: SourceContract) -> tuple[str, ...]:
    """The key of `lake.<source>_forecasts`: the gold row's key, then measure and horizon."""
    return (contract.key_field, "window_start", "measure", "horizon_h")


def forecast_columns(contract: SourceContract) -> tuple[str, ...]:
    """The columns of `lake.<source>_forecasts`, in order."""
    return (contract.key_field, "window_start", *FORECAST_FIELDS)


@dataclass(frozen=True)
class TableSpec:
    """One Delta table the loader copies into the Postgres schema `lake`."""

    source: str
    entity: Entity

    @property
    def contract(self) -> SourceContract:
        return get_contract(self.source)

    @property
    def name(self) -> str:
        """The Postgres table (in schema `lake`) and the control row's name, e.g.
        `weather_features`, `taxi_trip_predictions`."""
        return f"{self.source}_{table_entity(self.contract, self.entity)}"

    @property
    def delta_table(self) -> str:
        """The Delta table relative to the lake root, e.g. `silver/weather_features`."""
        return f"{_LAYER[self.entity]}/{self.name}"

    @property
    def key(self) -> tuple[str, ...]:
        return table_key(self.contract, self.entity)

    @property
    def forecasts_table(self) -> str | None:
        """The table gold's flattened forecasts go to, e.g. `weather_forecasts`; None elsewhere."""
        return f"{self.source}_forecasts" if self.entity == "predictions" else None

    @property
    def forecast_key(self) -> tuple[str, ...]:
        return forecast_key(self.contract)

    @property
    def forecast_columns(self) -> tuple[str, ...]:
        return forecast_columns(self.contract)


def table_names(contract: SourceContract) -> dict[str, Entity]:
    """The contract's lake tables as `--table` names them (the table's name without the
    source) -> the plan's entity.

    >>> table_names(get_contract("taxi"))["trip_predictions"]
    'event_predictions'
    """
    return {table_entity(contract, e): e for e in ENTITIES if has_entity(contract, e)}


def table_specs(
    sources: Iterable[str] | None = None, tables: Iterable[str] | None = None
) -> list[TableSpec]:
    """The tables to load, source by source (observations, features, predictions, and event
    predictions for contracts that name some). `tables` are the names `table_names` gives
    (`trip_predictions`) or the plan's entities (`event_predictions`: every source's speed
    layer, whatever its event).

    >>> [s.name for s in table_specs(["weather"], ["features"])]
    ['weather_features']
    >>> [s.name for s in table_specs(None, ["trip_predictions"])]
    ['taxi_trip_predictions']
    """
    chosen_sources = list(sources) if sources is not None else list(CONTRACTS)
    for source in chosen_sources:
        if source not in CONTRACTS:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(CONTRACTS)}")
    names = {s: table_names(CONTRACTS[s]) for s in chosen_sources}
    chosen = set(tables) if tables is not None else set(ENTITIES)
    known = {name for by_name in names.values() for name in by_name}
    for table in sorted(chosen - known - set(ENTITIES)):
        raise ValueError(f"unknown table {table!r}; known: {', '.join(sorted(known))}")
    return [
        TableSpec(source, entity)
        for source in chosen_sources
        for name, entity in names[source].items()
        if name in chosen or entity in chosen
    ]


def generic_table_note(sources: Iterable[str] | None, tables: Iterable[str] | None) -> str | None:
    """A note for `--table event_predictions` where a chosen source names that table by its
    event: the generic name still works, the table's own name is the one to use.

    >>> print(generic_table_note(["taxi"], ["event_predictions"]))
    --table event_predictions is deprecated: the speed layer's tables are named by their event; use --table trip_predictions (taxi)
    >>> generic_table_note(None, ["features"]) is None
    True
    """
    if tables is None or "event_predictions" not in tables:
        return None
    named = {
        s: CONTRACTS[s].event_predictions_entity
        for s in (CONTRACTS if sources is None else sources)
        if s in CONTRACTS and has_entity(CONTRACTS[s], "event_predictions")
    }
    renamed = {s: name for s, name in named.items() if name != "event_predictions"}
    if not renamed:
        return None
    use = ", ".join(f"--table {name} ({s})" for s, name in renamed.items())
    return (
        "--table event_predictions is deprecated: the speed layer's tables are named by their "
        f"event; use {use}"
    )


@dataclass(frozen=True)
class Orphan:
    """A lake table left under an older name: the speed layer's `<source>_event_predictions`,
    named by the contract's event since (taxi: `taxi_trip_predictions`). Nothing loads or
    reads it any more."""

    name: str
    renamed_to: str
    delta_table: str

    def drop_sql(self) -> tuple[str, ...]:
        """What removes it from Postgres (cascade: the old staging view built on it goes too).

        >>> Orphan("taxi_event_predictions", "taxi_trip_predictions", "gold/x").drop_sql()[1]
        "delete from lake._load_state where table_name = 'taxi_event_predictions'"
        """
        return (
            f"drop table if exists {LAKE_SCHEMA}.{self.name} cascade",
            f"delete from {LAKE_SCHEMA}.{STATE_TABLE} where table_name = '{self.name}'",
        )


def orphans(contracts: Iterable[SourceContract], present: Iterable[str]) -> list[Orphan]:
    """Which of the `present` names (Postgres tables of the schema `lake`, its `_load_state`
    rows, Delta tables) are the old generic names of a speed layer's table.

    >>> orphans([get_contract("taxi"), get_contract("weather")], ["taxi_event_predictions"])
    [Orphan(name='taxi_event_predictions', renamed_to='taxi_trip_predictions', delta_table='gold/taxi_event_predictions')]
    """
    seen = set(present)
    found = []
    for contract in contracts:
        old_name = f"{contract.name}_event_predictions"  # the name before tables had events
        if not has_entity(contract, "event_predictions") or old_name not in seen:
            continue
        new_name = TableSpec(contract.name, "event_predictions").name
        if new_name != old_name:
            found.append(Orphan(old_name, new_name, f"{_LAYER['event_predictions']}/{old_name}"))
    return found


def orphan_warning(
    orphan: Orphan, *, table: bool, state_row: bool, delta_path: str | None, dropped: bool
) -> str:
    """What `warehouse load` says of an orphan found in Postgres (`table`, `state_row`) and in
    the lake (`delta_path`): where it is and what removes it, or that it dropped it."""
    postgres = [
        *([f"{LAKE_SCHEMA}.{orphan.name}"] if table else []),
        *([f"its row in {LAKE_SCHEMA}.{STATE_TABLE}"] if state_row else []),
    ]
    why = (
        f"left from before the speed layer's table was named by its event (now {orphan.renamed_to})"
    )
    if dropped:
        text = f"dropped {' and '.join(postgres)}: {why}."
    else:
        found = ", ".join([*postgres, *([delta_path] if delta_path else [])])
        text = f"{orphan.name} is {why}; nothing loads or reads it. Found: {found}."
        if postgres:
            text += (
                " Drop it from Postgres with `periscope warehouse load --drop-orphans` or, as "
                f"the owner: {'; '.join(orphan.drop_sql())}."
            )
    if delta_path:
        text += f" Remove its Delta table by hand: rm -r {delta_path}"
    return text


@dataclass(frozen=True)
class LoadPlan:
    """What one load of a table does.

    mode: `none` (Postgres is at the current version), `incremental` (upsert the rows of
    `files`), or `full` (replace the table with the rows of `files`, i.e. every file).
    """

    mode: Literal["none", "incremental", "full"]
    from_version: int | None
    to_version: int
    files: tuple[str, ...]
    reason: str = ""


def plan_load(
    *,
    loaded_version: int | None,
    current_version: int,
    current_files: Iterable[str],
    loaded_files: Iterable[str] | None,
    full: bool = False,
) -> LoadPlan:
    """Decide how to bring a Postgres table from `loaded_version` to `current_version`.

    `loaded_files` are the data files of the loaded version, or None when that version can
    no longer be read (its log was cleaned up): then the table is reloaded in full.

    >>> plan_load(loaded_version=3, current_version=5, current_files=["a", "c"], loaded_files=["a", "b"])
    LoadPlan(mode='incremental', from_version=3, to_version=5, files=('c',), reason='')
    """
    files = tuple(sorted(set(current_files)))
    if full:
        return LoadPlan("full", loaded_version, current_version, files, "requested")
    if loaded_version is None:
        return LoadPlan("full", None, current_version, files, "first load")
    if loaded_version == current_version:
        return LoadPlan("none", loaded_version, current_version, ())
    if loaded_version > current_version:
        # The Delta table was recreated under the same path: the stored version means nothing.
        return LoadPlan(
            "full", loaded_version, current_version, files, "Delta version went backwards"
        )
    if loaded_files is None:
        return LoadPlan(
            "full", loaded_version, current_version, files, f"version {loaded_version} is gone"
        )
    new = tuple(f for f in files if f not in set(loaded_files))
    return LoadPlan("incremental", loaded_version, current_version, new)


def loadable_columns(schema: pa.Schema) -> list[str]:
    """The columns Postgres gets as they are: every scalar column (lists, structs and binary
    are left out; gold's forecasts list goes through `flatten_forecasts`)."""
    return [
        f.name
        for f in schema
        if not (
            pa.types.is_nested(f.type)
            or pa.types.is_binary(f.type)
            or pa.types.is_large_binary(f.type)
        )
    ]


def forecast_counts(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """How many forecasts each gold row holds (0 for an empty or null list)."""
    return pc.fill_null(pc.list_value_length(batch.column("forecasts")), 0).cast(pa.int32())


def flatten_forecasts(batch: pa.RecordBatch | pa.Table, key: str) -> pa.Table:
    """Gold rows -> one row per (key, window_start, measure, horizon_h) forecast; `key` is the
    contract's key column.

    >>> from datetime import datetime, UTC
    >>> t = datetime(2024, 1, 1, tzinfo=UTC)
    >>> gold = pa.table({"zone": ["a"], "window_start": [t], "forecasts": [[
    ...     {"measure": "event_count", "horizon_h": 1, "target_time": t, "yhat": 1.0,
    ...      "yhat_lower": 0.0, "yhat_upper": 2.0}]]})
    >>> flatten_forecasts(gold, "zone").column_names[:3]
    ['zone', 'window_start', 'measure']
    """
    forecasts = batch.column("forecasts")
    if isinstance(forecasts, pa.ChunkedArray):
        forecasts = forecasts.combine_chunks()
    parents = pc.list_parent_indices(forecasts)
    values = pc.list_flatten(forecasts)
    columns = {
        key: pc.take(batch.column(key), parents),
        "window_start": pc.take(batch.column("window_start"), parents),
    }
    for name in FORECAST_FIELDS:
        if values.type.get_field_index(name) >= 0:
            columns[name] = pc.struct_field(values, name)
        else:  # a field gold gained later (method): null in older rows
            columns[name] = pa.nulls(len(values), pa.string())
    return pa.table(columns)
