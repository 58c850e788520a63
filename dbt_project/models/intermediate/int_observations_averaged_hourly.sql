-- Readings aggregated per entity, measure and UTC hour: what a forecast of that hour is judged against.
select
    source,
    entity_id,
    measure,
    {{ utc_hour('observed_at') }} as observed_hour,
    avg(value) as value_mean,
    min(value) as value_min,
    max(value) as value_max,
    sum(value) as value_sum,
    count(*) as reading_count,
    -- The hour changes whenever a reading of it is loaded, so facts re-read it then.
    max(loaded_at) as loaded_at
from {{ ref('int_observations_unioned') }}
group by source, entity_id, measure, {{ utc_hour('observed_at') }}
