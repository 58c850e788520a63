-- One row per scored window of lake.weather_predictions.
{{ stg_predictions('weather') }}
