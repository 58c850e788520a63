"""Gold: `periscope score` -- a pool of Ray actors scores new silver feature windows.

Which windows are new: every silver feature row carries the `silver_batch_id` that last wrote
it (a late reading rewrites its windows under a newer id), so the windows of batches above the
last one scored are exactly those not scored yet, or changed since. The scorer keeps that mark
in gold itself, as a Delta app transaction (`periscope-score`, version = the last silver batch
scored) committed by the same MERGE as the rows: rows and mark move together, and a round that
fails commits neither, so the next round scores its windows again. Reading the Delta table
rather than the `<source>-features` topic means a scorer started late (a backfill, `make demo`)
still finds every window, whatever the topic's retention, and needs no Change Data Feed on
tables Spark writes.

A round: read the windows of the next few silver batches (about `score_round_rows`), the
hourly observations their forecasts start from, split them by station across the actors,
MERGE the rows into `gold/<source>_predictions` on (station_id, window_start) (re-scoring a
window replaces its row), then publish them to `<source>-predictions` (at least once).
Before each round the driver looks up the champions; actors that hold another version load
the new one, and keep the one they have when that fails (the failure is logged once).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.data import LakeSlice, SilverFeed
from ml.gold.scoring import GOLD_COLUMNS, LoadedModels, gold_schema, history_window, score_windows
from ml.ray_session import ray_session, worker_runtime_env
from ml.registry import MODEL_KINDS, Registry, model_name
from periscope.contracts import SourceContract, get_contract
from periscope.errors import PeriscopeError
from periscope.lake import GOLD_SCORE_APP_ID, merge_rows
from periscope.messages import Publisher
from periscope.settings import Settings

__all__ = [
    "SCORE_APP_ID",
    "RoundReport",
    "ScorerPool",
    "history_for",
    "plan_round",
    "run_scoring",
    "score_round",
    "scored_through",
    "split_by_station",
    "write_predictions",
]

log = logging.getLogger(__name__)

# The Delta app id under which gold records the last silver batch it scored.
SCORE_APP_ID = GOLD_SCORE_APP_ID
KEY = "station_id"


# --- pure planning ---------------------------------------------------------------------------
def plan_round(batches: pd.DataFrame, max_rows: int) -> int | None:
    """The last silver batch id of the next round: as many whole batches as fit in `max_rows`
    windows, and always at least one (a batch is never split: its rows commit together)."""
    if len(batches) == 0:
        return None
    within = batches["windows"].cumsum() <= max_rows
    last = int(within.to_numpy().nonzero()[0].max()) if within.any() else 0
    return int(batches["silver_batch_id"].iloc[last])


def station_owner(station_id: str, parts: int) -> int:
    """Which of `parts` actors scores a station: always the same one (a stable hash), so a
    station's forecast caches are built once, on one actor.

    >>> station_owner("denver", 2) == station_owner("denver", 2)
    True
    """
    return zlib.crc32(station_id.encode()) % parts


def split_by_station(features: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    """`parts` frames (some may be empty): frame i holds the stations actor i owns."""
    owner = features[KEY].astype(str).map(lambda station: station_owner(station, parts))
    return [features[owner == p] for p in range(parts)]


# --- the gold table --------------------------------------------------------------------------
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


def write_predictions(path: str, rows: pa.Table, through: int) -> int:
    """MERGE rows into gold on (station_id, window_start) and record `through`, in one commit.

    Returns the gold table's new version. The literal lower bound on window_start lets
    delta-rs skip files no row of this round can match (live rounds touch recent windows).
    No skip on an already recorded mark: `--rescore` rewrites windows below it on purpose.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    rows = rows.select(GOLD_COLUMNS).cast(gold_schema())
    metadata = {"periscope.operation": "score", "periscope.silver_through": str(through)}
    if DeltaTable.is_deltatable(path) and rows.num_rows:
        lowest = pa.compute.min(rows["window_start"]).as_py()
        merge_rows(
            path,
            rows,
            keys=[KEY, "window_start"],
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
        write_deltalake(path, rows, mode="append", commit_properties=commit)
    return DeltaTable(path).version()


def prediction_messages(rows: pa.Table) -> list[tuple[bytes | None, bytes]]:
    """(station_id, JSON) pairs for `<source>-predictions`: the gold row, forecasts by measure.

    `forecasts` becomes {measure: {"yhat": [...], "yhat_lower": [...], "yhat_upper": [...]}},
    element i being the forecast for forecast_origin + (i + 1) hours: the same numbers as the
    gold row without repeating names and target times 72 times (a third of the bytes). Times
    are RFC 3339 (UTC, "Z"), a missing value (or NaN) is null.

    >>> rows = gold_schema().empty_table()
    >>> prediction_messages(rows)
    []
    """
    import orjson

    rows = rows.select(GOLD_COLUMNS).cast(gold_schema())
    forecasts = rows.column("forecasts").combine_chunks()
    offsets = forecasts.offsets.to_numpy()
    items = forecasts.flatten()
    if offsets[0] != 0:  # a slice: rebase the flattened items on the row offsets
        offsets = offsets - offsets[0]
    encoded = items.field("measure").dictionary_encode()
    names = encoded.dictionary.to_pylist()
    measure = encoded.indices.to_numpy()
    horizon = items.field("horizon_h").to_numpy()
    values = {name: items.field(name).to_numpy() for name in ("yhat", "yhat_lower", "yhat_upper")}
    # Sorted into runs of one measure within a row, horizons ascending (scoring already lists
    # them so; the sort makes the layout a guarantee, not an assumption).
    row_of = np.repeat(np.arange(rows.num_rows), np.diff(offsets))
    order = np.lexsort((horizon, measure, row_of))
    measure, horizon, row_of = measure[order], horizon[order], row_of[order]
    values = {name: column[order] for name, column in values.items()}
    boundary = np.ones(len(measure), dtype=bool)
    boundary[1:] = (measure[1:] != measure[:-1]) | (row_of[1:] != row_of[:-1])
    starts = np.flatnonzero(boundary)
    ends = np.r_[starts[1:], len(measure)]
    if len(measure) and not np.array_equal(
        horizon, np.arange(len(horizon)) - np.repeat(starts, ends - starts) + 1
    ):
        raise ValueError("forecasts must hold horizons 1..H for each measure")
    by_row: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in range(rows.num_rows)]
    runs = zip(
        row_of[starts].tolist(),
        measure[starts].tolist(),
        *(_runs(column, starts) for column in values.values()),
        strict=True,
    )
    for row, code, yhat, lower, upper in runs:
        by_row[row][names[code]] = {"yhat": yhat, "yhat_lower": lower, "yhat_upper": upper}
    scalars = _with_text_times(rows.drop_columns(["forecasts"])).to_pylist()
    option = orjson.OPT_SERIALIZE_NUMPY
    return [
        (row[KEY].encode(), orjson.dumps({**row, "forecasts": measures}, option=option))
        for row, measures in zip(scalars, by_row, strict=True)
    ]


