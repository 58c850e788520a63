"""Lineage of one gold row: the silver batch that wrote its window, the readings in that window
with the bronze (topic, partition, offset) of each, and the models that scored it.

Everything needed is already in the lake, no column was added for it:
- the silver feature row carries `silver_batch_id` (the batch that last wrote the window) and
  `processed_at`; the batch ledger (`silver/<source>_batches`) holds that batch's counts;
- silver observations keep the Kafka coordinates bronze landed them with (`topic`,
  `partition`, `offset`, `kafka_timestamp`), and bronze is append-only, so those coordinates
  find the raw record; readings silver marked too late (`silver/<source>_late`) never count;
- the gold row names its forecast and anomaly model versions, and each gold commit records
  the last silver batch it scored (`periscope.silver_through` in the commit's metadata).

`window_readings`, `first_commit_after` and `gold_commit_of` are pure; `lineage` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer

from periscope.cli_options import SourceArgument
from periscope.contracts import SourceContract
from periscope.settings import Settings

__all__ = ["first_commit_after", "gold_commit_of", "lineage", "lineage_app", "window_readings"]

_COORDINATES = ["topic", "partition", "offset"]
_UTC_US = pa.timestamp("us", tz="UTC")


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def window_readings(
    observations: pa.Table,
    late: pa.Table | None,
    *,
    start: datetime,
    end: datetime,
    through_batch: int,
) -> pa.Table:
    """The observations one window holds: event time in [start, end), written by a batch up to
    the one that last wrote the window, and not marked late; oldest first.

    `observations` is already narrowed to the window's entity; `late` holds the coordinates
    of late readings (None: the source never had one).
    """
    in_window = (
        (pc.field("event_time") >= pa.scalar(_utc(start), _UTC_US))
        & (pc.field("event_time") < pa.scalar(_utc(end), _UTC_US))
        & (pc.field("silver_batch_id") <= through_batch)
    )
    readings = observations.filter(in_window)
    if late is not None and late.num_rows:
        readings = readings.join(late.select(_COORDINATES), _COORDINATES, join_type="left anti")
    return readings.sort_by(
        [("event_time", "ascending"), ("partition", "ascending"), ("offset", "ascending")]
    )


def _of_entity(rows: pa.Table, key: str, entity_id: str) -> pa.Table:
    """The rows of one entity (compared in Python: see `lineage`)."""
    return rows.filter(
        pa.array([value == entity_id for value in rows[key].to_pylist()], pa.bool_())
    )


def _commit_time(entry: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)


def first_commit_after(
    history: Iterable[Mapping[str, Any]], at: datetime
) -> Mapping[str, Any] | None:
    """The oldest commit of a Delta history (delta-rs `DeltaTable.history()`) at or after `at`.

    Delta stamps commits in milliseconds: `at` is compared at that resolution.
    """
    floor = _utc(at).replace(microsecond=_utc(at).microsecond // 1000 * 1000)
    later = [e for e in history if _commit_time(e) >= floor]
    return min(later, key=lambda e: e["version"]) if later else None


def gold_commit_of(
    history: Iterable[Mapping[str, Any]], *, scored_at: datetime, silver_batch: int
) -> Mapping[str, Any] | None:
    """The gold commit that wrote a row scored at `scored_at` from a window of `silver_batch`:
    the oldest scoring commit after `scored_at` whose mark covers that batch."""
    scoring = [e for e in history if int(e.get("periscope.silver_through", -1)) >= silver_batch]
    return first_commit_after(scoring, scored_at)


def _history(path: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    return [dict(e) for e in DeltaTable(path).history()]


def _plain(value: Any) -> Any:
    """JSON-friendly: datetimes as ISO 8601 UTC strings."""
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def lineage(
    settings: Settings, contract: SourceContract, entity_id: str, window_start: datetime
) -> dict[str, Any] | None:
    """Where one gold row came from; None when gold has no row for (entity, window_start)."""
    from deltalake import DeltaTable

    from periscope.lake import read_delta

    key = contract.key_field
    start = pa.scalar(_utc(window_start), _UTC_US)
    # The key is compared after the scan: delta-rs' MERGE writes string views, which Arrow's
    # scan filter cannot compare with a string.
    this_window = pc.field("window_start") == start

    def path(layer: str, entity: str) -> str:
        return settings.lake_path(contract.table(layer, entity))  # type: ignore[arg-type]

    gold_path = path("gold", "predictions")
    if not DeltaTable.is_deltatable(gold_path):
        return None
    gold = _of_entity(read_delta(gold_path, None, this_window), key, entity_id).to_pylist()
    if not gold:
        return None
    row = gold[0]

    def read(
        layer: str, entity: str, where: pc.Expression, columns: list[str] | None = None
    ) -> pa.Table | None:
        found = path(layer, entity)  # None: silver has not written this table (yet)
        if not DeltaTable.is_deltatable(found):
            return None
        rows = read_delta(found, columns, where)
        return _of_entity(rows, key, entity_id) if key in rows.column_names else rows

    features_found = read("silver", "features", this_window)
    features = features_found.to_pylist() if features_found is not None else []
    # Gold without its silver window (a lake rebuilt under it): the gold part alone.
    window = features[0] if features else {"window_end": row["window_end"], "processed_at": None}
    batch = int(window.get("silver_batch_id", -1))
    ledger_found = read("silver", "batches", pc.field("batch_id") == batch)
    ledger = ledger_found.to_pylist() if ledger_found is not None else []
    span = (pc.field("event_time") >= start) & (
        pc.field("event_time") < pa.scalar(_utc(window["window_end"]), _UTC_US)
    )
    observations = read("silver", "observations", span)
    late = read("silver", "late", span, [*_COORDINATES, key])
    if features and observations is not None:
        readings = window_readings(
            observations, late, start=window_start, end=window["window_end"], through_batch=batch
        )
        keep = [c for c in readings.column_names if c not in ("processed_at", key)]
        held = readings.select(keep).to_pylist()
    else:
        held = []

    gold_commit = gold_commit_of(
        _history(gold_path), scored_at=row["scored_at"], silver_batch=batch
    )
    silver_commit = (
        first_commit_after(
            (e for e in _history(path("silver", "features")) if e.get("operation") == "MERGE"),
            window["processed_at"],
        )
        if features
        else None
    )
    forecasts = row.pop("forecasts") or []
    return _plain(
        {
            "source": contract.name,
            "entity_id": entity_id,
            "window_start": row["window_start"],
            "window_end": row["window_end"],
            "gold": {
                "table": gold_path,
                "version": gold_commit["version"] if gold_commit else None,
                "committed_at": _commit_time(gold_commit) if gold_commit else None,
                "scored_at": row["scored_at"],
                "anomaly_score": row.get("anomaly_score"),
                "is_anomaly": row.get("is_anomaly"),
                "forecast_methods": sorted({f.get("method") or "" for f in forecasts} - {""}),
            },
            "models": {
                "forecast": {
                    "model": row.get("forecast_model"),
                    "version": row.get("forecast_version"),
                },
                "anomaly": {
                    "model": row.get("anomaly_model"),
                    "version": row.get("anomaly_version"),
                },
            },
            "silver": None
            if not features
            else {
                "features_table": path("silver", "features"),
                "batch_id": batch,
                "processed_at": window["processed_at"],
                "features_version": silver_commit["version"] if silver_commit else None,
                "reading_count": window.get("reading_count"),
                "batch": ledger[0] if ledger else None,
            },
            "bronze": {"table": path("bronze", "raw")},
            "observations": held,
        }
    )


# --- `periscope lineage` -------------------------------------------------------------------------
# Options may follow the arguments (a group stops at its first argument by default).
lineage_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"allow_interspersed_args": True},
)


@lineage_app.callback()
def lineage_command(
    source: SourceArgument,
    entity: Annotated[str, typer.Argument(help="The entity (a station, a zone).")],
    window_start: Annotated[
        datetime,
        typer.Argument(help="The gold row's window start, e.g. 2017-01-01T00:00:00 (UTC)."),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole answer as JSON.")
    ] = False,
) -> None:
    """Where one gold row came from: the silver batch that wrote its window, its readings with
    their bronze (topic, partition, offset), and the model versions that scored it."""
    from rich.console import Console

    from periscope.contracts import get_contract
    from periscope.output import Column, print_rows
    from periscope.settings import get_settings

    moment = _utc(window_start)
    found = lineage(get_settings(), get_contract(source), entity, moment)
    if found is None:
        raise typer.BadParameter(
            f"{source} has no gold row for {entity!r} at {moment.isoformat()}",
            param_hint="WINDOW_START",
        )
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    console = Console()
    gold, silver, models = found["gold"], found["silver"] or {}, found["models"]
    console.print(
        f"gold {source} {entity} [{found['window_start']} .. {found['window_end']}): "
        f"version {gold['version']}, scored {gold['scored_at']}\n"
        f"models: forecast {models['forecast']['model']} v{models['forecast']['version']}, "
        f"anomaly {models['anomaly']['model']} v{models['anomaly']['version']}\n"
        f"silver: batch {silver.get('batch_id')} (features version "
        f"{silver.get('features_version')}), {silver.get('reading_count')} readings in the window",
        soft_wrap=True,
    )
    columns = ["event_time", "topic", "partition", "offset", "kafka_timestamp", "silver_batch_id"]
    print_rows(
        [Column(c) for c in columns],
        [[o[c] for c in columns] for o in found["observations"]],
        title=f"readings and their bronze coordinates ({found['bronze']['table']})",
        console=console,
    )
