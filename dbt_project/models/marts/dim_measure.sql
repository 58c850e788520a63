-- One row per field (but the key) and forecast series of every source contract, with kind,
-- unit and valid range (generated seed periscope_fields, from periscope/contracts.py).
select
    {{ surrogate_key(['source', 'name']) }} as measure_key,
    source,
    name as measure,
    kind,
    field,
    aggregate,
    unit,
    valid_min,
    valid_max,
    levels,
    description,
    is_forecast_target
from {{ ref('periscope_fields') }}
where not is_key
