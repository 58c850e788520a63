-- Every source's forecasts, with the origin and model of the prediction they belong to.
with forecasts as (
    {{ union_sources('forecasts') }}
)

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
from forecasts as f
inner join {{ ref('int_predictions_unioned') }} as p
    on f.source = p.source
    and f.entity_id = p.entity_id
    and f.window_start = p.window_start
