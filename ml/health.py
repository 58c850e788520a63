"""Forecast health: the marts' rolling 7-day accuracy per source, the breaches, a Prometheus text.

dbt's `marts.mart_forecast_health` decides the figures and the breach flags (relative MAE above
1.0, interval coverage outside 0.7-0.9: the dbt vars `forecast_health_*`); this module reads it as
the read-only BI role, picks the sources to retrain, and renders the figures as Prometheus gauges
(prometheus_client) for node-exporter's textfile collector or a scrape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from periscope.errors import PeriscopeError
from periscope.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "HEALTH_COLUMNS",
    "ForecastHealth",
    "any_breach",
    "breach_reasons",
    "metrics_path",
    "read_forecast_health",
    "sources_to_retrain",
    "to_prometheus",
    "write_prometheus",
]

# The columns read from marts.mart_forecast_health, in ForecastHealth's field order.
HEALTH_COLUMNS = (
    "source",
    "measure",
    "window_start",
    "window_end",
    "forecasts",
    "forecasts_judged",
    "mae",
    "mae_seasonal_naive",
    "relative_mae",
    "coverage",
    "max_relative_mae",
    "min_coverage",
    "max_coverage",
    "is_relative_mae_breached",
    "is_coverage_breached",
)


@dataclass(frozen=True)
class ForecastHealth:
    """One row of marts.mart_forecast_health: a source's measure, or the source overall (measure None)."""

    source: str
    measure: str | None
    window_start: datetime
    window_end: datetime
    forecasts: int
    forecasts_judged: int
    mae: float | None
    mae_seasonal_naive: float | None
    relative_mae: float | None
    coverage: float | None
    max_relative_mae: float
    min_coverage: float
    max_coverage: float
    is_relative_mae_breached: bool
    is_coverage_breached: bool

    @property
    def is_breached(self) -> bool:
        return self.is_relative_mae_breached or self.is_coverage_breached


def breach_reasons(row: ForecastHealth) -> list[str]:
    """Why a row is breached, in words (empty when it is not).

    >>> from datetime import UTC
    >>> t = datetime(2024, 1, 1, tzinfo=UTC)
    >>> breach_reasons(ForecastHealth("weather", "temperature", t, t, 10, 9, 2.0, 1.0, 2.0, 0.8,
    ...                               1.0, 0.7, 0.9, True, False))
    ['relative MAE 2.00 > 1']
    """
    reasons = []
    if row.is_relative_mae_breached:
        reasons.append(f"relative MAE {row.relative_mae:.2f} > {row.max_relative_mae:g}")
    if row.is_coverage_breached:
        reasons.append(
            f"coverage {row.coverage:.2f} outside {row.min_coverage:g}-{row.max_coverage:g}"
        )
    return reasons


def any_breach(rows: Iterable[ForecastHealth]) -> bool:
    return any(r.is_breached for r in rows)


def sources_to_retrain(
    rows: Iterable[ForecastHealth],
    *,
    sources: Sequence[str] | None = None,
    last_retrained: Mapping[str, datetime] | None = None,
    now: datetime | None = None,
    cooldown: timedelta = timedelta(hours=24),
) -> list[str]:
    """The sources with a breached row, in order, among `sources` (default: all).

    A source retrained less than `cooldown` before `now` is left alone: the marts judge the last
    7 days, so a new champion's better forecasts take days to lift the figures, and retraining
    every hour meanwhile would only burn the machine.
    """
    breached = sorted({r.source for r in rows if r.is_breached})
    chosen = [s for s in breached if sources is None or s in sources]
    if last_retrained and now is not None:
        chosen = [
            s for s in chosen if s not in last_retrained or now - last_retrained[s] >= cooldown
        ]
    return chosen


def read_forecast_health(
    settings: Settings, *, sources: Sequence[str] | None = None
) -> list[ForecastHealth]:
    """marts.mart_forecast_health as the read-only BI role, sources in order, overall row first."""
    import psycopg2
    from psycopg2 import errors

    query = (
        f"select {', '.join(HEALTH_COLUMNS)} from marts.mart_forecast_health "
        "where %(sources)s::text[] is null or source = any(%(sources)s::text[]) "
        "order by source, measure nulls first"
    )
    try:
        with psycopg2.connect(settings.postgres_dsn("bi")) as conn, conn.cursor() as cur:
            cur.execute(query, {"sources": list(sources) if sources else None})
            rows = cur.fetchall()
    except errors.UndefinedTable:
        raise PeriscopeError(
            "marts.mart_forecast_health does not exist yet: run `periscope dbt build`"
        ) from None
    except psycopg2.OperationalError as exc:
        raise PeriscopeError(f"cannot reach the warehouse: {str(exc).strip()}") from None
    return [ForecastHealth(*row) for row in rows]


