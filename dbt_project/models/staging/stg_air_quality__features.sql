-- One row per (station, window, measure) of lake.air_quality_features.
{{ stg_features('air_quality') }}
