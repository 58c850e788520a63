-- One row per non-null reading of lake.weather_observations (unpivoted from one column per measure).
{{ stg_observations('weather') }}
