-- The loader's control table: one row per Delta table loaded.
select
    s.table_name::text as table_name,
    s.source::text as source,
    s.delta_table::text as delta_table,
    s.delta_version::bigint as delta_version,
    s.delta_rows::bigint as delta_rows,
    s.lake_rows::bigint as lake_rows,
    s.rows_loaded::bigint as rows_loaded,
    s.rows_changed::bigint as rows_changed,
    s.mode::text as load_mode,
    s.loaded_at::timestamptz as loaded_at
from {{ lake_relation('_load_state', {'table_name': 'text', 'source': 'text', 'delta_table': 'text',
    'delta_version': 'bigint', 'delta_rows': 'bigint', 'lake_rows': 'bigint', 'rows_loaded': 'bigint',
    'rows_changed': 'bigint', 'mode': 'text', 'loaded_at': 'timestamptz'}) }} as s
