"""A real PostgreSQL server in the project's own data directory, on a project port.

The server binaries come from the Debian `postgresql` package (`make setup` installs it
when missing). The cluster lives in `<local_dir>/postgres/` and listens on 127.0.0.1 at
`postgres_port` (5433 by default, so it does not fight a system server on 5432).
`start` also makes sure the `periscope` database, the owner role that loads data and
the read-only `bi_reader` role for BI tools exist, with the passwords from settings, and
that `bi_reader` can read the `marts` schema (dbt's star schema) and nothing else.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

from periscope.errors import MissingDependencyError, ServiceError
from periscope.services._process import (
    ServiceStatus,
    ensure_ports_free,
    pid_alive,
    tail,
    wait_until,
)
from periscope.settings import Settings

log = logging.getLogger(__name__)

_SUPERUSER = "postgres"
# The loader's schema (owner only) and dbt's star schema (the one schema BI reads).
LAKE_SCHEMA = "lake"
MARTS_SCHEMA = "marts"
# PostgreSQL refuses to run as root; as root we run it as this system user instead.
_ROOT_RUNS_AS = "postgres"
_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.<port>"


class PostgresServer:
    """The project's PostgreSQL cluster."""

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = self._server_root()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.socket_dir = self._socket_dir()

    # --- public ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.settings.postgres_host}:{self.settings.postgres_port}"

    def start(self) -> str:
        """Start the server unless it runs; create the database and roles; wait for a login."""
        bin_dir = self.bin_dir()
        if self._running(bin_dir):
            self.bootstrap()
            return "already running"
        ensure_ports_free(
            self.name, self.settings.postgres_host, {"postgres_port": self.settings.postgres_port}
        )
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)

        options = " ".join(
            shlex.quote(opt)
            for opt in (
                "-c",
                f"port={self.settings.postgres_port}",
                "-c",
                f"listen_addresses={self.settings.postgres_host}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
            )
        )
        result = self._run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.settings.service_start_timeout_s)),
                "-o",
                options,
            ],
        )
        if result.returncode != 0:
            raise ServiceError(
                f"postgres failed to start ({result.stdout.strip()} {result.stderr.strip()}). "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        wait_until(
            self._accepts_superuser,
            service=self.name,
            timeout_s=self.settings.service_start_timeout_s,
            log=self.log_file,
        )
        self.bootstrap()
        return f"started (pid {self._pid()})"

    def stop(self) -> str:
        bin_dir = self.bin_dir()
        if not self._running(bin_dir):
            return "not running"
        pid = self._pid()
        result = self._run(
            [str(bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"]
        )
        if result.returncode != 0:
            raise ServiceError(f"postgres failed to stop: {result.stdout}{result.stderr}")
        return f"stopped (pid {pid})"

    def status(self) -> ServiceStatus:
        try:
            running = self._running(self.bin_dir())
        except MissingDependencyError as exc:
            return ServiceStatus(
                self.name, False, False, self.address, None, self.log_file, str(exc)
            )
        return ServiceStatus(
            name=self.name,
            running=running,
            healthy=running and self.healthy(),
            address=self.address,
            pid=self._pid() if running else None,
            log=self.log_file,
            detail=f"database {self.settings.postgres_db}, data in {self.data_dir}",
        )

    def crashed(self) -> bool:
        """True when `postmaster.pid` names a server that is gone: it died without a stop (a
        clean shutdown removes the file), which the watchdog of `periscope up` restarts."""
        pid = self._pid()
        return pid is not None and not pid_alive(pid)

    def healthy(self) -> bool:
        """True when the owner role can log in over TCP with its password."""
        import psycopg2

        try:
            psycopg2.connect(self.settings.postgres_dsn("owner"), connect_timeout=3).close()
        except psycopg2.Error:
            return False
        return True

    def bin_dir(self) -> Path:
        """The folder with initdb, pg_ctl and postgres (the newest Debian cluster version)."""
        candidates: list[Path] = []
        if self.settings.postgres_bin_dir:
            candidates.append(self.settings.postgres_bin_dir)
        debian = sorted(
            _DEBIAN_PG_ROOT.glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates += debian
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
        for folder in candidates:
            if all((folder / program).exists() for program in _SERVER_PROGRAMS):
                return folder
        raise MissingDependencyError(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found; "
            "`make setup` installs them (Debian package postgresql), "
            "or set PERISCOPE_POSTGRES_BIN_DIR."
        )

    def bootstrap(self) -> None:
        """Create or update the database, roles, schemas and grants; safe to repeat.

        Passwords follow settings; `bi_reader` ends up with SELECT on `marts` only, also in a
        database an earlier version set up with wider grants.
        """
        from psycopg2 import sql

        s = self.settings
        owner, bi, db = s.postgres_owner_user, s.postgres_bi_user, s.postgres_db
        with self._superuser_connection("postgres") as conn, conn.cursor() as cur:
            for role, password in (
                (owner, s.postgres_owner_password),
                (bi, s.postgres_bi_password),
            ):
                cur.execute("select 1 from pg_roles where rolname = %s", (role,))
                verb = "alter" if cur.fetchone() else "create"
                cur.execute(
                    sql.SQL(verb + " role {} with login password %s").format(sql.Identifier(role)),
                    (password.get_secret_value(),),
                )
            cur.execute("select 1 from pg_database where datname = %s", (db,))
            if not cur.fetchone():
                cur.execute(
                    sql.SQL("create database {} owner {}").format(
                        sql.Identifier(db), sql.Identifier(owner)
                    )
                )
            # No JIT: the warehouse's queries scan a few million rows, where compiling them
            # costs more than it saves (the lake-to-marts reconciliation: 3.3 s, 3.5 s of it
            # spent compiling; BI's dashboard queries alike).
            cur.execute(sql.SQL("alter database {} set jit = off").format(sql.Identifier(db)))
            # BI tools must never write, even into a table someone forgot to lock down.
            cur.execute(
                sql.SQL("alter role {} set default_transaction_read_only = on").format(
                    sql.Identifier(bi)
                )
            )

        with self._superuser_connection(db) as conn, conn.cursor() as cur:
            ident = {
                "db": sql.Identifier(db),
                "owner": sql.Identifier(owner),
                "bi": sql.Identifier(bi),
                "lake": sql.Identifier(LAKE_SCHEMA),
                "marts": sql.Identifier(MARTS_SCHEMA),
            }
            for statement in (
                "revoke all on database {db} from public",
                "grant connect, temporary on database {db} to {owner}",
                "grant connect on database {db} to {bi}",
                "revoke all on schema public from public",
                "grant usage, create on schema public to {owner}",
                # Earlier versions let BI read everything the owner created: take that back.
                "alter default privileges for role {owner} revoke usage on schemas from {bi}",
                "alter default privileges for role {owner} revoke select on tables from {bi}",
                "alter default privileges for role {owner} revoke select on sequences from {bi}",
                "create schema if not exists {lake} authorization {owner}",
                "create schema if not exists {marts} authorization {owner}",
            ):
                cur.execute(sql.SQL(statement).format(**ident))
            # BI reads the marts and nothing else, also in a database made by an earlier version.
            cur.execute(
                "select nspname from pg_namespace where nspname not in (%s, 'information_schema') "
                "and nspname not like 'pg\\_%%'",
                (MARTS_SCHEMA,),
            )
            for (schema,) in cur.fetchall():
                for statement in (
                    "revoke all on schema {schema} from {bi}",
                    "revoke all on all tables in schema {schema} from {bi}",
                    "revoke all on all sequences in schema {schema} from {bi}",
                ):
                    cur.execute(sql.SQL(statement).format(schema=sql.Identifier(schema), **ident))
            for statement in (
                "grant usage on schema {marts} to {bi}",
                "grant select on all tables in schema {marts} to {bi}",
                # Tables dbt (as the owner) creates in marts later are readable by BI too.
                "alter default privileges for role {owner} in schema {marts} "
                "grant select on tables to {bi}",
            ):
                cur.execute(sql.SQL(statement).format(**ident))

    # --- private -----------------------------------------------------------------------
    def _superuser_connection(self, dbname: str):  # type: ignore[no-untyped-def]
        """A superuser connection over the server's private Unix socket (trust auth)."""
        import psycopg2

        conn = psycopg2.connect(
            host=str(self.socket_dir),
            port=self.settings.postgres_port,
            user=_SUPERUSER,
            dbname=dbname,
            connect_timeout=5,
        )
        conn.autocommit = True
        return closing(conn)

    def _accepts_superuser(self) -> bool:
        import psycopg2

        try:
            with self._superuser_connection("postgres"):
                return True
        except psycopg2.Error:
            return False

    def _initdb(self, bin_dir: Path) -> None:
        log.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        result = self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                # Superuser only over the private socket; every TCP login needs a password.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ],
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _running(self, bin_dir: Path) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = self._run([str(bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)])
        return result.returncode == 0

    def _pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        if _as_root():
            command = ["runuser", "-u", _ROOT_RUNS_AS, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def _prepare_dirs(self) -> None:
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if _as_root():
            try:
                user = pwd.getpwnam(_ROOT_RUNS_AS)
            except KeyError:
                raise MissingDependencyError(
                    f"running as root, but there is no '{_ROOT_RUNS_AS}' system user to run "
                    "PostgreSQL as; `make setup` installs the postgresql package, which adds it."
                ) from None
            for folder in (self.root, self.socket_dir):
                shutil.chown(folder, user.pw_uid, user.pw_gid)

    def _server_root(self) -> Path:
        preferred = self.settings.local_dir / "postgres"
        if not _as_root() or _reachable_by(_ROOT_RUNS_AS, preferred):
            return preferred
        # As root in a private folder (e.g. a `mktemp -d` clone) the server's user cannot
        # reach .local/: keep the cluster in a per-checkout folder under the temp dir.
        digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:10]
        fallback = Path(tempfile.gettempdir()) / f"periscope-{digest}" / "postgres"
        log.info("the %s user cannot reach %s; using %s", _ROOT_RUNS_AS, preferred, fallback)
        return fallback

    def _socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred)) + len("/.s.PGSQL.65535") <= _SOCKET_PATH_MAX:
            return preferred
        # Deep checkouts overflow the Unix socket path limit: use a short per-project folder.
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"periscope-pg-{getpass.getuser()}-{digest}"


def _as_root() -> bool:
    return os.geteuid() == 0


def _reachable_by(user: str, folder: Path) -> bool:
    """Whether `user` can traverse every existing ancestor of `folder`."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    for parent in [folder, *folder.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == entry.pw_uid or st.st_mode & stat.S_IXOTH:
            continue
        if st.st_gid == entry.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        return False
    return True
