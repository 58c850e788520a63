-- Each forecast beside the hourly observation of its target hour, once that has arrived.
select
    f.source,
    f.station_id,
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
    o.value_mean as actual,
    f.yhat - o.value_mean as error,
    abs(f.yhat - o.value_mean) as abs_error,
    (f.yhat - o.value_mean) ^ 2 as squared_error,
    -- Percentage errors explode near zero (temperatures cross 0 °C): only where |actual| >= 1.
    case
        when abs(o.value_mean) >= 1 then abs(f.yhat - o.value_mean) / abs(o.value_mean)
    end as abs_pct_error,
    o.value_mean between f.yhat_lower and f.yhat_upper as in_interval,
    greatest(f.loaded_at, o.loaded_at) as loaded_at
from {{ ref('int_forecasts_unioned') }} as f
inner join {{ ref('int_observations_averaged_hourly') }} as o
    on f.source = o.source
    and f.station_id = o.station_id
    and f.measure = o.measure
    and f.target_time = o.observed_hour
