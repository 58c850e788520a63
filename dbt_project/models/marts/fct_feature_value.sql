-- One row per feature window and aggregate (e.g. temperature_mean, trip_id_count): the narrow
-- shape every contract fits, whatever its aggregations. Incremental: windows loaded after the
-- last run replace their rows (a window always has the same aggregates, so by key).
{{ config(
    materialized='incremental',
    unique_key='feature_value_key',
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ fact_indexes('feature_value_key') }}",
) }}

select
    {{ surrogate_key(['source', 'entity_id', epoch('window_start'), 'feature']) }} as feature_value_key,
    {{ surrogate_key(['source', 'entity_id', epoch('window_start')]) }} as feature_window_key,
    {{ surrogate_key(['source', 'entity_id']) }} as entity_key,
    {{ surrogate_key(['source', 'measure']) }} as measure_key,
    source,
    window_start,
    feature,
    statistic,
    value,
    loaded_at
from {{ ref('int_feature_values_unioned') }}
{% if is_incremental() %}
where loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{% endif %}
