"""The REST API: `create_app(settings)` builds it; `periscope api` serves it with uvicorn.

Every source appears through its contract (no per-source code). Gold reads come from tables
kept warm in memory (`serving.reads.WarmGold`); accuracy from the marts as the bi role; health
asks Kafka, Postgres, the lake and the model registry. Hot endpoints return JSON bytes made by
orjson: their response models document the shape (and schemathesis checks it) without a second
validation per request.
"""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict

from periscope.contracts import CONTRACTS, SourceContract
from periscope.metrics import consumer_groups
from periscope.settings import Settings, get_settings
from serving import health, lineage, marts, reads
from serving.metrics import BackgroundGroupLag, RequestMetrics

__all__ = ["MAX_ANOMALIES", "MAX_HISTORY", "create_app"]

MAX_ANOMALIES = 1000
MAX_HISTORY = 5000


# --- response models (the OpenAPI schema) ------------------------------------------------------
class _Open(BaseModel):
    # Gold may gain columns (anomaly_kind) and forecast fields (method): they pass through.
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    error: str
    message: str


class MeasureInfo(BaseModel):
    name: str
    unit: str
    valid_min: float | None  # None: unbounded
    valid_max: float | None
    description: str


class SourceInfo(BaseModel):
    name: str
    description: str
    entity_label: str
    key_field: str
    event_time_field: str
    measures: list[MeasureInfo]
    forecast_targets: list[str]
    anomaly_fields: list[str]
    entities: int
    gold_version: int | None
    gold_committed_at: datetime | None


class EntityInfo(BaseModel):
    entity_id: str
    windows: int
    first_window_start: datetime
    last_window_start: datetime
    anomaly_score: float | None
    is_anomaly: bool | None


class Forecast(_Open):
    measure: str
    horizon_h: int
    target_time: datetime
    yhat: float | None
    yhat_lower: float | None  # the 80% band
    yhat_upper: float | None
    method: str | None = None


class Window(_Open):
    entity_id: str
    window_start: datetime
    window_end: datetime
    anomaly_score: float | None = None
    is_anomaly: bool | None = None
    forecast_model: str | None = None
    forecast_version: int | None = None
    anomaly_model: str | None = None
    anomaly_version: int | None = None
    scored_at: datetime | None = None


class HistoryWindow(Window):
    forecasts: list[Forecast] | None = None


class Prediction(Window):
    source: str
    forecasts: list[Forecast]
    window_age_s: float | None
    scored_age_s: float | None


class Anomaly(Window):
    source: str


class AccuracyRow(BaseModel):
    source: str
    measure: str
    unit: str | None
    horizon_h: int
    forecasts: int
    mae: float | None
    rmse: float | None
    bias: float | None
    coverage_80: float | None
    first_target_time: datetime | None
    last_target_time: datetime | None


class Dependency(BaseModel):
    up: bool
    detail: str


class TableFreshness(BaseModel):
    table: str
    version: int
    committed_at: datetime | None
    age_s: float | None


class ModelVersions(BaseModel):
    model: str
    champion: int | None
    scoring: int | None  # the version in the newest gold rows


class Health(BaseModel):
    status: str
    kafka: Dependency
    postgres: Dependency
    lake: list[TableFreshness]
    models: list[ModelVersions]


class LineageReading(_Open):
    # Plus the contract's fields of the reading (its measures, its event id).
    event_time: datetime
    topic: str
    partition: int
    offset: int
    kafka_timestamp: datetime | None
    silver_batch_id: int


class Lineage(BaseModel):
    source: str
    entity_id: str
    window_start: datetime
    window_end: datetime
    gold: dict[str, Any]  # table, version, committed_at, scored_at, anomaly score, methods
    models: dict[str, dict[str, Any]]  # forecast and anomaly: model name and version
    silver: dict[str, Any] | None  # batch_id, features_version, reading_count, the ledger row
    bronze: dict[str, Any]
    observations: list[LineageReading]


# --- errors ------------------------------------------------------------------------------------
class NotFound(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown source or entity."}
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The warehouse cannot be reached."}
}


