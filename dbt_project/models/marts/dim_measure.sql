-- One row per (source, measure) of the source contracts, with unit and valid range.
select
    {{ surrogate_key(['source', 'measure']) }} as measure_key,
    source,
    measure,
    unit,
    valid_min,
    valid_max,
    description
from {{ ref('measures') }}
