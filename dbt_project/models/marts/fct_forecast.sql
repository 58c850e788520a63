-- One row per forecast: entity, window (its origin), measure and horizon. Incremental: a window
-- loaded after the last run (new, or re-scored) replaces all of that window's forecasts. The
-- changed windows are found first and only their forecasts read (macros/forecasts.sql): the
-- view over every forecast, filtered afterwards, read them all on every run.
{{ config(
    materialized='incremental',
    unique_key=['entity_key', 'window_start'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ forecast_fact_indexes() }}",
) }}
{{ forecast_dependencies() }}

{% if is_incremental() -%}
with changed as materialized (
    {{ forecast_windows_loaded_since(
        "(select coalesce(max(loaded_at), '-infinity') from " ~ this ~ ")"
    ) }}
),

changed_rows as (
    {{ forecast_rows_of('changed') }}
),

forecasts as (
    {{ forecasts_with_predictions('changed_rows') }}
)
{%- else -%}
with forecasts as (
    select * from {{ ref('int_forecasts_unioned') }}
)
{%- endif %}

select
    {{ surrogate_key(['source', 'entity_id', epoch('window_start'), 'measure', 'horizon_h']) }} as forecast_key,
    {{ surrogate_key(['source', 'entity_id']) }} as entity_key,
    {{ surrogate_key(['source', 'measure']) }} as measure_key,
    {{ surrogate_key(['forecast_model', 'forecast_version']) }} as model_key,
    {{ date_key('target_time') }} as target_date_key,
    {{ hour_key('target_time') }} as target_hour_key,
    source,
    window_start,
    forecast_origin,
    target_time,
    horizon_h,
    yhat,
    yhat_lower,
    yhat_upper,
    method,
    loaded_at
from forecasts
