-- One row per entity and feature window: what every source's windows have in common. The
-- aggregates themselves are rows of fct_feature_value. Incremental: windows loaded (new, or
-- rewritten by silver's MERGE) after the last run replace their rows.
{{ config(
    materialized='incremental',
    unique_key='feature_window_key',
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
) }}

select
    {{ surrogate_key(['source', 'entity_id', epoch('window_start')]) }} as feature_window_key,
    {{ surrogate_key(['source', 'entity_id']) }} as entity_key,
    {{ date_key('window_start') }} as date_key,
    {{ hour_key('window_start') }} as hour_key,
    source,
    window_start,
    window_end,
    reading_count,
    loaded_at
from {{ ref('int_feature_windows_unioned') }}
{% if is_incremental() %}
where loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{% endif %}
