-- One row per registered model version that scored a window (forecast or anomaly).
with used as (
    select distinct source, forecast_model as model_name, forecast_version as model_version, 'forecast' as kind
    from {{ ref('int_predictions_unioned') }}
    where forecast_model is not null
    union
    select distinct source, anomaly_model, anomaly_version, 'anomaly'
    from {{ ref('int_predictions_unioned') }}
    where anomaly_model is not null
)

select
    {{ surrogate_key(['model_name', 'model_version']) }} as model_key,
    model_name,
    model_version,
    kind,
    source
from used
