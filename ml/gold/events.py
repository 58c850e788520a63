"""The speed layer: every accepted event of a source with `event_predictions` scored once.

Silver observations in, `gold/<source>_<event>_predictions` rows out (the contract's
`event_predictions_entity`, e.g. `gold/taxi_trip_predictions`): one row per event id
(`contract.event_id_field`) with one `predicted_<measure>` per measure the contract predicts,
made by the source's per-event champion (`ml.registry.EVENT_KINDS`, e.g. `taxi_trip`).

Which events are new: every observation row carries the `silver_batch_id` that wrote it, so
the events of batches above the last one scored are exactly the unscored ones. Like the
windows' mark, that mark lives in the gold table itself, as its own Delta app transaction
(`EVENT_SCORE_APP_ID`) committed by the same MERGE as the rows: a round that fails or is
killed commits neither, and the next one scores its events again. The MERGE is on the event
id, so a re-scored event keeps one row. With no champion, nothing is scored and the mark
stays, so the events wait for the first model.

The pure parts (`event_schema`, `event_rows`, `predict_events`) take no Ray, Delta or MLflow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ml.gold.plan import plan_round
from ml.registry import EVENT_KINDS, ModelKind, Registry, model_name
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.lake import append_in_time_order, delta_dataset, merge_rows
from periscope.messages import Publisher
from periscope.metrics import record_gold_round
from periscope.settings import Settings
from periscope.time import counts_by_time

__all__ = [
    "EVENTS_PER_WINDOW",
    "EVENT_SCORE_APP_ID",
    "EventFeed",
    "EventRoundReport",
    "event_kind",
    "event_predictions_path",
    "event_rows",
    "event_schema",
    "events_pending_after",
    "predict_events",
    "score_event_round",
    "scored_events_through",
    "write_event_predictions",
]

log = logging.getLogger(__name__)

# The Delta app id under which gold records the last silver batch whose events it scored.
EVENT_SCORE_APP_ID = "periscope-score-events"
_TIMESTAMP = pa.timestamp("us", tz="UTC")
# An event costs far less to score than a window (one regressor row against forecasts), so an
# event round takes this many times `score_round_rows` observations.
EVENTS_PER_WINDOW = 10


# --- the pure parts --------------------------------------------------------------------------
def event_kind(contract: SourceContract) -> ModelKind | None:
    """The registered model kind that scores this source's events (None: no speed layer).

    >>> from periscope.contracts import get_contract
    >>> event_kind(get_contract("taxi")), event_kind(get_contract("weather"))
    ('trip', None)
    """
    if not contract.event_predictions:
        return None
    kinds = [kind for kind, sources in EVENT_KINDS.items() if contract.name in sources]
    return kinds[0] if kinds else None


def event_schema(contract: SourceContract) -> pa.Schema:
    """The schema of gold/<source>_<event>_predictions: one row per event id.

    >>> from periscope.contracts import get_contract
    >>> event_schema(get_contract("taxi")).names  # doctest: +NORMALIZE_WHITESPACE
    ['pu_location_id', 'trip_id', 'event_time', 'kafka_timestamp', 'predicted_duration_min',
     'predicted_fare_amount', 'event_model', 'event_model_version', 'scored_at']
    """
    if contract.event_id_field is None or not contract.event_predictions:
        raise PeriscopeError(f"{contract.name} predicts nothing per event")
    return pa.schema(
        [
            pa.field(contract.key_field, pa.string(), nullable=False),
            pa.field(contract.event_id_field, pa.string(), nullable=False),
            pa.field("event_time", _TIMESTAMP, nullable=False),
            pa.field("kafka_timestamp", _TIMESTAMP),
            *(pa.field(f"predicted_{m}", pa.float64()) for m in contract.event_predictions),
            pa.field("event_model", pa.string(), nullable=False),
            pa.field("event_model_version", pa.int64(), nullable=False),
            pa.field("scored_at", _TIMESTAMP, nullable=False),
        ]
    )


def predict_events(model: Any, events: pd.DataFrame, measures: tuple[str, ...]) -> dict[str, Any]:
    """{measure: one prediction per event, in row order}; the model's `predict_target`."""
    if len(events) == 0:
        return {m: np.zeros(0) for m in measures}
    return {m: np.asarray(model.predict_target(m, events), dtype="float64") for m in measures}


