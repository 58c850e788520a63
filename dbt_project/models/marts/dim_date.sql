-- One row per UTC day from the first reading, window or forecast to the last forecast target.
{{ forecast_dependencies() }}
with bounds as (
    select min(first_at) as first_at, max(last_at) as last_at
    from (
        select min(observed_at) as first_at, max(observed_at) as last_at
        from {{ ref('int_observations_unioned') }}
        union all
        select min(window_start), max(window_end) from {{ ref('int_predictions_unioned') }}
        union all
        select min(window_start), max(window_end) from {{ ref('int_feature_windows_unioned') }}
        union all
        -- The forecast rows alone: their join to the predictions adds nothing to the span.
        select min(target_time), max(target_time) from ({{ forecast_rows() }}) as f
    ) as spans
),

days as (
    select day::date as calendar_date
    from bounds,
        generate_series(
            (first_at at time zone 'UTC')::date::timestamp,
            (last_at at time zone 'UTC')::date::timestamp,
            interval '1 day'
        ) as day
)

select
    (to_char(calendar_date, 'YYYYMMDD'))::integer as date_key,
    calendar_date,
    (extract(year from calendar_date))::integer as year,
    (extract(quarter from calendar_date))::integer as quarter,
    (extract(month from calendar_date))::integer as month,
    trim(to_char(calendar_date, 'Month')) as month_name,
    (extract(day from calendar_date))::integer as day_of_month,
    (extract(isodow from calendar_date))::integer as iso_day_of_week,
    trim(to_char(calendar_date, 'Day')) as day_name,
    (extract(week from calendar_date))::integer as iso_week,
    extract(isodow from calendar_date) >= 6 as is_weekend
from days
