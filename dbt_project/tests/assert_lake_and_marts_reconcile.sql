-- Row counts reconcile from Delta to the marts. A returned row is a mismatch:
--   1. each lake table holds as many rows as its Delta table had at the version loaded
--      (recorded by the loader in lake._load_state);
--   2. per source, the facts hold what the lake holds: a feature-window row per window and
--      measure, an anomaly row per scored window, a forecast row per flattened forecast (also
--      equal to the forecast counts of the gold rows), and hourly facts that count every
--      non-null reading.
{%- set sources = var('periscope_sources') %}
{%- set loaded_tables = [] %}
{%- for s in sources %}{% for entity in ['observations', 'features', 'predictions'] %}
{%- do loaded_tables.append(s ~ '_' ~ entity) %}
{%- endfor %}{% endfor %}

with lake_tables as (
    {%- for t in loaded_tables %}
    select '{{ t }}' as table_name, count(*) as rows_now
    from {{ lake_relation(t, {'station_id': 'text'}) }} as t
    {{ "union all" if not loop.last }}
    {%- endfor %}
),

delta_vs_lake as (
    select
        'lake table differs from its Delta version: ' || s.table_name as check_name,
        s.delta_rows as expected,
        l.rows_now as actual
    from {{ ref('stg_lake__load_state') }} as s
    inner join lake_tables as l on l.table_name = s.table_name
    where s.delta_rows <> l.rows_now
),

lake_per_source as (
    {%- for s in sources %}
    {%- set measures = sources[s] %}
    {%- set measure_columns = {} %}
    {%- for m in measures %}{% do measure_columns.update({m: 'double precision'}) %}{% endfor %}
    select
        '{{ s }}' as source,
        (select count(*) * {{ measures | length }}
         from {{ lake_relation(s ~ '_features', {'station_id': 'text'}) }} as f) as feature_rows,
        (select count(*) from {{ lake_relation(s ~ '_predictions', {'station_id': 'text'}) }} as p) as predictions,
        (select coalesce(sum(forecast_count), 0)
         from {{ lake_relation(s ~ '_predictions', {'forecast_count': 'integer'}) }} as p) as forecasts_in_gold,
        (select count(*) from {{ lake_relation(s ~ '_forecasts', {'station_id': 'text'}) }} as f) as forecasts,
        (select
            {%- for m in measures %}
            count(o.{{ m }}){{ " +" if not loop.last }}
            {%- endfor %}
         from {{ lake_relation(s ~ '_observations', measure_columns) }} as o) as readings
    {{ "union all" if not loop.last }}
    {%- endfor %}
),

marts_per_source as (
    select
        l.source,
        (select count(*) from {{ ref('fct_feature_window') }} as f where f.source = l.source) as feature_rows,
        (select count(*) from {{ ref('fct_anomaly') }} as a where a.source = l.source) as predictions,
        (select count(*) from {{ ref('fct_forecast') }} as f where f.source = l.source) as forecasts,
        (select coalesce(sum(reading_count), 0)
         from {{ ref('fct_observation_hourly') }} as o where o.source = l.source) as readings
    from lake_per_source as l
),

per_source as (
    select l.source || ': fct_feature_window rows vs lake windows x measures' as check_name,
        l.feature_rows as expected, m.feature_rows as actual
    from lake_per_source as l inner join marts_per_source as m on l.source = m.source
    union all
    select l.source || ': fct_anomaly rows vs lake predictions', l.predictions, m.predictions
    from lake_per_source as l inner join marts_per_source as m on l.source = m.source
    union all
    select l.source || ': fct_forecast rows vs lake forecasts', l.forecasts, m.forecasts
    from lake_per_source as l inner join marts_per_source as m on l.source = m.source
    union all
    select l.source || ': lake forecasts vs the forecast counts of gold rows', l.forecasts_in_gold, l.forecasts
    from lake_per_source as l
    union all
    select l.source || ': fct_observation_hourly readings vs non-null lake readings', l.readings, m.readings
    from lake_per_source as l inner join marts_per_source as m on l.source = m.source
)

select * from delta_vs_lake
union all
select * from per_source where expected <> actual
