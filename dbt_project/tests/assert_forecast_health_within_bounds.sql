-- A warning, not an error: forecasts that lose to "the same hour yesterday" over the last 7 days
-- (relative MAE above 1.0) or whose 80% intervals cover outside 0.7-0.9 are a reason to retrain
-- (the scheduler's health check does), not to fail the build. Each returned row is a breach.
{{ config(severity='warn') }}

select
    source,
    coalesce(measure, 'all measures') as measure,
    window_start,
    window_end,
    forecasts,
    relative_mae,
    max_relative_mae,
    coverage,
    min_coverage,
    max_coverage,
    is_relative_mae_breached,
    is_coverage_breached
from {{ ref('mart_forecast_health') }}
where is_breached
