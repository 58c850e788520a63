-- One row per NYC TLC taxi zone (the taxi_zones seed, from taxi_zone_lookup.csv). A taxi
-- entity is a pickup zone: zone_key is built like dim_entity's entity_key of source taxi, so
-- both join on it; entity_key is set only for the zones that have trips (in dim_entity).
with zones as (
    select
        {{ surrogate_key(["'taxi'", 'location_id']) }} as zone_key,
        location_id::text as location_id,
        borough::text as borough,
        zone_name::text as zone_name,
        service_zone::text as service_zone
    from {{ ref('taxi_zones') }}
)

select
    z.zone_key,
    e.entity_key,
    z.location_id,
    z.borough,
    z.zone_name,
    z.service_zone
from zones as z
left join {{ ref('dim_entity') }} as e on z.zone_key = e.entity_key
