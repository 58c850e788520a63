-- One row per entity of any source (a weather station, a taxi zone...): every entity that has
-- readings, windows or predictions, with what its source calls one (entity_label).
with seen as (
    select source, entity_id, min(observed_at) as first_seen_at, max(observed_at) as last_seen_at
    from {{ ref('int_observations_unioned') }}
    group by source, entity_id
    union all
    select source, entity_id, min(window_start), max(window_end)
    from {{ ref('int_feature_windows_unioned') }}
    group by source, entity_id
    union all
    select source, entity_id, min(window_start), max(window_end)
    from {{ ref('int_predictions_unioned') }}
    group by source, entity_id
)

select
    {{ surrogate_key(['s.source', 's.entity_id']) }} as entity_key,
    s.source,
    s.entity_id,
    c.entity_label,
    min(s.first_seen_at) as first_seen_at,
    max(s.last_seen_at) as last_seen_at,
    l.latitude,
    l.longitude
from seen as s
inner join {{ ref('periscope_sources') }} as c on s.source = c.source
-- Coordinates where the source's dataset knows them (weather stations): the BI maps.
left join {{ ref('entity_locations') }} as l on s.source = l.source and s.entity_id = l.entity_id
group by s.source, s.entity_id, c.entity_label, l.latitude, l.longitude
