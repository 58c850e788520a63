"""What the Tableau workbook shows: the data sources (stars: a fact and the dimensions joined to
it), the sheets on them and the dashboards that group the sheets, as plain data.

`warehouse.bi.tableau_workbook` turns this into XML. A sheet names fields as the data source
does: a column by its name (a dimension's column that the fact also has is "name (table)"),
a calculation by its name. The dashboards mirror Superset's (Forecast accuracy, Anomalies,
Observations, Taxi demand).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DASHBOARDS",
    "SHEETS",
    "STARS",
    "Calculation",
    "Connection",
    "Dashboard",
    "Join",
    "Sheet",
    "Star",
    "Use",
    "tables_of",
]


@dataclass(frozen=True)
class Connection:
    """Where Tableau connects: the warehouse as the read-only BI role (no password)."""

    host: str
    port: int
    database: str
    user: str


@dataclass(frozen=True)
class Join:
    """LEFT JOIN `table` on fact.`fact_column` = table.`column`."""

    table: str
    fact_column: str
    column: str


@dataclass(frozen=True)
class Calculation:
    """A calculated field (an aggregate, so sheets use it as it is)."""

    name: str
    caption: str
    formula: str


@dataclass(frozen=True)
class Star:
    """One Tableau data source: a fact and the dimensions joined to it."""

    name: str
    caption: str
    fact: str
    joins: tuple[Join, ...] = ()
    calculations: tuple[Calculation, ...] = ()

    @property
    def datasource(self) -> str:
        return f"federated.{self.name}"

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.fact, *(j.table for j in self.joins))


@dataclass(frozen=True)
class Use:
    """A field on a shelf: its name in the data source and Tableau's derivation
    (None, Avg, Max, Sum, Hour-Trunc, Day-Trunc for a column; User for a calculation)."""

    field: str
    derivation: str = "None"
    discrete: bool = True


@dataclass(frozen=True)
class Sheet:
    """A worksheet: shelves, a mark type, optional colour, a sort and filters."""

    name: str
    star: str
    cols: tuple[Use, ...]
    rows: tuple[Use, ...]
    mark: str = "Automatic"
    color: Use | None = None
    sort_desc_by: tuple[Use, Use] | None = None  # (sorted field, by this aggregate)
    only_true: str | None = None  # keep the rows where this boolean column is true
    top: tuple[Use, int, str] | None = None  # keep the top n of a field by a formula


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: its sheets stacked, named as the Superset dashboard it mirrors."""

    name: str
    slug: str
    sheets: tuple[str, ...] = field(default_factory=tuple)


_ENTITY = Join("dim_entity", "entity_key", "entity_key")
_MEASURE = Join("dim_measure", "measure_key", "measure_key")

STARS: tuple[Star, ...] = (
    Star(
        "forecast_accuracy",
        "Forecast accuracy (marts)",
        "fct_forecast_accuracy",
        (_MEASURE, _ENTITY),
        (
            Calculation("mae", "MAE", "AVG([abs_error])"),
            # The share of actuals inside the forecast's 80% interval.
            Calculation(
                "interval_coverage", "80% interval coverage", "AVG(IIF([in_interval], 1, 0))"
            ),
        ),
    ),
    Star(
        "anomalies",
        "Anomalies (marts)",
        "fct_anomaly",
        (_ENTITY, Join("dim_model", "model_key", "model_key")),
        (Calculation("anomaly_count", "Anomalies", "SUM(IIF([is_anomaly], 1, 0))"),),
    ),
    Star("observations", "Observations (marts)", "fct_observation_hourly", (_MEASURE, _ENTITY)),
    Star(
        "taxi_demand",
        "Taxi demand (marts)",
        "fct_trip",
        (Join("dim_zone", "pickup_zone_key", "zone_key"),),
        (Calculation("trip_count", "Trips", "COUNT([trip_id])"),),
    ),
)

_HOUR = "Hour-Trunc"
SHEETS: tuple[Sheet, ...] = (
    Sheet(
        "MAE by measure and horizon",
        "forecast_accuracy",
        cols=(Use("horizon_h"),),
        rows=(Use("source"), Use("measure"), Use("mae", "User", False)),
        mark="Bar",
    ),
    Sheet(
        "Interval coverage by measure and horizon",
        "forecast_accuracy",
        cols=(Use("horizon_h"),),
        rows=(Use("source"), Use("measure"), Use("interval_coverage", "User", False)),
        mark="Bar",
    ),
    Sheet(
        "MAE over time",
        "forecast_accuracy",
        cols=(Use("target_time", "Day-Trunc", False),),
        rows=(Use("measure"), Use("mae", "User", False)),
        mark="Line",
        color=Use("horizon_h"),
    ),
    Sheet(
        "Interval coverage over time",
        "forecast_accuracy",
        cols=(Use("target_time", "Day-Trunc", False),),
        rows=(Use("measure"), Use("interval_coverage", "User", False)),
        mark="Line",
        color=Use("horizon_h"),
    ),
    Sheet(
        "Anomaly timeline",
        "anomalies",
        cols=(Use("window_start", _HOUR, False),),
        rows=(Use("anomaly_count", "User", False),),
        mark="Bar",
        color=Use("entity_id"),
    ),
    Sheet(
        "Top anomalous windows",
        "anomalies",
        cols=(Use("anomaly_score", "Max", False),),
        rows=(Use("entity_id"), Use("window_start"), Use("anomaly_kind"), Use("model_name")),
        mark="Bar",
        sort_desc_by=(Use("window_start"), Use("anomaly_score", "Max", False)),
        only_true="is_anomaly",
        top=(Use("window_start"), 20, "MAX([anomaly_score])"),
    ),
    Sheet(
        "Anomalies by entity",
        "anomalies",
        cols=(Use("anomaly_count", "User", False),),
        rows=(Use("source"), Use("entity_id")),
        mark="Bar",
        color=Use("anomaly_kind"),
    ),
    Sheet(
        "Hourly series per entity",
        "observations",
        cols=(Use("observed_hour", _HOUR, False),),
        rows=(Use("measure"), Use("value_mean", "Avg", False)),
        mark="Line",
        color=Use("entity_id"),
    ),
    Sheet(
        "Where the entities are",
        "observations",
        cols=(Use("longitude", "Avg", False),),
        rows=(Use("latitude", "Avg", False),),
        mark="Circle",
        color=Use("entity_id"),
    ),
    Sheet(
        "Trips per zone and hour",
        "taxi_demand",
        cols=(Use("pickup_time", _HOUR),),
        rows=(Use("borough"), Use("zone_name")),
        mark="Square",
        color=Use("trip_count", "User", False),
    ),
    Sheet(
        "Trips per hour",
        "taxi_demand",
        cols=(Use("pickup_time", _HOUR, False),),
        rows=(Use("trip_count", "User", False),),
        mark="Line",
        color=Use("borough"),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "Forecast accuracy",
        "forecast-accuracy",
        (
            "MAE by measure and horizon",
            "Interval coverage by measure and horizon",
            "MAE over time",
            "Interval coverage over time",
        ),
    ),
    Dashboard(
        "Anomalies",
        "anomalies",
        ("Anomaly timeline", "Top anomalous windows", "Anomalies by entity"),
    ),
    Dashboard(
        "Observations", "observations", ("Hourly series per entity", "Where the entities are")
    ),
    Dashboard("Taxi demand", "taxi-demand", ("Trips per zone and hour", "Trips per hour")),
)


def tables_of(stars: Iterable[Star]) -> list[str]:
    """Every mart the stars read, each once, in order."""
    return list(dict.fromkeys(t for star in stars for t in star.tables))
