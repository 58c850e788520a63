-- Each scored window with a status and whether it opens an anomaly episode of its entity.
with classified as (
    select
        source,
        entity_id,
        window_start,
        window_end,
        anomaly_score,
        is_anomaly,
        anomaly_kind,
        anomaly_model,
        anomaly_version,
        scored_at,
        loaded_at,
        -- A window no model checked is "unscored", never "normal".
        case
            when anomaly_score is null or is_anomaly is null then 'unscored'
            when is_anomaly then 'anomaly'
            else 'normal'
        end as anomaly_status
    from {{ ref('int_predictions_unioned') }}
)

select
    *,
    anomaly_status = 'anomaly'
    and coalesce(
        lag(anomaly_status) over (
            partition by source, entity_id order by window_start
        ) <> 'anomaly',
        true
    ) as starts_episode
from classified
