-- One row per registered model version that scored a window (forecast or anomaly) or an event
-- (the speed layer's per-event regressor).
with used as (
    select distinct source, forecast_model as model_name, forecast_version as model_version, 'forecast' as kind
    from {{ ref('int_predictions_unioned') }}
    where forecast_model is not null
    union
    select distinct source, anomaly_model, anomaly_version, 'anomaly'
    from {{ ref('int_predictions_unioned') }}
    where anomaly_model is not null
    {%- for source_name, facts in periscope_contracts().items() if facts['event_predictions'] %}
    union
    select distinct source, event_model, event_model_version, 'event'
    from {{ ref('stg_' ~ source_name ~ '__' ~ facts['event_predictions_entity']) }}
    {%- endfor %}
)

select
    {{ surrogate_key(['model_name', 'model_version']) }} as model_key,
    model_name,
    model_version,
    kind,
    source
from used
