-- How each source's forecasts are doing lately: over the forecasts whose target hour falls in the
-- source's last 7 days of observed data, the model's MAE against seasonal-naive's ("the same hour
-- yesterday") and the 80% interval's coverage, per measure and overall, with the breach flags
-- that the warn test assert_forecast_health_within_bounds, `periscope models health` and the
-- scheduler's health check read. A summary of the facts, not a fact of its own (hence mart_, not
-- fct_): rebuilt whole each run, a handful of rows from the last 8 days of accuracy.
--
-- fct_forecast_accuracy holds no seasonal-naive figure, so it comes from the same mart: the
-- actual of the same entity and measure 24 h before the target hour (every hour a forecast
-- targeted carries its actual). Forecasts without that actual count for coverage but not for
-- MAE, so the model and the baseline are compared on the same forecasts.
{%- set max_relative_mae = var('forecast_health_max_relative_mae', 1.0) %}
{%- set min_coverage = var('forecast_health_min_coverage', 0.7) %}
{%- set max_coverage = var('forecast_health_max_coverage', 0.9) %}
{#- Fewer forecasts than this are no evidence either way: a day of 1-24 h forecasts of one series
    is 24 (a fresh deployment or a new station has fewer, and one bad hour would flag it). -#}
{%- set min_forecasts = var('forecast_health_min_forecasts', 24) %}

with accuracy as (
    select
        a.source,
        a.entity_key,
        a.measure_key,
        a.target_time,
        a.actual,
        a.abs_error,
        a.in_interval
    from {{ ref('fct_forecast_accuracy') }} as a
),

spans as (
    select
        source,
        max(target_time) - interval '7 days' as window_start,
        max(target_time) as window_end
    from accuracy
    group by source
),

recent as (
    select a.*
    from accuracy as a
    inner join spans as s
        on a.source = s.source
        and a.target_time > s.window_start
),

-- One actual per series and hour (several horizons target the same hour).
hourly_actuals as (
    select
        a.entity_key,
        a.measure_key,
        a.target_time as observed_hour,
        min(a.actual) as actual
    from accuracy as a
    inner join spans as s
        on a.source = s.source
        and a.target_time > s.window_start - interval '1 day'
    group by a.entity_key, a.measure_key, a.target_time
),

judged as (
    select
        r.source,
        r.measure_key,
        r.in_interval,
        case when y.actual is not null then r.abs_error end as abs_error,
        abs(y.actual - r.actual) as abs_error_seasonal_naive
    from recent as r
    left join hourly_actuals as y
        on r.entity_key = y.entity_key
        and r.measure_key = y.measure_key
        and y.observed_hour = r.target_time - interval '24 hours'
),

per_measure as (
    select
        j.source,
        j.measure_key,
        m.measure,
        count(*) as forecasts,
        count(j.abs_error_seasonal_naive) as forecasts_judged,
        avg(j.abs_error) as mae,
        avg(j.abs_error_seasonal_naive) as mae_seasonal_naive,
        avg(j.abs_error) / nullif(avg(j.abs_error_seasonal_naive), 0) as relative_mae,
        avg(j.in_interval::integer)::double precision as coverage
    from judged as j
    inner join {{ ref('dim_measure') }} as m on j.measure_key = m.measure_key
    group by j.source, j.measure_key, m.measure
),

-- Overall per source: MAEs in different units do not add up, so the relative MAE is the mean
-- of the measures' (each unit-free) and the MAEs are left empty; coverage pools every forecast.
per_source as (
    select
        j.source,
        null::text as measure_key,
        null::text as measure,
        count(*) as forecasts,
        count(j.abs_error_seasonal_naive) as forecasts_judged,
        null::double precision as mae,
        null::double precision as mae_seasonal_naive,
        (
            select avg(p.relative_mae) from per_measure as p where p.source = j.source
        ) as relative_mae,
        avg(j.in_interval::integer)::double precision as coverage
    from judged as j
    group by j.source
),

figures as (
    select * from per_measure
    union all
    select * from per_source
),

flagged as (
    select
        f.*,
        coalesce(
            f.forecasts_judged >= {{ min_forecasts }} and f.relative_mae > {{ max_relative_mae }},
            false
        ) as is_relative_mae_breached,
        coalesce(
            f.forecasts >= {{ min_forecasts }}
            and (f.coverage < {{ min_coverage }} or f.coverage > {{ max_coverage }}),
            false
        ) as is_coverage_breached
    from figures as f
)

select
    {{ surrogate_key(['f.source', 'f.measure']) }} as forecast_health_key,
    f.source,
    f.measure_key,
    f.measure,
    s.window_start,
    s.window_end,
    f.forecasts,
    f.forecasts_judged,
    f.mae,
    f.mae_seasonal_naive,
    f.relative_mae,
    f.coverage,
    {{ max_relative_mae }}::double precision as max_relative_mae,
    {{ min_coverage }}::double precision as min_coverage,
    {{ max_coverage }}::double precision as max_coverage,
    {{ min_forecasts }} as min_forecasts,
    f.is_relative_mae_breached,
    f.is_coverage_breached,
    f.is_relative_mae_breached or f.is_coverage_breached as is_breached
from flagged as f
inner join spans as s on f.source = s.source
