-- One row per scored window of lake.air_quality_predictions.
{{ stg_predictions('air_quality') }}
