-- One row per accepted taxi trip of lake.taxi_observations, wide: the columns fct_trip needs
-- (the generated stg_taxi__observations unpivots only the numeric fields, without the zones).
select
    o.trip_id::text as trip_id,
    o.pu_location_id::text as pickup_zone_id,
    o.do_location_id::text as dropoff_zone_id,
    o.event_time::timestamptz as pickup_time,
    o.passenger_count::bigint as passenger_count,
    o.trip_distance::double precision as trip_distance,
    o.duration_min::double precision as duration_min,
    o.fare_amount::double precision as fare_amount,
    o._loaded_at::timestamptz as loaded_at
from {{ lake_relation('taxi_observations', {
    'trip_id': 'text', 'pu_location_id': 'text', 'do_location_id': 'text',
    'event_time': 'timestamptz', 'passenger_count': 'bigint', 'trip_distance': 'double precision',
    'duration_min': 'double precision', 'fare_amount': 'double precision', '_loaded_at': 'timestamptz',
}) }} as o
