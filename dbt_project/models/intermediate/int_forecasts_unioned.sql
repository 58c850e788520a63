-- Every source's forecasts, with the origin and model of the prediction they belong to
-- (macros/forecasts.sql).
with forecasts as (
    {{ forecast_rows() }}
)

{{ forecasts_with_predictions('forecasts') }}
