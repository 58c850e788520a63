-- Row counts reconcile from Delta to the marts, for every source `periscope dbt sync` generated
-- (periscope_contracts()). A returned row is a mismatch:
--   1. each lake table holds as many rows as its Delta table had at the version loaded
--      (recorded by the loader in lake._load_state);
--   2. per source, the facts hold what the lake holds: a feature-window row per window and a
--      feature-value row per window and aggregate column, an anomaly row per scored window, a
--      forecast row per flattened forecast (also equal to the forecast counts of the gold
--      rows), and hourly facts that count every non-null reading of a numeric field;
--   3. taxi: fct_trip holds one row per trip of lake.taxi_observations, and as many scored
--      trips as gold's event predictions hold of those trips.
{%- set sources = periscope_contracts() %}
{%- set loaded_tables = [] %}
{%- for s in sources %}{% for entity in ['observations', 'features', 'predictions'] %}
{%- do loaded_tables.append(s ~ '_' ~ entity) %}
{%- endfor %}
{%- if sources[s]['event_predictions'] %}{% do loaded_tables.append(s ~ '_' ~ sources[s]['event_predictions_entity']) %}{% endif %}
{%- endfor %}
{%- set any_row = {'_loaded_at': 'timestamptz'} %}

with lake_tables as (
    {%- for t in loaded_tables %}
    select '{{ t }}' as table_name, count(*) as rows_now
    from {{ lake_relation(t, any_row) }} as t
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
    {%- set numeric = sources[s]['numeric_fields'] %}
    {%- set numeric_columns = {'_loaded_at': 'timestamptz'} %}
    {%- for m in numeric %}{% do numeric_columns.update({m: 'double precision'}) %}{% endfor %}
    select
        '{{ s }}' as source,
        (select count(*) from {{ lake_relation(s ~ '_features', any_row) }} as f) as windows,
        (select count(*) * {{ sources[s]['feature_count'] }}
         from {{ lake_relation(s ~ '_features', any_row) }} as f) as feature_values,
        (select count(*) from {{ lake_relation(s ~ '_predictions', any_row) }} as p) as predictions,
        (select coalesce(sum(forecast_count), 0)
         from {{ lake_relation(s ~ '_predictions', {'forecast_count': 'integer'}) }} as p) as forecasts_in_gold,
        (select count(*) from {{ lake_relation(s ~ '_forecasts', any_row) }} as f) as forecasts,
        (select
            {%- for m in numeric %}
            count(o."{{ m }}") +
            {%- endfor %}
            0
         from {{ lake_relation(s ~ '_observations', numeric_columns) }} as o) as readings
    {{ "union all" if not loop.last }}
    {%- endfor %}
),

marts_per_source as (
    select
        l.source,
        (select count(*) from {{ ref('fct_feature_window') }} as f where f.source = l.source) as windows,
        (select count(*) from {{ ref('fct_feature_value') }} as f where f.source = l.source) as feature_values,
        (select count(*) from {{ ref('fct_anomaly') }} as a where a.source = l.source) as predictions,
        (select count(*) from {{ ref('fct_forecast') }} as f where f.source = l.source) as forecasts,
        (select coalesce(sum(reading_count), 0)
         from {{ ref('fct_observation_hourly') }} as o where o.source = l.source) as readings
    from lake_per_source as l
),

per_source as (
    select l.source || ': fct_feature_window rows vs lake windows' as check_name,
        l.windows as expected, m.windows as actual
    from lake_per_source as l inner join marts_per_source as m on l.source = m.source
    union all
    select l.source || ': fct_feature_value rows vs lake windows x aggregate columns',
        l.feature_values, m.feature_values
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

{%- if 'taxi' in sources %},

trips as (
    select 'taxi: fct_trip rows vs lake trips' as check_name,
        (select count(*) from {{ lake_relation('taxi_observations', any_row) }} as o) as expected,
        (select count(*) from {{ ref('fct_trip') }}) as actual
    union all
    select 'taxi: fct_trip scored trips vs lake event predictions of those trips',
        (select count(*)
         from {{ lake_relation('taxi_trip_predictions', {'trip_id': 'text'}) }} as p
         where exists (
             select from {{ lake_relation('taxi_observations', {'trip_id': 'text'}) }} as o
             where o.trip_id = p.trip_id
         )),
        (select count(*) from {{ ref('fct_trip') }} where model_key is not null)
)
{%- endif %}

select * from delta_vs_lake
union all
select * from per_source where expected <> actual
{%- if 'taxi' in sources %}
union all
select * from trips where expected <> actual
{%- endif %}
