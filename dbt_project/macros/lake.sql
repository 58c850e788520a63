{#- A lake table, or an empty relation of the given columns when the loader has not made it
    yet (the loader skips Delta tables that do not exist, e.g. gold before any scoring), so
    the project builds at every stage of the pipeline. -#}
{% macro lake_relation(table_name, columns) -%}
    {%- set relation = source('lake', table_name) -%}
    {%- if execute and load_relation(relation) is none -%}
        (select {% for name, type in columns.items() %}cast(null as {{ type }}) as {{ name }}{{ ", " if not loop.last }}{% endfor %} where false)
    {%- else -%}
        {{ relation }}
    {%- endif -%}
{%- endmacro %}

{#- Wide observations (one column per measure) -> one row per non-null reading. -#}
{% macro stg_observations(source_name) -%}
{%- set measures = var('periscope_sources')[source_name] -%}
{%- set columns = {'station_id': 'text', 'event_time': 'timestamptz', '_loaded_at': 'timestamptz'} -%}
{%- for m in measures %}{% do columns.update({m: 'double precision'}) %}{% endfor -%}
select
    '{{ source_name }}'::text as source,
    o.station_id::text as station_id,
    o.event_time::timestamptz as observed_at,
    m.measure::text as measure,
    m.value::double precision as value,
    o._loaded_at::timestamptz as loaded_at
from {{ lake_relation(source_name ~ '_observations', columns) }} as o
cross join lateral (
    values
    {%- for m in measures %}
        ('{{ m }}', o.{{ m }}){{ "," if not loop.last }}
    {%- endfor %}
) as m (measure, value)
where m.value is not null
{%- endmacro %}

{#- Wide feature windows (measure x statistic columns) -> one row per window and measure. -#}
{% macro stg_features(source_name) -%}
{%- set measures = var('periscope_sources')[source_name] -%}
{%- set stats = var('feature_stats') -%}
{%- set columns = {'station_id': 'text', 'window_start': 'timestamptz', 'window_end': 'timestamptz',
                   'reading_count': 'bigint', '_loaded_at': 'timestamptz'} -%}
{%- for m in measures %}{% for s in stats %}{% do columns.update({m ~ '_' ~ s: 'double precision'}) %}{% endfor %}{% endfor -%}
select
    '{{ source_name }}'::text as source,
    f.station_id::text as station_id,
    f.window_start::timestamptz as window_start,
    f.window_end::timestamptz as window_end,
    f.reading_count::bigint as reading_count,
    m.measure::text as measure,
    {%- for s in stats %}
    m.{{ s }}::double precision as value_{{ s }},
    {%- endfor %}
    f._loaded_at::timestamptz as loaded_at
from {{ lake_relation(source_name ~ '_features', columns) }} as f
cross join lateral (
    values
    {%- for m in measures %}
        ('{{ m }}'{% for s in stats %}, f.{{ m }}_{{ s }}{% endfor %}){{ "," if not loop.last }}
    {%- endfor %}
) as m (measure{% for s in stats %}, {{ s }}{% endfor %})
{%- endmacro %}

{% macro stg_predictions(source_name) -%}
{%- set columns = {'station_id': 'text', 'window_start': 'timestamptz', 'window_end': 'timestamptz',
                   'anomaly_score': 'double precision', 'is_anomaly': 'boolean',
                   'forecast_origin': 'timestamptz', 'forecast_count': 'integer',
                   'forecast_model': 'text', 'forecast_version': 'bigint',
                   'anomaly_model': 'text', 'anomaly_version': 'bigint',
                   'scored_at': 'timestamptz', '_loaded_at': 'timestamptz'} -%}
select
    '{{ source_name }}'::text as source,
    p.station_id::text as station_id,
    p.window_start::timestamptz as window_start,
    p.window_end::timestamptz as window_end,
    p.anomaly_score::double precision as anomaly_score,
    p.is_anomaly::boolean as is_anomaly,
    p.forecast_origin::timestamptz as forecast_origin,
    p.forecast_count::integer as forecast_count,
    p.forecast_model::text as forecast_model,
    p.forecast_version::bigint as forecast_version,
    p.anomaly_model::text as anomaly_model,
    p.anomaly_version::bigint as anomaly_version,
    p.scored_at::timestamptz as scored_at,
    p._loaded_at::timestamptz as loaded_at
from {{ lake_relation(source_name ~ '_predictions', columns) }} as p
{%- endmacro %}

{% macro stg_forecasts(source_name) -%}
{%- set columns = {'station_id': 'text', 'window_start': 'timestamptz', 'measure': 'text',
                   'horizon_h': 'integer', 'target_time': 'timestamptz', 'yhat': 'double precision',
                   'yhat_lower': 'double precision', 'yhat_upper': 'double precision',
                   '_loaded_at': 'timestamptz'} -%}
select
    '{{ source_name }}'::text as source,
    f.station_id::text as station_id,
    f.window_start::timestamptz as window_start,
    f.measure::text as measure,
    f.horizon_h::integer as horizon_h,
    f.target_time::timestamptz as target_time,
    f.yhat::double precision as yhat,
    f.yhat_lower::double precision as yhat_lower,
    f.yhat_upper::double precision as yhat_upper,
    f._loaded_at::timestamptz as loaded_at
from {{ lake_relation(source_name ~ '_forecasts', columns) }} as f
{%- endmacro %}

{#- `select * from <every source's model of this entity>`, unioned. -#}
{% macro union_sources(entity) -%}
{%- for source_name in var('periscope_sources') %}
select * from {{ ref('stg_' ~ source_name ~ '__' ~ entity) }}
{{ "union all" if not loop.last }}
{%- endfor %}
{%- endmacro %}
