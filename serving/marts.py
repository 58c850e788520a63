"""Reads of the warehouse marts for the API, as the read-only bi role (what BI tools see).

Why Postgres here and not the lake: forecast accuracy needs each forecast joined to the hour it
predicted, which dbt has already done incrementally in `marts.fct_forecast_accuracy`.
Values are bound parameters (psycopg2), never SQL built from strings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from periscope.settings import Settings

__all__ = ["ACCURACY_SQL", "WarehouseUnavailable", "accuracy"]

# One row per source, measure and horizon: how far forecasts were off and how often the
# observed value fell inside the 80% band.
ACCURACY_SQL = """
select a.source, m.measure, m.unit, a.horizon_h,
       count(*) as forecasts,
       avg(a.abs_error) as mae,
       sqrt(avg(a.squared_error)) as rmse,
       avg(a.error) as bias,
       avg(a.in_interval::int) as coverage_80,
       min(a.target_time) as first_target_time,
       max(a.target_time) as last_target_time
from marts.fct_forecast_accuracy as a
inner join marts.dim_measure as m on a.measure_key = m.measure_key
where (%(source)s::text is null or a.source = %(source)s)
  and (%(measure)s::text is null or m.measure = %(measure)s)
group by a.source, m.measure, m.unit, a.horizon_h
order by a.source, m.measure, a.horizon_h
"""


class WarehouseUnavailable(RuntimeError):
    """Postgres cannot be reached, or the marts are not built yet."""


def accuracy(
    settings: Settings, *, source: str | None, measure: str | None
) -> list[dict[str, Any]]:
    """Forecast error and 80% coverage by source, measure and horizon."""
    import psycopg2

    try:
        with (
            psycopg2.connect(settings.postgres_dsn("bi"), connect_timeout=3) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(ACCURACY_SQL, {"source": source, "measure": measure})
            names = [d.name for d in cur.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        conn.close()
    except psycopg2.Error as exc:
        raise WarehouseUnavailable(str(exc).strip().splitlines()[0]) from None
    # numeric averages come back as Decimal: JSON wants numbers
    return [{k: float(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows]
