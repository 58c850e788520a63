-- One row per hour of the day (UTC), 0..23.
select
    hour as hour_key,
    lpad(hour::text, 2, '0') || ':00' as hour_label,
    case
        when hour < 6 then 'night'
        when hour < 12 then 'morning'
        when hour < 18 then 'afternoon'
        else 'evening'
    end as day_part
from generate_series(0, 23) as hour
