-- One row per forecast of lake.air_quality_forecasts.
{{ stg_forecasts('air_quality') }}
