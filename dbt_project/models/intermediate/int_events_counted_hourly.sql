-- Records counted per entity and UTC hour, for every source: the actual of a forecast of hourly
-- event counts (a contract's forecast target without a field, e.g. trips per zone per hour).
with events as (
    {{ union_sources('events') }}
)

select
    source,
    entity_id,
    {{ utc_hour('observed_at') }} as observed_hour,
    count(*) as event_count,
    -- The hour changes whenever a record of it is loaded, so facts re-read it then.
    max(loaded_at) as loaded_at
from events
group by source, entity_id, {{ utc_hour('observed_at') }}
