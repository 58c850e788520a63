-- One row per forecast whose target hour has been observed: error by entity, measure and
-- horizon. Incremental: a window is redone (delete+insert of all its rows) when one of its
-- forecasts or the actual hour of one is loaded after the last run, so a re-scored window
-- leaves no stale rows behind. Only those windows' forecasts are read (macros/forecasts.sql).
-- The planner underestimates the forecasts x actuals join by three orders of magnitude (the
-- union over sources hides the row counts) and picks a nested loop: minutes on the demo's
-- 400k forecasts instead of seconds. Hash and merge joins only, for this model's transaction.
-- (Without nested loops every plan's cost is huge, and JIT would compile it: 1.46 s of a 1.59 s
-- incremental run; the warehouse's database turns JIT off, periscope/services/postgres.py.)
{{ config(
    materialized='incremental',
    unique_key=['entity_key', 'window_start'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ forecast_fact_indexes() }}",
    pre_hook="set local enable_nestloop = off",
) }}

{{ forecast_dependencies() }}

{% if is_incremental() -%}
with since as materialized (
    select coalesce(max(loaded_at), '-infinity') as at from {{ this }}
),

-- The windows to redo: loaded since the last run, or with a forecast of an hour whose actual
-- was loaded since (a late reading changes the error of every forecast of its hour).
changed as materialized (
    {{ forecast_windows_loaded_since('(select at from since)') }}
    union
    select f.source, f.entity_id, f.window_start
    from ({{ forecast_rows() }}) as f
    inner join ({{ actual_hours_loaded_since('(select at from since)') }}) as a
        on f.source = a.source
        and f.entity_id = a.entity_id
        and f.measure = a.measure
        and f.target_time = a.observed_hour
),

changed_rows as (
    {{ forecast_rows_of('changed') }}
),

changed_forecasts as (
    {{ forecasts_with_predictions('changed_rows') }}
),

joined as materialized (
    {{ forecasts_joined_to_actuals(
        'changed_forecasts', from_hour='(select min(target_time) from changed_rows)'
    ) }}
)
{%- else -%}
with joined as materialized (
    select * from {{ ref('int_forecasts_joined_to_actuals') }}
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
