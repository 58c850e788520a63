"""The Delta -> Postgres loader (`periscope warehouse load`) and the dbt runner (`periscope dbt`).

`plan` and `ddl` hold the pure logic (which tables and files, which SQL); `loader` and `dbt`
do the I/O; `cli` holds the commands. The dbt project itself is `dbt_project/`.
"""
