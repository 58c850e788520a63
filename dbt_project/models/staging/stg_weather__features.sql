-- One row per (station, window, measure) of lake.weather_features.
{{ stg_features('weather') }}