def event_rows(
    events: pd.DataFrame,
    predicted: dict[str, Any],
    contract: SourceContract,
    *,
    model: str,
    version: int,
    scored_at: datetime,
) -> pa.Table:
    """Gold event rows (exactly `event_schema(contract)`) from silver observations and their
    predictions; one row per event id, the last one given. Non-finite predictions are null."""
    schema = event_schema(contract)
    event_id = str(contract.event_id_field)
    n = len(events)
    columns: dict[str, Any] = {
        contract.key_field: events[contract.key_field].astype(str).to_numpy(),
        event_id: events[event_id].astype(str).to_numpy(),
        "event_time": pd.to_datetime(events["event_time"], utc=True),
        "kafka_timestamp": pd.to_datetime(events["kafka_timestamp"], utc=True),
    }
    for measure in contract.event_predictions:
        values = np.asarray(predicted[measure], dtype="float64")
        if len(values) != n:
            raise ValueError(f"{len(values)} predictions of {measure} for {n} events")
        columns[f"predicted_{measure}"] = pa.array(values, pa.float64(), mask=~np.isfinite(values))
    table = pa.table(
        {
            name: pa.array(columns[name], schema.field(name).type)
            if not isinstance(columns[name], pa.Array)
            else columns[name]
            for name in schema.names[: 4 + len(contract.event_predictions)]
        }
    )
    table = (
        table.append_column("event_model", pa.array([model] * n, pa.string()))
        .append_column("event_model_version", pa.array([version] * n, pa.int64()))
        .append_column("scored_at", pa.array([scored_at] * n, _TIMESTAMP))
    )
    table = table.cast(schema)
    if n and pc.count_distinct(table[event_id]).as_py() < n:  # keep each id's last row
        last = pd.Series(np.arange(n)).groupby(table[event_id].to_numpy(), sort=False).max()
        table = table.take(np.sort(last.to_numpy()))
    return table


# --- reads and writes ------------------------------------------------------------------------
def event_predictions_path(settings: Settings, contract: SourceContract) -> str:
    """Where the speed layer writes, e.g. `<lake>/gold/taxi_trip_predictions`."""
    return settings.lake_path(contract.table("gold", contract.event_predictions_entity))


def scored_events_through(path: str) -> int | None:
    """The last silver batch id whose events are in gold (None: nothing scored yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(path).transaction_version(EVENT_SCORE_APP_ID)
    except TableNotFoundError:
        return None


def write_event_predictions(
    path: str, rows: pa.Table, through: int, contract: SourceContract
) -> int:
    """MERGE rows into gold on the event id and record `through`, in one commit; returns the
    table's new version. The lower bound on event_time lets delta-rs skip older files."""
    from deltalake import CommitProperties, DeltaTable, Transaction

    schema = event_schema(contract)
    rows = rows.select(schema.names).cast(schema)
    metadata = {"periscope.operation": "score-events", "periscope.silver_through": str(through)}
    if DeltaTable.is_deltatable(path) and rows.num_rows:
        merge_rows(
            path,
            rows,
            keys=[str(contract.event_id_field)],
            app_id=EVENT_SCORE_APP_ID,
            version=through,
            lower_bound=("event_time", pc.min(rows["event_time"]).as_py()),
            metadata=metadata,
        )
    else:  # a new table, or nothing to write but the mark still moves past the batches read
        commit = CommitProperties(
            app_transactions=[Transaction(app_id=EVENT_SCORE_APP_ID, version=through)],
            custom_metadata=metadata,
        )
        append_in_time_order(path, rows, "event_time", commit_properties=commit)
    return DeltaTable(path).version()


