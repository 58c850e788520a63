{#- The forecast models' SQL, in one place: the views (int_forecasts_unioned,
    int_forecasts_joined_to_actuals) use it over every forecast, and the incremental facts
    (fct_forecast, fct_forecast_accuracy) over the forecasts of the windows that changed since
    their last run, so a rerun reads thousands of forecasts rather than millions. -#}

{#- Every source's forecast rows (the staging models, unioned). -#}
{% macro forecast_rows() -%}
{{ union_sources('forecasts') }}
{%- endmacro %}

{#- `forecasts` (a relation of forecast rows) with the origin and model of the prediction
    each belongs to. -#}
{% macro forecasts_with_predictions(forecasts) -%}
select
    f.source,
    f.entity_id,
    f.window_start,
    f.measure,
    f.horizon_h,
    f.target_time,
    f.yhat,
    f.yhat_lower,
    f.yhat_upper,
    f.method,
    p.forecast_origin,
    p.forecast_model,
    p.forecast_version,
    -- A re-scored window changes its prediction row even when a forecast's values stay the
    -- same: the facts then redo all of the window's forecasts (and drop the ones it lost).
    greatest(f.loaded_at, p.loaded_at) as loaded_at
from {{ forecasts }} as f
inner join {{ ref('int_predictions_unioned') }} as p
    on f.source = p.source
    and f.entity_id = p.entity_id
    and f.window_start = p.window_start
{%- endmacro %}

{#- The forecast series: a contract's forecast target (periscope_fields), the hourly mean,
    sum or count of one field's readings, or the hourly count of events (no field). Their
    actuals: that aggregate of each hour. -#}
{% macro forecast_series() -%}
select
    source,
    name as measure,
    field,
    aggregate
from {{ ref('periscope_fields') }}
where is_forecast_target
{%- endmacro %}

{#- `from_hour` (a SQL expression, optional): only the hours from then on, filtered before the
    hours are aggregated. -#}
{% macro forecast_actuals(from_hour=none) -%}
with series as (
    {{ forecast_series() }}
)

select
    o.source,
    o.entity_id,
    s.measure,
    o.observed_hour,
    case s.aggregate
        when 'sum' then o.value_sum
        when 'count' then o.reading_count::double precision
        else o.value_mean
    end as actual,
    o.loaded_at
from {{ ref('int_observations_averaged_hourly') }} as o
inner join series as s
    on o.source = s.source
    and o.measure = s.field
{%- if from_hour is not none %}
where o.observed_hour >= {{ from_hour }}
{%- endif %}
union all
select
    e.source,
    e.entity_id,
    s.measure,
    e.observed_hour,
    e.event_count::double precision as actual,
    e.loaded_at
from {{ ref('int_events_counted_hourly') }} as e
inner join series as s
    on e.source = s.source
    and s.field is null
    and s.aggregate = 'count'
{%- if from_hour is not none %}
where e.observed_hour >= {{ from_hour }}
{%- endif %}
{%- endmacro %}

{#- `forecasts` (forecasts with their predictions) beside the actual of their target hour,
    once it has arrived, with the errors; `from_hour` as for forecast_actuals (no forecast of
    `forecasts` may target an earlier hour). -#}
{% macro forecasts_joined_to_actuals(forecasts, from_hour=none) -%}
select
    f.source,
    f.entity_id,
    f.window_start,
    f.measure,
    f.horizon_h,
    f.forecast_origin,
    f.target_time,
    f.forecast_model,
    f.forecast_version,
    f.yhat,
    f.yhat_lower,
    f.yhat_upper,
    f.method,
    a.actual,
    f.yhat - a.actual as error,
    abs(f.yhat - a.actual) as abs_error,
    (f.yhat - a.actual) ^ 2 as squared_error,
    -- Percentage errors explode near zero (temperatures cross 0 °C): only where |actual| >= 1.
    case
        when abs(a.actual) >= 1 then abs(f.yhat - a.actual) / abs(a.actual)
    end as abs_pct_error,
    a.actual between f.yhat_lower and f.yhat_upper as in_interval,
    greatest(f.loaded_at, a.loaded_at) as loaded_at
from {{ forecasts }} as f
inner join ({{ forecast_actuals(from_hour) }}) as a
    on f.source = a.source
    and f.entity_id = a.entity_id
    and f.measure = a.measure
    and f.target_time = a.observed_hour
{%- endmacro %}

{#- The windows (source, entity_id, window_start) loaded after `since` (a SQL expression):
    new windows, and re-scored ones. The prediction rows say it for their forecasts too: a
    window's forecasts change only when it is scored again, which gives its prediction row a
    new `scored_at`, and the loader writes both in one transaction. -#}
{% macro forecast_windows_loaded_since(since) -%}
select source, entity_id, window_start
from {{ ref('int_predictions_unioned') }}
where loaded_at > {{ since }}
{%- endmacro %}

{#- The (source, entity_id, measure, observed_hour) of every series hour with a reading or
    event loaded after `since`: the hours whose actual may have changed. Reads only the rows
    loaded since, not the hourly aggregates of everything. -#}
{% macro actual_hours_loaded_since(since) -%}
with series as (
    {{ forecast_series() }}
)

select o.source, o.entity_id, s.measure, {{ utc_hour('o.observed_at') }} as observed_hour
from {{ ref('int_observations_unioned') }} as o
inner join series as s
    on o.source = s.source
    and o.measure = s.field
where o.loaded_at > {{ since }}
union
select e.source, e.entity_id, s.measure, {{ utc_hour('e.observed_at') }} as observed_hour
from ({{ union_sources('events') }}) as e
inner join series as s
    on e.source = s.source
    and s.field is null
    and s.aggregate = 'count'
where e.loaded_at > {{ since }}
{%- endmacro %}

{#- Indexes an incremental forecast fact needs on every run: the last run's `loaded_at`, and
    the windows its delete+insert replaces (created once, kept up to date by Postgres). -#}
{% macro forecast_fact_indexes() -%}
{{ fact_indexes('forecast_key') }};
create index if not exists {{ this.identifier }}_window on {{ this }} (entity_key, window_start)
{%- endmacro %}

{#- The forecast rows of the windows in `windows` (a relation of source, entity_id,
    window_start). -#}
{% macro forecast_rows_of(windows) -%}
select f.*
from ({{ forecast_rows() }}) as f
inner join {{ windows }} as w
    on f.source = w.source
    and f.entity_id = w.entity_id
    and f.window_start = w.window_start
{%- endmacro %}

{#- `-- depends_on:` lines for what the macros above read, so dbt orders a model that uses
    them only in its incremental branch after those models. -#}
{% macro forecast_dependencies() -%}
-- depends_on: {{ ref('int_predictions_unioned') }}
-- depends_on: {{ ref('periscope_fields') }}
-- depends_on: {{ ref('int_observations_averaged_hourly') }}
-- depends_on: {{ ref('int_events_counted_hourly') }}
-- depends_on: {{ ref('int_observations_unioned') }}
{%- for source_name in periscope_contracts() %}
-- depends_on: {{ ref('stg_' ~ source_name ~ '__forecasts') }}
-- depends_on: {{ ref('stg_' ~ source_name ~ '__events') }}
{%- endfor %}
{%- endmacro %}