def _with_text_times(rows: pa.Table) -> pa.Table:
    """Timestamp columns as RFC 3339 text ("2026-01-01T06:00:00.000000Z"): Arrow formats them in
    bulk, several times faster than making a datetime object per value."""
    for i, column in enumerate(rows.columns):
        if pa.types.is_timestamp(column.type):
            text = pa.compute.replace_substring(
                column.cast(pa.string()), " ", "T", max_replacements=1
            )
            rows = rows.set_column(i, rows.field(i).name, text)
    return rows


def _runs(values: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """`values` cut at `starts` (views); one reshape when every run has the same length."""
    if len(starts) == 0:
        return []
    lengths = np.diff(np.r_[starts, len(values)])
    if (lengths == lengths[0]).all():
        return list(values.reshape(len(lengths), lengths[0]))
    return np.split(values, starts[1:])


def publish_predictions(settings: Settings, contract: SourceContract, rows: pa.Table) -> int:
    publisher = Publisher(settings, client_id="periscope-score")
    try:
        return publisher.publish(contract.topic("predictions"), prediction_messages(rows))
    finally:
        publisher.close()


# --- the actors ------------------------------------------------------------------------------
def load_model(settings: Settings, source: str, kind: str, version: int) -> Any:
    """One registered model version, loaded into memory."""
    registry = Registry(settings)
    return registry.load(registry.resolve(source, kind, str(version)))  # type: ignore[arg-type]


class ScoringActor:
    """Holds each source's models (loaded once, reloaded when the champion moves) and scores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModels] = {}

    def use(
        self, source: str, wanted: dict[str, int | None], share: tuple[int, int] = (0, 1)
    ) -> dict[str, str]:
        """Hold the `wanted` version of each kind; returns {kind: error} for loads that failed
        (the version held before stays in use). None means no champion: score without it.

        A newly loaded forecast model is warmed for the stations this actor owns (`share` =
        its index and the pool's size), so its first rounds are as fast as the later ones.
        """
        held = self.models.get(source) or LoadedModels(source, None, None, None, None)
        loaded: dict[str, tuple[Any, int | None]] = {
            "forecast": (held.forecast, held.forecast_version),
            "anomaly": (held.anomaly, held.anomaly_version),
        }
        errors: dict[str, str] = {}
        changed = source not in self.models
        for kind, version in wanted.items():
            if loaded[kind][1] == version:
                continue
            try:
                loaded[kind] = (
                    (None, None)
                    if version is None
                    else (load_model(self.settings, source, kind, version), version)
                )
                changed = True
            except Exception as exc:  # keep scoring with the model we have
                errors[kind] = f"{exc.__class__.__name__}: {exc}"
        if changed:
            models = LoadedModels(source, *loaded["forecast"], *loaded["anomaly"])
            index, parts = share
            started = time.perf_counter()
            warmed = models.warm(lambda s: station_owner(s, parts) == index, datetime.now(UTC))
            if warmed:
                log.info(
                    "%s: warmed %d forecast series in %.1f s",
                    source,
                    warmed,
                    time.perf_counter() - started,
                )
            self.models[source] = models
        return errors

    def versions(self, source: str) -> dict[str, int | None]:
        held = self.models.get(source)
        if held is None:
            return {kind: None for kind in MODEL_KINDS}
        return {"forecast": held.forecast_version, "anomaly": held.anomaly_version}

    def score(
        self, source: str, features: pd.DataFrame, hourly: pd.DataFrame, scored_at: datetime
    ) -> pa.Table:
        from ml.gold.scoring import to_arrow

        return to_arrow(score_windows(features, hourly, self.models[source], scored_at=scored_at))

    def ping(self) -> bool:
        return True


class ScoringError(PeriscopeError):
    """A round could not be scored; its windows stay unscored and the next round retries."""


@dataclass
class ScorerPool:
    """`size` Ray actors; a dead actor is replaced, and the models it should hold reloaded."""

    settings: Settings
    size: int
    actors: list[Any] = field(default_factory=list)
    wanted: dict[str, dict[str, int | None]] = field(default_factory=dict)
    # (source, kind, version) loads that failed: logged once, not retried every round.
    failed_loads: set[tuple[str, str, int | None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.actors = [self._new_actor() for _ in range(self.size)]

    def _new_actor(self) -> Any:
        import ray

        runtime_env = worker_runtime_env(niceness=self.settings.score_actor_niceness)
        return (
            ray.remote(ScoringActor)
            .options(max_concurrency=1, runtime_env=runtime_env)
            .remote(self.settings)
        )

    def sync_models(self, source: str, registry: Registry) -> dict[str, int | None]:
        """Point every actor at the current champions of `source`; returns the versions held."""

        wanted: dict[str, int | None] = {
            kind: registry.champion_version(source, kind) for kind in MODEL_KINDS
        }
        wanted = {
            kind: version
            for kind, version in wanted.items()
            if (source, kind, version) not in self.failed_loads
        }
        self.wanted.setdefault(source, {}).update(wanted)
        errors = self._get(
            [
                actor.use.remote(source, self.wanted[source], (i, len(self.actors)))
                for i, actor in enumerate(self.actors)
            ]
        )
        for kind, error in {k: e for found in errors for k, e in found.items()}.items():
            version = self.wanted[source][kind]
            self.failed_loads.add((source, kind, version))
            log.warning(
                "%s version %s could not be loaded (%s); actors keep scoring with the version "
                "they hold",
                model_name(source, kind),
                version,
                error,
            )
        held = self._get([self.actors[0].versions.remote(source)])[0]
        self.wanted[source] = held
        return held

    def score(
        self, source: str, features: pd.DataFrame, hourly: pd.DataFrame, scored_at: datetime
    ) -> pa.Table:
        """Gold rows for `features`, stations spread over the actors; raises ScoringError."""

        parts = split_by_station(features, len(self.actors))
        calls = []
        for actor, part in zip(self.actors, parts, strict=True):
            if part.empty:
                continue
            stations = part[KEY].astype(str).unique()
            history = hourly[hourly[KEY].astype(str).isin(stations)]
            calls.append(actor.score.remote(source, part, history, scored_at))
        tables = self._get(calls)
        if not tables:
            return gold_schema().empty_table()
        return pa.concat_tables(tables)

    def _get(self, calls: list[Any]) -> list[Any]:
        """ray.get, with a dead actor replaced and any failure raised as ScoringError."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(calls)
        except RayActorError as exc:
            self._replace_dead_actors()
            raise ScoringError(f"a scoring actor died ({exc.__class__.__name__})") from exc
        except RayTaskError as exc:
            raise ScoringError(f"scoring failed: {exc.cause!r}") from exc

    def _replace_dead_actors(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        for i, actor in enumerate(self.actors):
            try:
                ray.get(actor.ping.remote(), timeout=30)
            except RayActorError:
                log.warning("scoring actor %d died; starting a replacement", i)
                self.actors[i] = self._new_actor()
                for source, versions in self.wanted.items():
                    ray.get(self.actors[i].use.remote(source, versions, (i, len(self.actors))))

    def kill(self, index: int) -> None:
        """Stop one actor abruptly (what a crashed worker looks like); for failure drills."""
        import ray

        ray.kill(self.actors[index], no_restart=True)


# --- rounds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundReport:
    source: str
    windows: int
    silver_after: int
    silver_through: int
    forecast_version: int | None
    anomaly_version: int | None
    gold_version: int
    published: int
    seconds: float
    scoring_seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where the round's time went

    def phases(self) -> str:
        return ", ".join(f"{name} {s:.1f}" for name, s in self.phase_seconds.items())


def history_for(feed: SilverFeed, features: pd.DataFrame) -> pd.DataFrame:
    """The hourly observations the forecasts of these feature windows start from."""
    spans = history_window(features)
    if len(spans) == 0:
        return pd.DataFrame({KEY: pd.Series(dtype=str), "ds": pd.Series(dtype="datetime64[us]")})
    lake_slice = LakeSlice(
        stations=tuple(spans[KEY]),
        since=pd.Timestamp(spans["since"].min()).to_pydatetime(),
        until=pd.Timestamp(spans["until"].max()).to_pydatetime(),
    )
    return feed.hourly(lake_slice)


def pending_after(feed: SilverFeed) -> int:
    """The silver batch id after which windows are unscored (-1: all of them).

    A silver table rebuilt from scratch restarts its batch ids below gold's mark: then
    everything in it is new to gold and is scored again (MERGE replaces the old rows).
    """
    mark = scored_through(predictions_path(feed.settings, feed.contract))
    if mark is None:
        return -1
    latest = feed.latest_batch()
    if latest is not None and latest < mark:
        log.warning(
            "%s: silver features restart at batch %s below gold's mark %s (rebuilt?); rescoring all",
            feed.contract.name,
            latest,
            mark,
        )
        return -1
    return mark


def score_round(
    pool: ScorerPool,
    registry: Registry,
    feed: SilverFeed,
    *,
    after: int,
    publish: bool = True,
) -> RoundReport | None:
    """Score the next round of unscored windows of one source; None when there are none."""
    settings, contract = feed.settings, feed.contract
    started = time.perf_counter()
    phases: dict[str, float] = {}
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name], mark = now - mark, now

    through = plan_round(feed.batches(after), settings.score_round_rows)
    if through is None:
        return None
    phase("plan")
    features = feed.windows(after, through)
    phase("features")
    hourly = history_for(feed, features)
    phase("history")
    versions = pool.sync_models(contract.name, registry)
    phase("models")
    rows = pool.score(contract.name, features, hourly, datetime.now(UTC))
    phase("score")
    # Published before the commit: a crash in between republishes (at least once), never skips.
    published = publish_predictions(settings, contract, rows) if publish and rows.num_rows else 0
    phase("publish")
    gold_version = write_predictions(predictions_path(settings, contract), rows, through)
    phase("write")
    return RoundReport(
        source=contract.name,
        windows=rows.num_rows,
        silver_after=after,
        silver_through=through,
        forecast_version=versions["forecast"],
        anomaly_version=versions["anomaly"],
        gold_version=gold_version,
        published=published,
        seconds=time.perf_counter() - started,
        scoring_seconds=phases["score"],
        phase_seconds=phases,
    )


@contextmanager
def scoring_pool(settings: Settings, actors: int | None = None) -> Iterator[ScorerPool]:
    """A Ray runtime (the configured cluster or a local one) and a pool of scoring actors."""
    size = actors or settings.score_actors
    with ray_session(settings, workers=size):
        yield ScorerPool(settings, size)


def run_scoring(
    settings: Settings,
    sources: list[str] | list[SourceContract],
    *,
    available_now: bool,
    actors: int | None = None,
    publish: bool = True,
    stop: threading.Event | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    rescore: bool = False,
) -> list[RoundReport]:
    """Score rounds until every source is caught up (`available_now`) or `stop` is set.

    A failed round is logged and retried (its windows stay unscored); with `available_now`,
    the same round failing three times in a row ends the run with ScoringError.
    """
    stop = stop or threading.Event()
    contracts = [s if isinstance(s, SourceContract) else get_contract(s) for s in sources]
    feeds = {contract.name: SilverFeed(settings, contract) for contract in contracts}
    registry = Registry(settings)
    reports: list[RoundReport] = []
    failures = 0
    after: dict[str, int] = {}
    missing: set[str] = set()  # sources whose silver has no features table yet (said once)
    with scoring_pool(settings, actors) as pool:
        while not stop.is_set():
            idle = True
            for contract in contracts:
                feed = feeds[contract.name]
                if not feed.exists():
                    if contract.name not in missing:
                        log.warning(
                            "%s: no silver features table yet; run `periscope silver run` first",
                            contract.name,
                        )
                        missing.add(contract.name)
                    continue
                try:
                    if contract.name not in after:
                        after[contract.name] = -1 if rescore else pending_after(feed)
                    report = score_round(
                        pool,
                        registry,
                        feed,
                        after=after[contract.name],
                        publish=publish,
                    )
                except Exception as exc:  # Kafka, Delta or a model: the round is retried
                    failures += 1
                    log.error("%s: round failed, will retry: %s", contract.name, exc)
                    if available_now and failures >= 3:
                        raise
                    idle = False
                    stop.wait(min(30.0, settings.score_poll_interval_s * 2**failures))
                    continue
                failures = 0
                if report is None:
                    continue
                idle = False
                after[contract.name] = report.silver_through
                log.info(
                    "gold %s: %d windows (silver batches %d..%d) in %.1f s (%s)",
                    contract.name,
                    report.windows,
                    report.silver_after + 1,
                    report.silver_through,
                    report.seconds,
                    report.phases(),
                )
                reports.append(report)
                if on_round is not None:
                    on_round(report)
            if idle:
                if available_now:
                    break
                stop.wait(settings.score_poll_interval_s)
    return reports
