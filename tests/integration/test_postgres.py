"""The real PostgreSQL server: the owner loads, `bi_reader` reads the marts and nothing else."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from psycopg2 import errors, sql

from periscope.services import PostgresServer

pytestmark = pytest.mark.integration


def _owner_table(services, schema: str, name: str) -> str:
    """A table the owner role created and filled in `schema` (made if missing)."""
    table = sql.Identifier(schema, name)
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("create table {} (station text, value float)").format(table))
        cur.execute(sql.SQL("insert into {} values ('a', 1.5), ('b', 2.5)").format(table))
    return f"{schema}.{name}"


def _drop(services, statement: str) -> None:
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(statement)


@pytest.fixture
def owned_table(services):
    """A table the owner (dbt) created in the marts schema, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:8]}"
    yield _owner_table(services, "marts", name)
    _drop(services, f"drop table marts.{name}")


@pytest.fixture
def other_schema(services):
    """A schema of the owner's other than marts, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:8]}"
    yield schema
    _drop(services, f"drop schema if exists {schema} cascade")


def test_owner_connects_to_the_periscope_database(services):
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute("select current_user, current_database(), current_setting('port')")
        assert cur.fetchone() == (
            services.postgres_owner_user,
            services.postgres_db,
            str(services.postgres_port),
        )


def test_bi_reader_reads_what_the_owner_builds_in_marts(services, owned_table):
    with psycopg2.connect(services.postgres_dsn("bi")) as conn, conn.cursor() as cur:
        cur.execute(f"select station, value from {owned_table} order by station")
        assert cur.fetchall() == [("a", 1.5), ("b", 2.5)]


@pytest.mark.parametrize(
    "statement",
    [
        "insert into {table} values ('c', 3.5)",
        "update {table} set value = 0",
        "delete from {table}",
        "create table public.bi_was_here (x int)",
        "create schema bi_schema",
    ],
)
def test_bi_reader_cannot_write(services, owned_table, statement):
    conn = psycopg2.connect(services.postgres_dsn("bi"))
    try:
        with conn.cursor() as cur, pytest.raises(errors.ReadOnlySqlTransaction):
            cur.execute(statement.format(table=owned_table))
        conn.rollback()
        # Read-only is only the first guard: without it, privileges still refuse the write.
        with conn.cursor() as cur:
            cur.execute("set default_transaction_read_only = off")
            conn.commit()
            with pytest.raises(errors.InsufficientPrivilege):
                cur.execute(statement.format(table=owned_table))
    finally:
        conn.close()


@pytest.mark.parametrize("schema", ["lake", "public", "new"])
def test_bi_reader_cannot_read_outside_marts(services, other_schema, schema):
    table = _owner_table(services, other_schema if schema == "new" else schema, other_schema)
    try:
        with (
            psycopg2.connect(services.postgres_dsn("bi")) as conn,
            conn.cursor() as cur,
            pytest.raises(errors.InsufficientPrivilege),
        ):
            cur.execute(f"select * from {table}")
    finally:
        _drop(services, f"drop table if exists {table}")


def test_bootstrap_takes_back_the_wide_grants_of_earlier_versions(services, other_schema):
    """A database set up before the marts-only rule: BI could read all the owner made."""
    bi = sql.Identifier(services.postgres_bi_user)
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for statement in (
            "alter default privileges grant usage on schemas to {bi}",
            "alter default privileges grant select on tables to {bi}",
        ):
            cur.execute(sql.SQL(statement).format(bi=bi))
    table = _owner_table(services, other_schema, "readings")
    lake_table = _owner_table(services, "lake", other_schema)
    try:
        with psycopg2.connect(services.postgres_dsn("bi")) as conn, conn.cursor() as cur:
            cur.execute(f"select count(*) from {table}")  # the old, wide grant works ...
            assert cur.fetchone() == (2,)

        PostgresServer(services).bootstrap()  # what `periscope services up` runs

        for name in (table, lake_table):  # ... and is gone after `services up`
            with (
                psycopg2.connect(services.postgres_dsn("bi")) as conn,
                conn.cursor() as cur,
                pytest.raises(errors.InsufficientPrivilege),
            ):
                cur.execute(f"select count(*) from {name}")
        # New tables outside marts stay private too.
        later = _owner_table(services, other_schema, "later")
        with (
            psycopg2.connect(services.postgres_dsn("bi")) as conn,
            conn.cursor() as cur,
            pytest.raises(errors.InsufficientPrivilege),
        ):
            cur.execute(f"select count(*) from {later}")
    finally:
        _drop(services, f"drop table if exists {lake_table}")


def test_wrong_password_is_refused(services):
    dsn = services.postgres_dsn("owner").replace(
        services.postgres_owner_password.get_secret_value(), "wrong"
    )
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(dsn)
