-- One row per entity, measure and UTC hour. Incremental: hours that got a reading in a load
-- after the last run are recomputed (delete+insert by key) from all of their readings.
{{ config(
    materialized='incremental',
    unique_key='observation_hourly_key',
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
) }}

select
    {{ surrogate_key(['source', 'entity_id', 'measure', epoch('observed_hour')]) }} as observation_hourly_key,
    {{ surrogate_key(['source', 'entity_id']) }} as entity_key,
    {{ surrogate_key(['source', 'measure']) }} as measure_key,
    {{ date_key('observed_hour') }} as date_key,
    {{ hour_key('observed_hour') }} as hour_key,
    source,
    observed_hour,
    value_mean,
    value_min,
    value_max,
    value_sum,
    reading_count,
    loaded_at
from {{ ref('int_observations_averaged_hourly') }}
{% if is_incremental() %}
where loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{% endif %}
