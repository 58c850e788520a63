-- One row per station of any source: every station that has readings, windows or predictions.
with seen as (
    select source, station_id, min(observed_at) as first_seen_at, max(observed_at) as last_seen_at
    from {{ ref('int_observations_unioned') }}
    group by source, station_id
    union all
    select source, station_id, min(window_start), max(window_end)
    from {{ ref('int_feature_windows_unioned') }}
    group by source, station_id
    union all
    select source, station_id, min(window_start), max(window_end)
    from {{ ref('int_predictions_unioned') }}
    group by source, station_id
)

select
    {{ surrogate_key(['source', 'station_id']) }} as station_key,
    source,
    station_id,
    min(first_seen_at) as first_seen_at,
    max(last_seen_at) as last_seen_at
from seen
group by source, station_id
