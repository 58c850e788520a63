"""The real PostgreSQL server: the owner loads, `bi_reader` reads and cannot write."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from psycopg2 import errors, sql

pytestmark = pytest.mark.integration


@pytest.fixture
def owned_table(services):
    """A table the owner role created and filled, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:8]}"
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        cur.execute(
            sql.SQL("create table {}.readings (station text, value float)").format(
                sql.Identifier(schema)
            )
        )
        cur.execute(
            sql.SQL("insert into {}.readings values ('a', 1.5), ('b', 2.5)").format(
                sql.Identifier(schema)
            )
        )
    yield f"{schema}.readings"
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def test_owner_connects_to_the_periscope_database(services):
    with psycopg2.connect(services.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        cur.execute("select current_user, current_database(), current_setting('port')")
        assert cur.fetchone() == (
            services.postgres_owner_user,
            services.postgres_db,
            str(services.postgres_port),
        )


def test_bi_reader_reads_what_the_owner_loads(services, owned_table):
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


def test_wrong_password_is_refused(services):
    dsn = services.postgres_dsn("owner").replace(
        services.postgres_owner_password.get_secret_value(), "wrong"
    )
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(dsn)