class EventFeed:
    """Silver's observations of one source, read by silver batch id; the Delta table stays
    open between rounds and catches up with only the new commits."""

    def __init__(self, settings: Settings, contract: SourceContract) -> None:
        self.settings = settings
        self.contract = contract
        self.path = settings.lake_path(contract.table("silver", "observations"))
        self._table: Any = None

    def _scan(
        self,
        columns: list[str] | None,
        where: pc.Expression | None,
        *,
        after: int | None = None,
        through: int | None = None,
    ) -> pa.Table:
        """Rows matching `where`, from the files that may hold batches in (after, through]."""
        from deltalake import DeltaTable

        if self._table is None:
            self._table = DeltaTable(self.path)
        else:
            self._table.update_incremental()
        low = None if after is None else after + 1
        dataset = delta_dataset(self._table, {"silver_batch_id": (low, through)})
        # Single-threaded like ml.data.SilverFeed (delta-io/delta-rs#2184).
        return dataset.to_table(columns=columns, filter=where, use_threads=False)

    def exists(self) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.path))

    def batches(self, after: int) -> pd.DataFrame:
        """Observations per silver batch id above `after` (columns silver_batch_id, windows:
        the name `plan_round` reads)."""
        ids = self._scan(["silver_batch_id"], pc.field("silver_batch_id") > after, after=after)
        counts = ids.group_by("silver_batch_id").aggregate([("silver_batch_id", "count")])
        frame = counts.rename_columns(["silver_batch_id", "windows"]).to_pandas()
        return frame.sort_values("silver_batch_id", ignore_index=True)

    def latest_batch(self) -> int | None:
        ids = self._scan(["silver_batch_id"], None).column("silver_batch_id")
        return pc.max(ids).as_py()

    def events(self, after: int, through: int) -> pd.DataFrame:
        """The observations written by batches in (after, through], in event time order."""
        batch = pc.field("silver_batch_id")
        rows = self._scan(None, (batch > after) & (batch <= through), after=after, through=through)
        return rows.sort_by([("event_time", "ascending")]).to_pandas()


def events_pending_after(feed: EventFeed) -> int:
    """The silver batch id after which observations are unscored (-1: all of them); a silver
    table rebuilt below gold's mark is scored again from the start."""
    mark = scored_events_through(event_predictions_path(feed.settings, feed.contract))
    if mark is None:
        return -1
    latest = feed.latest_batch()
    if latest is not None and latest < mark:
        log.warning(
            "%s: silver observations restart at batch %s below gold's event mark %s "
            "(rebuilt?); rescoring every event",
            feed.contract.name,
            latest,
            mark,
        )
        return -1
    return mark


@dataclass(frozen=True)
class EventRoundReport:
    source: str
    events: int
    silver_after: int
    silver_through: int
    event_model: str
    event_model_version: int
    gold_version: int
    published: int
    seconds: float
    scoring_seconds: float


def score_event_round(
    pool: Any,
    registry: Registry,
    feed: EventFeed,
    *,
    after: int,
    publisher: Publisher | None = None,
    max_rows: int,
    no_champion: set[str] | None = None,
) -> EventRoundReport | None:
    """Score the next round of unscored events of one source with its per-event champion,
    published through `publisher` (None: not published).

    None when there is nothing to do: no new observations, or no champion (said once per
    source through `no_champion`; the events wait, unscored, for the first champion).
    """
    from ml.gold.messages import publish_event_predictions

    settings, contract = feed.settings, feed.contract
    kind = event_kind(contract)
    if kind is None:
        return None
    started = time.perf_counter()
    through = plan_round(feed.batches(after), max_rows)
    if through is None:
        return None
    version = pool.sync_event_model(contract.name, kind, registry)
    if version is None:
        said = no_champion if no_champion is not None else set()
        if contract.name not in said:
            log.warning(
                "%s: no champion %s; its events are not scored until one is promoted "
                "(windows still are)",
                contract.name,
                model_name(contract.name, kind),
            )
            said.add(contract.name)
        return None
    if no_champion is not None:
        no_champion.discard(contract.name)
    events = feed.events(after, through)
    scoring = time.perf_counter()
    rows = pool.score_events(contract, events, datetime.now().astimezone())
    scoring_seconds = time.perf_counter() - scoring
    # Published before the commit: a crash in between republishes (at least once), never skips.
    published = (
        publish_event_predictions(publisher, contract, rows)
        if publisher is not None and rows.num_rows
        else 0
    )
    gold_version = write_event_predictions(
        event_predictions_path(settings, contract), rows, through, contract
    )
    record_gold_round(
        contract.name,
        kind="event",
        rows_in=len(events),
        rows_out=rows.num_rows,
        seconds=time.perf_counter() - started,
        since=counts_by_time(events.get("kafka_timestamp")),
        committed_at=datetime.now(UTC),
        models={"event": (model_name(contract.name, kind), version)},
    )
    return EventRoundReport(
        source=contract.name,
        events=rows.num_rows,
        silver_after=after,
        silver_through=through,
        event_model=model_name(contract.name, kind),
        event_model_version=version,
        gold_version=gold_version,
        published=published,
        seconds=time.perf_counter() - started,
        scoring_seconds=scoring_seconds,
    )
