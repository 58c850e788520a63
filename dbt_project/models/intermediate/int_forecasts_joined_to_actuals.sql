-- Each forecast beside the actual of its target hour, once that has arrived. A forecast series is
-- a contract's forecast target (periscope_fields): the hourly mean, sum or count of one field's
-- readings, or the hourly count of events (no field); its actual is that aggregate of the hour.
with series as (
    select
        source,
        name as measure,
        field,
        aggregate
    from {{ ref('periscope_fields') }}
    where is_forecast_target
),

actuals as (
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
)

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
from {{ ref('int_forecasts_unioned') }} as f
inner join actuals as a
    on f.source = a.source
    and f.entity_id = a.entity_id
    and f.measure = a.measure
    and f.target_time = a.observed_hour
