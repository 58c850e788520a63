"""The Delta -> Postgres loader (`periscope warehouse load`) and the dbt runner (`periscope dbt`).

`plan`, `ddl` and `dbt_models` hold the pure logic (which tables, keys and files; which SQL; which
dbt files the source contracts imply); `loader` and `dbt` do the I/O (`dbt.sync_project` writes the
generated dbt files, `dbt.run_dbt` syncs and runs dbt); `cli` holds the commands. The dbt project
itself is `dbt_project/`.
"""
