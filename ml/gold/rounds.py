"""Rounds: `periscope score` scores new silver feature windows, one round after another.

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
MERGE the rows into `gold/<source>_predictions` on (key, window_start) (re-scoring a
window replaces its row), then publish them to `<source>-predictions` (at least once).
Before each round the driver looks up the champions; actors that hold another version load
the new one, and keep the one they have when that fails (the failure is logged once).

A source whose contract predicts measures per event (taxi) also gets an event round after
each window round, in the same actor pool: `ml.gold.events` (the speed layer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pandas as pd

from ml.data import LakeSlice, SilverFeed
from ml.gold.actors import ScorerPool, scoring_pool
from ml.gold.events import (
    EVENTS_PER_WINDOW,
    EventFeed,
    EventRoundReport,
    events_pending_after,
    score_event_round,
)
from ml.gold.messages import publish_predictions, scorer_publisher
from ml.gold.plan import plan_round
from ml.gold.scoring import history_window
from ml.gold.table import predictions_path, scored_through, write_predictions
from ml.registry import Registry, model_name
from periscope.contracts import SourceContract, get_contract
from periscope.messages import Publisher
from periscope.metrics import record_gold_round
from periscope.settings import Settings
from periscope.time import counts_by_time

__all__ = ["RoundReport", "history_for", "pending_after", "run_scoring", "score_round"]

log = logging.getLogger(__name__)


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


def history_for(feed: SilverFeed, features: pd.DataFrame, scored_at: datetime) -> pd.DataFrame:
    """The hourly observations the forecasts of these feature windows, scored at `scored_at`,
    start from, of every station (the global forecast model reads its neighbours' hours too)."""
    key = feed.contract.key_field
    spans = history_window(features, key, scored_at)
    if len(spans) == 0:
        return pd.DataFrame({key: pd.Series(dtype=str), "ds": pd.Series(dtype="datetime64[us]")})
    lake_slice = LakeSlice(
        # Every station's: the global forecast model reads its neighbours' hours too.
        stations=None,
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
    publisher: Publisher | None = None,
) -> RoundReport | None:
    """Score the next round of unscored windows of one source, published through `publisher`
    (None: not published); None when there are none."""
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
    scored_at = datetime.now(UTC)
    hourly = history_for(feed, features, scored_at)
    phase("history")
    versions = pool.sync_models(contract.name, registry)
    phase("models")
    rows = pool.score(
        contract.name,
        features,
        hourly,
        scored_at,
        key=contract.key_field,
        zero_when_empty=frozenset(t.name for t in contract.forecast_targets if t.zero_when_empty),
    )
    phase("score")
    # Published before the commit: a crash in between republishes (at least once), never skips.
    published = (
        publish_predictions(publisher, contract, rows)
        if publisher is not None and rows.num_rows
        else 0
    )
    phase("publish")
    gold_version = write_predictions(
        predictions_path(settings, contract), rows, through, key=contract.key_field
    )
    phase("write")
    record_gold_round(
        contract.name,
        kind="window",
        rows_in=len(features),
        rows_out=rows.num_rows,
        seconds=time.perf_counter() - started,
        since=counts_by_time(features.get("processed_at")),
        committed_at=datetime.now(UTC),
        models={kind: (model_name(contract.name, kind), v) for kind, v in versions.items()},
    )
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
    on_event_round: Callable[[EventRoundReport], None] | None = None,
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
    event_feeds = {c.name: EventFeed(settings, c) for c in contracts if c.event_predictions}
    events_after: dict[str, int] = {}
    event_failures = 0
    no_champion: set[str] = set()  # sources without a per-event champion (said once)
    with (
        ExitStack() as stack,
        scorer_publisher(settings) if publish else nullcontext() as publisher,
    ):
        pool = cast(
            ScorerPool, _PoolWhenNeeded(lambda: stack.enter_context(scoring_pool(settings, actors)))
        )
        while not stop.is_set():
            idle = True
            for contract in contracts:
                feed = feeds[contract.name]
                if not _has_features(feed, missing):
                    continue
                try:
                    if contract.name not in after:
                        after[contract.name] = -1 if rescore else pending_after(feed)
                    report = score_round(
                        pool,
                        registry,
                        feed,
                        after=after[contract.name],
                        publisher=publisher,
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
                if report is not None:
                    idle = False
                    after[contract.name] = report.silver_through
                    _log_round(report)
                    reports.append(report)
                    if on_round is not None:
                        on_round(report)
                if not contract.event_predictions:
                    continue
                try:  # the speed layer: its own mark, so a failure here never redoes windows
                    event_feed = event_feeds[contract.name]
                    if contract.name not in events_after:
                        events_after[contract.name] = (
                            -1 if rescore else events_pending_after(event_feed)
                        )
                    event_report = score_event_round(
                        pool,
                        registry,
                        event_feed,
                        after=events_after[contract.name],
                        publisher=publisher,
                        max_rows=settings.score_round_rows * EVENTS_PER_WINDOW,
                        no_champion=no_champion,
                    )
                except Exception as exc:
                    event_failures += 1
                    log.error("%s: event round failed, will retry: %s", contract.name, exc)
                    if available_now and event_failures >= 3:
                        raise
                    idle = False
                    stop.wait(min(30.0, settings.score_poll_interval_s * 2**event_failures))
                    continue
                event_failures = 0
                if event_report is not None:
                    idle = False
                    events_after[contract.name] = event_report.silver_through
                    _log_event_round(event_report)
                    if on_event_round is not None:
                        on_event_round(event_report)
            if idle:
                if available_now:
                    break
                stop.wait(settings.score_poll_interval_s)
    return reports


class _PoolWhenNeeded:
    """The scoring pool, started when a round first has windows or events to score: a scorer
    with nothing new to do (`make demo` run again within the hour) never starts Ray, which
    takes ~7 s on two cores. Stands in for the `ScorerPool` it starts."""

    def __init__(self, start: Callable[[], ScorerPool]) -> None:
        self._start = start
        self._pool: ScorerPool | None = None

    def __getattr__(self, name: str) -> Any:
        if self._pool is None:
            self._pool = self._start()
        return getattr(self._pool, name)


def _has_features(feed: SilverFeed, missing: set[str]) -> bool:
    """Whether the source's silver features table exists; when not, says so once per source."""
    if feed.exists():
        return True
    if feed.contract.name not in missing:
        log.warning(
            "%s: no silver features table yet; run `periscope silver run` first",
            feed.contract.name,
        )
        missing.add(feed.contract.name)
    return False


def _log_event_round(report: EventRoundReport) -> None:
    log.info(
        "gold %s: %d events (silver batches %d..%d) with %s v%d in %.1f s (scoring %.2f s)",
        report.source,
        report.events,
        report.silver_after + 1,
        report.silver_through,
        report.event_model,
        report.event_model_version,
        report.seconds,
        report.scoring_seconds,
    )


def _log_round(report: RoundReport) -> None:
    log.info(
        "gold %s: %d windows (silver batches %d..%d) in %.1f s (%s)",
        report.source,
        report.windows,
        report.silver_after + 1,
        report.silver_through,
        report.seconds,
        report.phases(),
    )