# --- Prometheus gauges -----------------------------------------------------------------------
_GAUGES: tuple[tuple[str, str, Callable[[ForecastHealth], float | None]], ...] = (
    (
        "periscope_forecast_relative_mae",
        "Rolling 7-day MAE of the forecasts over seasonal-naive's (above 1 loses to the baseline).",
        lambda r: r.relative_mae,
    ),
    (
        "periscope_forecast_interval_coverage",
        "Rolling 7-day share of actuals inside the 80% forecast interval.",
        lambda r: r.coverage,
    ),
    (
        "periscope_forecast_mae",
        "Rolling 7-day MAE of the forecasts, in the measure's unit.",
        lambda r: r.mae,
    ),
    (
        "periscope_forecast_seasonal_naive_mae",
        "Rolling 7-day MAE of the same hour yesterday as the forecast, in the measure's unit.",
        lambda r: r.mae_seasonal_naive,
    ),
    (
        "periscope_forecast_health_forecasts",
        "Forecasts whose target hour falls in the last 7 days of the source's data.",
        lambda r: r.forecasts,
    ),
    (
        "periscope_forecast_health_breached",
        "1 when the relative MAE or the coverage is outside its bounds.",
        lambda r: int(r.is_breached),
    ),
    (
        "periscope_forecast_health_window_end_timestamp_seconds",
        "The latest target hour judged (Unix time): how fresh the figures are.",
        lambda r: r.window_end.timestamp(),
    ),
)

_BOUNDS: tuple[tuple[str, str, Callable[[ForecastHealth], float]], ...] = (
    (
        "periscope_forecast_relative_mae_max",
        "Relative MAE above which a source is breached.",
        lambda r: r.max_relative_mae,
    ),
    (
        "periscope_forecast_interval_coverage_min",
        "Coverage below which a source is breached.",
        lambda r: r.min_coverage,
    ),
    (
        "periscope_forecast_interval_coverage_max",
        "Coverage above which a source is breached.",
        lambda r: r.max_coverage,
    ),
)


def _registry(rows: Sequence[ForecastHealth]) -> CollectorRegistry:
    """The rows as gauges labelled by source and measure ("all" for the overall row); a figure
    the mart leaves empty is NaN. A registry of its own: nothing else of the process leaks in."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    for name, help_text, value in _GAUGES:
        gauge = Gauge(name, help_text, ["source", "measure"], registry=registry)
        for r in rows:
            figure = value(r)
            gauge.labels(r.source, r.measure or "all").set(math.nan if figure is None else figure)
    for name, help_text, bound in _BOUNDS:
        gauge = Gauge(name, help_text, ["source"], registry=registry)
        for r in rows:
            gauge.labels(r.source).set(bound(r))
    return registry


def to_prometheus(rows: Sequence[ForecastHealth]) -> str:
    """The rows in Prometheus' text exposition format.

    >>> from datetime import UTC
    >>> t = datetime(2024, 1, 1, tzinfo=UTC)
    >>> text = to_prometheus([ForecastHealth("weather", None, t, t, 10, 9, None, None, 1.25,
    ...                                      0.8, 1.0, 0.7, 0.9, True, False)])
    >>> print(text.splitlines()[2])
    periscope_forecast_relative_mae{measure="all",source="weather"} 1.25
    """
    from prometheus_client import generate_latest

    return generate_latest(_registry(rows)).decode()


def metrics_path(settings: Settings) -> Path:
    """Where the health check leaves its gauges for a textfile collector."""
    return settings.local_dir / "metrics" / "forecast_health.prom"


def write_prometheus(rows: Sequence[ForecastHealth], path: Path) -> Path:
    """Write the gauges to `path` for a textfile collector, atomically (prometheus_client writes
    a temporary file and renames it): a collector never reads half a file."""
    from prometheus_client import write_to_textfile

    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), _registry(rows))
    return path
