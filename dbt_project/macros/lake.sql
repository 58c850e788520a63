{#- A lake table, or an empty relation of the given columns when the loader has not made it
    yet (the loader skips Delta tables that do not exist, e.g. gold before any scoring), so
    the project builds at every stage of the pipeline. -#}
{% macro lake_relation(table_name, columns) -%}
    {%- set relation = source('lake', table_name) -%}
    {%- if execute and load_relation(relation) is none -%}
        (select {% for name, type in columns.items() %}cast(null as {{ type }}) as "{{ name }}"{{ ", " if not loop.last }}{% endfor %} where false)
    {%- else -%}
        {{ relation }}
    {%- endif -%}
{%- endmacro %}

{#- `select * from <every source's staging model of this entity>`, unioned. The sources and
    their staging models are generated from the contracts by `periscope dbt sync`
    (periscope_contracts() in macros/generated/, models in models/staging/generated/). -#}
{% macro union_sources(entity) -%}
{%- for source_name in periscope_contracts() %}
select * from {{ ref('stg_' ~ source_name ~ '__' ~ entity) }}
{{ "union all" if not loop.last }}
{%- endfor %}
{%- endmacro %}
