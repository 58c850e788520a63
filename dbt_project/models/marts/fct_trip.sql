-- One row per accepted taxi trip: the actual duration and fare beside the speed layer's
-- predictions of them (null until the trip is scored). Incremental: a trip whose observation or
-- prediction was loaded after the last run replaces its row.
{{ config(
    materialized='incremental',
    unique_key='trip_key',
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
) }}

with trips as (
    select
        t.*,
        p.predicted_duration_min,
        p.predicted_fare_amount,
        p.event_model,
        p.event_model_version,
        p.scored_at,
        -- greatest() skips nulls: an unscored trip counts from its observation alone.
        greatest(t.loaded_at, p.loaded_at) as row_loaded_at
    from {{ ref('stg_taxi__trips') }} as t
    left join {{ ref('stg_taxi__trip_predictions') }} as p on t.trip_id = p.event_id
)

select
    {{ surrogate_key(["'taxi'", 'trip_id']) }} as trip_key,
    trip_id,
    {{ surrogate_key(["'taxi'", 'pickup_zone_id']) }} as entity_key,
    {{ surrogate_key(["'taxi'", 'pickup_zone_id']) }} as pickup_zone_key,
    {{ surrogate_key(["'taxi'", 'dropoff_zone_id']) }} as dropoff_zone_key,
    case
        when event_model is not null then {{ surrogate_key(['event_model', 'event_model_version']) }}
    end as model_key,
    {{ date_key('pickup_time') }} as pickup_date_key,
    {{ hour_key('pickup_time') }} as pickup_hour_key,
    pickup_time,
    passenger_count,
    trip_distance,
    duration_min as actual_duration_min,
    predicted_duration_min,
    predicted_duration_min - duration_min as duration_error,
    fare_amount as actual_fare_amount,
    predicted_fare_amount,
    predicted_fare_amount - fare_amount as fare_error,
    event_model_version as model_version,
    scored_at,
    row_loaded_at as loaded_at
from trips
{% if is_incremental() %}
where row_loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{% endif %}
