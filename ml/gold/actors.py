"""The Ray actor pool that scores: each actor holds the champion models and scores its stations."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.gold.events import event_rows, event_schema, predict_events
from ml.gold.plan import entity_owner, split_by_entity
from ml.gold.scoring import ForecastMemo, LoadedModels, score_windows, to_arrow
from ml.gold.table import gold_schema
from ml.ray_session import ray_session, worker_runtime_env
from ml.registry import MODEL_KINDS, Registry, model_name
from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.settings import Settings

__all__ = ["ScorerPool", "ScoringActor", "ScoringError", "load_model", "scoring_pool"]

log = logging.getLogger(__name__)


def load_model(settings: Settings, source: str, kind: str, version: int) -> Any:
    """One registered model version, loaded into memory."""
    registry = Registry(settings)
    return registry.load(registry.resolve(source, kind, str(version)))  # type: ignore[arg-type]


class ScoringActor:
    """Holds each source's models (loaded once, reloaded when the champion moves) and scores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModels] = {}
        # Per-event models (the speed layer): source -> (model, version, registered name).
        self.event_models: dict[str, tuple[Any, int, str]] = {}

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
            warmed = models.warm(lambda s: entity_owner(s, parts) == index, datetime.now(UTC))
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
        self,
        source: str,
        features: pd.DataFrame,
        hourly: pd.DataFrame,
        scored_at: datetime,
        key: str,
        zero_when_empty: frozenset[str] = frozenset(),
    ) -> pa.Table:
        models = self.models[source]
        rows = score_windows(
            features, hourly, models, scored_at=scored_at, key=key, zero_when_empty=zero_when_empty
        )
        return to_arrow(rows, key)

    def forget_forecasts(self, source: str) -> None:
        """Empty the source's forecast memo (a benchmark timing forecasts made afresh)."""
        if source in self.models:
            self.models[source] = dataclasses.replace(self.models[source], memo=ForecastMemo())

    def use_event(self, source: str, kind: str, version: int | None) -> str | None:
        """Hold `version` of the source's per-event model; returns the load error, if any
        (the version held before stays in use). None drops it."""
        held = self.event_models.get(source)
        if (held[1] if held else None) == version:
            return None
        if version is None:
            self.event_models.pop(source, None)
            return None
        try:
            model = load_model(self.settings, source, kind, version)
            self.event_models[source] = (model, version, model_name(source, kind))
        except Exception as exc:  # keep scoring with the model we have
            return f"{exc.__class__.__name__}: {exc}"
        return None

    def event_version(self, source: str) -> int | None:
        held = self.event_models.get(source)
        return held[1] if held else None

    def score_events(
        self, contract: SourceContract, events: pd.DataFrame, scored_at: datetime
    ) -> pa.Table:
        model, version, name = self.event_models[contract.name]
        predicted = predict_events(model, events, contract.event_predictions)
        return event_rows(
            events, predicted, contract, model=name, version=version, scored_at=scored_at
        )

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
    # source -> (kind, version) of the per-event model the actors hold.
    wanted_events: dict[str, tuple[str, int | None]] = field(default_factory=dict)

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
        self,
        source: str,
        features: pd.DataFrame,
        hourly: pd.DataFrame,
        scored_at: datetime,
        *,
        key: str,
        zero_when_empty: frozenset[str] = frozenset(),
    ) -> pa.Table:
        """Gold rows for `features`, entities (column `key`) spread over the actors; raises
        ScoringError. `zero_when_empty`: the forecast targets that are 0 in an hour without
        rows (from the caller's contract: a source registered at run time is unknown to the
        actors' processes)."""
        import ray

        parts = split_by_entity(features, len(self.actors), key)
        # Every actor gets every entity's history: the global forecast model reads other
        # stations' recent hours (its neighbours), whichever actor scores them.
        history = ray.put(hourly)  # stored once, not once per actor
        calls = []
        for actor, part in zip(self.actors, parts, strict=True):
            if part.empty:
                continue
            calls.append(actor.score.remote(source, part, history, scored_at, key, zero_when_empty))
        tables = self._get(calls)
        if not tables:
            return gold_schema(key).empty_table()
        return pa.concat_tables(tables)

    def forget_forecasts(self, source: str) -> None:
        """Every actor forgets the forecasts it served for `source` (see ForecastMemo)."""
        self._get([actor.forget_forecasts.remote(source) for actor in self.actors])

    def sync_event_model(self, source: str, kind: str, registry: Registry) -> int | None:
        """Point every actor at the champion per-event model of `source`; returns the version
        held (None: no champion, or none could be loaded yet)."""
        version = registry.champion_version(source, kind)  # type: ignore[arg-type]
        if (source, kind, version) in self.failed_loads:
            version = self.wanted_events.get(source, (kind, None))[1]
        errors = self._get([actor.use_event.remote(source, kind, version) for actor in self.actors])
        for error in {e for e in errors if e is not None}:
            self.failed_loads.add((source, kind, version))
            log.warning(
                "%s version %s could not be loaded (%s); actors keep the version they hold",
                model_name(source, kind),
                version,
                error,
            )
        held: int | None = self._get([self.actors[0].event_version.remote(source)])[0]
        self.wanted_events[source] = (kind, held)
        return held

    def score_events(
        self, contract: SourceContract, events: pd.DataFrame, scored_at: datetime
    ) -> pa.Table:
        """Gold event rows for `events`, in equal slices over the actors (any actor can score
        any event); raises ScoringError."""
        slices = np.array_split(np.arange(len(events)), len(self.actors))
        calls = [
            actor.score_events.remote(contract, events.iloc[rows], scored_at)
            for actor, rows in zip(self.actors, slices, strict=True)
            if len(rows)
        ]
        tables = self._get(calls)
        if not tables:
            return event_schema(contract).empty_table()
        return pa.concat_tables(tables)

    def _get(self, calls: list[Any]) -> list[Any]:
        """ray.get, with a dead actor replaced and any failure raised as ScoringError."""
        import ray
        from ray.exceptions import RayTaskError

        try:
            return ray.get(calls)
        except _actor_gone_errors() as exc:
            self._replace_dead_actors()
            raise ScoringError(f"a scoring actor died ({exc.__class__.__name__})") from exc
        except RayTaskError as exc:
            raise ScoringError(f"scoring failed: {exc.cause!r}") from exc

    def _replace_dead_actors(self) -> None:
        import ray

        for i, actor in enumerate(self.actors):
            try:
                ray.get(actor.ping.remote(), timeout=30)
            except _actor_gone_errors():
                log.warning("scoring actor %d died; starting a replacement", i)
                self.actors[i] = self._new_actor()
                for source, versions in self.wanted.items():
                    ray.get(self.actors[i].use.remote(source, versions, (i, len(self.actors))))
                for source, (kind, version) in self.wanted_events.items():
                    ray.get(self.actors[i].use_event.remote(source, kind, version))

    def kill(self, index: int) -> None:
        """Stop one actor abruptly (what a crashed worker looks like); for failure drills."""
        import ray

        ray.kill(self.actors[index], no_restart=True)

    def close(self) -> None:
        """Stop every actor: on a Ray runtime that outlives the run (a cluster, a shared session)
        their workers and the models they hold would otherwise stay until Ray collects them."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def _actor_gone_errors() -> tuple[type[BaseException], ...]:
    """What a call to a dead actor raises. An actor whose worker Ray's memory monitor killed
    answers every later call with OutOfMemoryError, not RayActorError: without it here the pool
    kept calling its dead actors and gold stalled for good (the soak bench, 2026-11-30)."""
    from ray.exceptions import OutOfMemoryError, RayActorError

    return (RayActorError, OutOfMemoryError)


@contextmanager
def scoring_pool(settings: Settings, actors: int | None = None) -> Iterator[ScorerPool]:
    """A Ray runtime (the configured cluster or a local one) and a pool of scoring actors."""
    size = actors or settings.score_actors
    with ray_session(settings, workers=size):
        pool = ScorerPool(settings, size)
        try:
            yield pool
        finally:
            pool.close()
