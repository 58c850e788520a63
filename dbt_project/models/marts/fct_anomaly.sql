-- One row per scored window: its anomaly score and status. Incremental: windows loaded after
-- the last run (new, or re-scored) replace their rows.
{{ config(
    materialized='incremental',
    unique_key='anomaly_key',
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
) }}

select
    {{ surrogate_key(['source', 'entity_id', epoch('window_start')]) }} as anomaly_key,
    {{ surrogate_key(['source', 'entity_id']) }} as entity_key,
    case
        when anomaly_model is not null then {{ surrogate_key(['anomaly_model', 'anomaly_version']) }}
    end as model_key,
    {{ date_key('window_start') }} as date_key,
    {{ hour_key('window_start') }} as hour_key,
    source,
    window_start,
    window_end,
    anomaly_score,
    is_anomaly,
    anomaly_kind,
    anomaly_status,
    starts_episode,
    scored_at,
    loaded_at
from {{ ref('int_anomalies_classified') }}
{% if is_incremental() %}
where loaded_at > (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{% endif %}
