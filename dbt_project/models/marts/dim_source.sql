-- One row per source contract (generated seed periscope_sources, from periscope/contracts.py).
select
    source,
    description,
    entity_label,
    key_field,
    event_time_field,
    event_id_field
from {{ ref('periscope_sources') }}
