-- One row per non-null reading of lake.air_quality_observations (unpivoted from one column per measure).
{{ stg_observations('air_quality') }}
