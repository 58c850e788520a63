-- One row per forecast of lake.weather_forecasts.
{{ stg_forecasts('weather') }}