def _invalid(name: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks that span parameters (start after end)."""
    return RequestValidationError(
        [{"loc": ("query", name), "msg": message, "type": "value_error", "input": None}]
    )


def _json(content: Any, status_code: int = 200) -> Response:
    # The warm index keeps timestamps as naive UTC (see serving.reads): written with +00:00.
    body = orjson.dumps(content, option=orjson.OPT_NAIVE_UTC)
    return Response(body, status_code, media_type="application/json")


SourceName = Annotated[str, Path(description="A source contract's name, e.g. weather.")]
EntityId = Annotated[str, Path(description="An entity under the source's key (a station, a zone).")]


# --- the app -----------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None, *, contracts: Mapping[str, SourceContract] | None = None
) -> FastAPI:
    """The API over the lake at `settings.lake_root`, one warm gold table per contract."""
    settings = settings or get_settings()
    sources = dict(contracts or CONTRACTS)
    gold = {
        name: reads.WarmGold(reads.gold_path(settings, c), c, refresh_s=settings.api_refresh_s)
        for name, c in sources.items()
    }
    registry_champions = health.Champions(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for table in gold.values():  # warm before the first request
            await run_in_threadpool(table.refresh)
        # What start-up made (the app, its models, the first snapshots: ~110k objects) lives as
        # long as the process: full collections, 60-200 ms pauses of every request here on a
        # busy machine, leave it out.
        gc.freeze()
        yield

    app = FastAPI(
        title="Periscope API",
        summary="Predictions, anomalies, accuracy and health of the live lakehouse.",
        version="1",
        lifespan=lifespan,
    )
    registry = CollectorRegistry()
    app.add_middleware(RequestMetrics, registry=registry)
    registry.register(BackgroundGroupLag(settings, consumer_groups(settings).values()))

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": "not_found", "message": exc.message}, 404)

    def contract(source: str) -> SourceContract:
        if source not in sources:
            raise NotFound(
                f"unknown source {source!r}; known sources: {', '.join(sorted(sources))}"
            )
        return sources[source]

    def snapshot(source: str) -> reads.GoldSnapshot:
        contract(source)
        return gold[source].snapshot()

    @app.get("/sources", response_model=list[SourceInfo], tags=["sources"])
    async def list_sources() -> Response:
        """Every source contract: its key, measures, forecast targets and gold table."""
        return _json([_source_info(c, gold[c.name].snapshot()) for c in sources.values()])

    @app.get(
        "/sources/{source}/entities",
        response_model=list[EntityInfo],
        responses=_NOT_FOUND,
        tags=["sources"],
    )
    async def list_entities(source: SourceName) -> Response:
        """The source's entities that have gold windows, with their latest anomaly score."""
        return _json(reads.entities(snapshot(source)))

    async def _prediction(source: str, entity_id: str) -> Response:
        found = reads.latest_prediction_json(snapshot(source), entity_id, datetime.now(UTC))
        if found is None:
            raise NotFound(f"{source} has no predictions for {entity_id!r}")
        return Response(found, media_type="application/json")

    @app.get(
        "/predictions/{source}/{entity_id}",
        response_model=Prediction,
        responses=_NOT_FOUND,
        tags=["predictions"],
    )
    async def latest_prediction(source: SourceName, entity_id: EntityId) -> Response:
        """The entity's newest gold window: anomaly score and flag, forecasts with 80% bands
        (yhat_lower, yhat_upper), model versions, and its age in seconds."""
        return await _prediction(source, entity_id)

    @app.get(
        "/predictions/{station_id}",
        response_model=Prediction,
        responses=_NOT_FOUND,
        tags=["predictions"],
    )
    async def latest_weather_prediction(
        station_id: Annotated[str, Path(description="A weather station, e.g. denver.")],
    ) -> Response:
        """Seed-style alias of /predictions/weather/{station_id}."""
        return await _prediction("weather", station_id)

    @app.get(
        "/predictions/{source}/{entity_id}/history",
        response_model=list[HistoryWindow],
        responses=_NOT_FOUND,
        tags=["predictions"],
    )
    async def prediction_history(
        source: SourceName,
        entity_id: EntityId,
        start: Annotated[
            datetime | None, Query(description="Earliest window_start (ISO 8601; UTC if naive).")
        ] = None,
        end: Annotated[datetime | None, Query(description="Latest window_start.")] = None,
        limit: Annotated[
            int,
            Query(ge=1, description=f"At most this many windows, the newest (cap {MAX_HISTORY})."),
        ] = 168,
        forecasts: Annotated[
            bool, Query(description="Include each window's forecasts (read from the table).")
        ] = False,
    ) -> Response:
        """The entity's windows between start and end, oldest first."""
        if start is not None and end is not None and _utc(start) > _utc(end):
            raise _invalid("start", "start is after end")
        snap = snapshot(source)
        lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)

        def read() -> list[dict[str, Any]] | None:
            return reads.history(
                snap,
                entity_id,
                _utc(start) if start else lowest,
                _utc(end) if end else highest,
                limit=min(limit, MAX_HISTORY),
                read_forecasts=reads.read_forecasts if forecasts else None,
            )

        found = await run_in_threadpool(read) if forecasts else read()
        if found is None:
            raise NotFound(f"{source} has no predictions for {entity_id!r}")
        return _json(found)

    @app.get(
        "/anomalies",
        response_model=list[Anomaly],
        responses=_NOT_FOUND,
        tags=["predictions"],
    )
    async def list_anomalies(
        source: Annotated[str | None, Query(description="One source; default: all.")] = None,
        since: Annotated[
            datetime | None, Query(description="Only windows starting at or after this.")
        ] = None,
        limit: Annotated[
            int, Query(ge=1, description=f"At most this many, newest first (cap {MAX_ANOMALIES}).")
        ] = 100,
    ) -> Response:
        """Windows the anomaly models flagged, newest first."""
        names = [source] if source is not None else list(sources)
        snaps = [snapshot(name) for name in names]
        body = reads.anomalies_json(
            snaps, _utc(since) if since else None, min(limit, MAX_ANOMALIES)
        )
        return Response(body, media_type="application/json")

    @app.get(
        "/lineage/{source}/{entity_id}/{window_start}",
        response_model=Lineage,
        responses=_NOT_FOUND,
        tags=["lineage"],
    )
    async def window_lineage(
        source: SourceName,
        entity_id: EntityId,
        window_start: Annotated[
            datetime, Path(description="The gold row's window_start (ISO 8601; UTC if naive).")
        ],
    ) -> Response:
        """Where one gold row came from: the silver batch (and features version) that wrote its
        window, each reading in it with its bronze (topic, partition, offset), and the model
        versions that scored it. Read from the Delta tables at request time."""
        found = await run_in_threadpool(
            lineage.lineage, settings, contract(source), entity_id, _utc(window_start)
        )
        if found is None:
            raise NotFound(f"{source} has no gold row for {entity_id!r} at {window_start}")
        return _json(found)

    @app.get(
        "/accuracy",
        response_model=list[AccuracyRow],
        responses={**_NOT_FOUND, **_UNAVAILABLE},
        tags=["models"],
    )
    def forecast_accuracy(
        source: Annotated[str | None, Query(description="One source; default: all.")] = None,
        measure: Annotated[
            str | None, Query(description="One forecast series, e.g. temperature.")
        ] = None,
    ) -> Response:
        """Forecast error (MAE, RMSE, bias) and 80% band coverage by source, measure and
        horizon, from marts.fct_forecast_accuracy (Postgres, read-only bi role)."""
        if source is not None:
            names = contract(source).forecast_names
            if measure is not None and measure not in names:
                raise NotFound(f"{source} forecasts {', '.join(names)}, not {measure!r}")
        try:
            rows = marts.accuracy(settings, source=source, measure=measure)
        except marts.WarehouseUnavailable as exc:
            return JSONResponse({"error": "warehouse_unavailable", "message": str(exc)}, 503)
        return _json(rows)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "Kafka or Postgres is down."}},
        tags=["operations"],
    )
    def get_health() -> Response:
        """Kafka, Postgres, each lake table's freshness, and the model versions that score."""
        now = datetime.now(UTC)
        kafka, postgres = health.kafka_status(settings), health.postgres_status(settings)
        scoring = _scoring_versions(gold[name].snapshot() for name in sources)
        champions = registry_champions.get(sorted(scoring))
        body = {
            "status": "ok" if kafka["up"] and postgres["up"] else "degraded",
            "kafka": kafka,
            "postgres": postgres,
            "lake": health.lake_freshness(settings, now),
            "models": [
                {"model": m, "champion": champions[m], "scoring": scoring[m]}
                for m in sorted(scoring)
            ],
        }
        return _json(body, 200 if body["status"] == "ok" else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: periscope_api_requests_total, ..._request_duration_seconds, and
        periscope_consumer_group_lag of the project's Kafka consumer groups (asked in the
        background every few seconds)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _source_info(c: SourceContract, snap: reads.GoldSnapshot) -> dict[str, Any]:
    return {
        "name": c.name,
        "description": c.description,
        "entity_label": c.entity_label,
        "key_field": c.key_field,
        "event_time_field": c.event_time_field,
        "measures": [
            {
                "name": m.name,
                "unit": m.unit,
                "valid_min": _finite(m.valid_min),
                "valid_max": _finite(m.valid_max),
                "description": m.description,
            }
            for m in c.measures
        ],
        "forecast_targets": list(c.forecast_names),
        "anomaly_fields": list(c.anomaly_measures),
        "entities": len(snap.spans),
        "gold_version": snap.version,
        "gold_committed_at": snap.committed_at,
    }


def _scoring_versions(snaps: Any) -> dict[str, int | None]:
    """Each model named in the newest gold rows, with the highest version scoring there."""
    found: dict[str, int | None] = {}
    for snap in snaps:
        for row in snap.latest.values():
            for kind in ("forecast", "anomaly"):
                name, version = row.get(f"{kind}_model"), row.get(f"{kind}_version")
                if name:
                    found[name] = max(v for v in (found.get(name), version, -1) if v is not None)
    return {k: (v if v is not None and v >= 0 else None) for k, v in found.items()}
