-- One row per forecast whose target hour has been observed: error by entity, measure and
-- horizon. Incremental: a window is redone (delete+insert of all its rows) when one of its
-- forecasts or the actual hour of one is loaded after the last run, so a re-scored window
-- leaves no stale rows behind.
-- The planner underestimates the forecasts x actuals join by three orders of magnitude (the
-- union over sources hides the row counts) and picks a nested loop: minutes on the demo's
-- 400k forecasts instead of seconds. Hash and merge joins only, for this model's transaction.
{{ config(
    materialized='incremental',
    unique_key=['entity_key', 'window_start'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    pre_hook="set local enable_nestloop = off",
) }}

-- Materialized once: the planner would otherwise re-run the join per changed window.
with joined as materialized (
    select * from {{ ref('int_forecasts_joined_to_actuals') }}
)
{%- if is_incremental() %},

changed as (
    select distinct source, entity_id, window_start
    from joined
    where loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
)
{%- endif %}

select
    {{ surrogate_key(['j.source', 'j.entity_id', epoch('j.window_start'), 'j.measure', 'j.horizon_h']) }} as forecast_key,
    {{ surrogate_key(['j.source', 'j.entity_id']) }} as entity_key,
    {{ surrogate_key(['j.source', 'j.measure']) }} as measure_key,
    {{ surrogate_key(['j.forecast_model', 'j.forecast_version']) }} as model_key,
    {{ date_key('j.target_time') }} as target_date_key,
    {{ hour_key('j.target_time') }} as target_hour_key,
    j.source,
    j.window_start,
    j.forecast_origin,
    j.target_time,
    j.horizon_h,
    j.yhat,
    j.yhat_lower,
    j.yhat_upper,
    j.method,
    j.actual,
    j.error,
    j.abs_error,
    j.squared_error,
    j.abs_pct_error,
    j.in_interval,
    j.loaded_at
from joined as j
{%- if is_incremental() %}
inner join changed as c
    on j.source = c.source
    and j.entity_id = c.entity_id
    and j.window_start = c.window_start
{%- endif %}
