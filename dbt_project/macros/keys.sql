{#- A surrogate key: md5 of the parts as text. Pass timestamps through epoch(), so the key
    never depends on the session's time zone. -#}
{% macro surrogate_key(parts) -%}
    md5(concat_ws('|', {% for part in parts %}coalesce(({{ part }})::text, ''){{ ", " if not loop.last }}{% endfor %}))
{%- endmacro %}

{% macro epoch(ts) -%}
    extract(epoch from {{ ts }})
{%- endmacro %}

{#- dim_date's key of a timestamp's UTC date, e.g. 20240131. -#}
{% macro date_key(ts) -%}
    (to_char(({{ ts }}) at time zone 'UTC', 'YYYYMMDD'))::integer
{%- endmacro %}

{#- dim_hour's key of a timestamp's UTC hour, 0..23. -#}
{% macro hour_key(ts) -%}
    (extract(hour from ({{ ts }}) at time zone 'UTC'))::integer
{%- endmacro %}

{#- The whole UTC hour a timestamp falls in. -#}
{% macro utc_hour(ts) -%}
    date_trunc('hour', {{ ts }}, 'UTC')
{%- endmacro %}
