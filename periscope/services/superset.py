"""Apache Superset, installed into its own venv and run as a project service.

Superset cannot share the project's lock (it needs SQLAlchemy < 2, pandas < 2.2, numpy < 2.3,
pyarrow < 19), so `start` installs it with uv into `superset_venv` (default
`.local/superset/venv`) from `warehouse/bi/superset/requirements.lock`, and reinstalls only
when that lock changes. Its metadata is SQLite in `<local_dir>/superset/`; the admin user and
`SECRET_KEY` come from `.env` (`make setup` writes random ones; an older `.env` without them gets
values derived from its Postgres owner password, stable from run to run). The web server
(gunicorn) listens on 127.0.0.1 at `superset_port`. Dashboards are provisioned by
`periscope bi provision` (warehouse/bi), not here: the service knows nothing about the marts.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from periscope.errors import MissingDependencyError, ServiceError
from periscope.services._process import BackgroundService, ensure_ports_free
from periscope.settings import PROJECT_DIR, Settings

log = logging.getLogger(__name__)

LOCK_FILE = PROJECT_DIR / "warehouse" / "bi" / "superset" / "requirements.lock"
# First start of a fresh metadata database runs every migration: allow it more than a restart.
_FIRST_START_TIMEOUT_S = 600.0

_CONFIG = """\
# Written by periscope at every start from its settings; edit .env instead.
import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
SQLALCHEMY_DATABASE_URI = {metadata_uri!r}
# Charts' results are cached per dataset (each dataset's cache_timeout, set in the bundle).
DATA_CACHE_CONFIG = {{"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 240}}
# One local user, no mail.
SUPERSET_WEBSERVER_PORT = {port}
ENABLE_PROXY_FIX = False
RATELIMIT_STORAGE_URI = "memory://"
TALISMAN_ENABLED = False
FEATURE_FLAGS = {{"DASHBOARD_RBAC": False}}
"""


class SupersetSettings(BaseSettings):
    """Superset's own settings (`PERISCOPE_SUPERSET_*`, from the environment or `.env`)."""

    model_config = SettingsConfigDict(
        env_prefix="PERISCOPE_SUPERSET_",
        env_file=PROJECT_DIR / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=1, le=65535)
    admin_user: str = "admin"
    admin_password: SecretStr | None = None
    secret_key: SecretStr | None = None
    venv: Path = Field(
        default=PROJECT_DIR / ".local" / "superset" / "venv",
        description="Superset's own venv; shared by test instances so it installs once.",
    )
    workers: int = Field(default=1, ge=1, description="gunicorn worker processes.")


def derived_secret(seed: str, purpose: str) -> str:
    """A stable secret for `purpose` derived from an existing one (for an older `.env`).

    >>> derived_secret("pw", "a") == derived_secret("pw", "a") != derived_secret("pw", "b")
    True
    """
    return hmac.new(seed.encode(), f"periscope-superset-{purpose}".encode(), "sha256").hexdigest()[
        :32
    ]


def lock_digest(lock_text: str, python: str) -> str:
    """What the installed venv must match: the lock's content and the Python it runs on."""
    return hashlib.sha256(f"{python}\n{lock_text}".encode()).hexdigest()


class SupersetServer(BackgroundService):
    """The project's Superset web server."""

    name = "superset"
    kill_group_on_timeout = True  # gunicorn's workers too

    def __init__(self, settings: Settings, superset: SupersetSettings | None = None) -> None:
        self.settings = settings
        self.superset = superset or SupersetSettings()
        self.root = settings.local_dir / "superset"
        self.venv = self.superset.venv
        self.config_file = self.root / "superset_config.py"
        self.metadata_db = self.root / "superset.db"
        self.pidfile = self.root / "superset.pid"
        self.log_file = self.root / "superset.log"
        self.setup_stamp = self.root / ".set-up"

    # --- public ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.superset.host}:{self.superset.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def admin_user(self) -> str:
        return self.superset.admin_user

    @property
    def admin_password(self) -> str:
        if self.superset.admin_password is not None:
            return self.superset.admin_password.get_secret_value()
        seed = self.settings.postgres_owner_password.get_secret_value()
        return derived_secret(seed, "admin-password")

    @property
    def secret_key(self) -> str:
        if self.superset.secret_key is not None:
            return self.superset.secret_key.get_secret_value()
        seed = self.settings.postgres_owner_password.get_secret_value()
        return derived_secret(seed, "secret-key")

    @property
    def detail(self) -> str:
        return f"{self.url}, login {self.admin_user}, metadata in {self.metadata_db}"

    def start(self) -> str:
        """Install (once per lock), set up the metadata (once per version), start, wait."""
        if running := self._already_running():
            return running
        ensure_ports_free(self.name, self.superset.host, {"superset_port": self.superset.port})

        self.root.mkdir(parents=True, exist_ok=True)
        installed = self.install()
        self.config_file.write_text(
            _CONFIG.format(metadata_uri=f"sqlite:///{self.metadata_db}", port=self.superset.port)
        )
        self.set_up_metadata()
        # SIGTERM on stop lets gunicorn's workers finish their requests.
        process = self._launch(
            [
                str(self.venv / "bin" / "gunicorn"),
                "--bind",
                self.address,
                "--workers",
                str(self.superset.workers),
                "--worker-class",
                "gthread",
                "--threads",
                "8",
                "--timeout",
                "120",
                "--limit-request-line",
                "0",
                "superset.app:create_app()",
            ],
            env=self.environment(),
            cwd=self.root,
            timeout_s=max(self.settings.service_start_timeout_s, 120.0),
        )
        how = "installed and started" if installed else "started"
        return f"{how} (pid {process.pid}), login {self.admin_user}"

    def healthy(self) -> bool:
        """True when the web server answers its health check."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=3) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def environment(self) -> dict[str, str]:
        """The environment every `superset` command and the server run with."""
        return {
            **os.environ,
            "SUPERSET_CONFIG_PATH": str(self.config_file),
            "SUPERSET_SECRET_KEY": self.secret_key,
            "FLASK_APP": "superset",
            "PYTHONWARNINGS": "ignore",
        }

    def superset_command(
        self, *args: str, timeout_s: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `superset <args>` in its venv; raise with its output when it fails."""
        result = subprocess.run(
            [str(self.venv / "bin" / "superset"), *args],
            env=self.environment(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"`superset {' '.join(args[:1])}` failed (exit {result.returncode}):\n"
                f"{_last_lines(result.stdout + result.stderr)}"
            )
        return result

    def install(self) -> bool:
        """Install Superset from the lock unless the venv already matches it; True if it did.

        Test instances share the venv: one installs while the others wait for it."""
        python = _base_python()
        digest = lock_digest(LOCK_FILE.read_text(), python)
        stamp = self.venv / ".periscope-lock"
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        with (self.venv.parent / f".{self.venv.name}.install-lock").open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
            if stamp.exists() and stamp.read_text().strip() == digest:
                return False
            self._install_venv(python)
            stamp.write_text(digest + "\n")
        return True

    def _install_venv(self, python: str) -> None:
        uv = _uv()
        log.info("installing Superset into %s from %s (once per lock)", self.venv, LOCK_FILE)
        shutil.rmtree(self.venv, ignore_errors=True)
        for command in (
            [uv, "venv", "--quiet", "--python", python, str(self.venv)],
            [
                uv,
                "pip",
                "sync",
                "--quiet",
                "--compile-bytecode",  # read by every start, never written (the Makefile says why)
                "--python",
                str(self.venv / "bin" / "python"),
                str(LOCK_FILE),
            ],
        ):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ServiceError(
                    f"installing Superset failed: {' '.join(command)}\n"
                    f"{_last_lines(result.stdout + result.stderr)}"
                )

    def set_up_metadata(self) -> None:
        """Migrate the metadata, create roles and the admin; skipped when nothing changed."""
        wanted = hashlib.sha256(
            "\n".join(
                (
                    (self.venv / ".periscope-lock").read_text(),
                    str(self.metadata_db),
                    self.admin_user,
                    self.admin_password,
                    self.secret_key,
                )
            ).encode()
        ).hexdigest()
        if (
            self.metadata_db.exists()
            and self.setup_stamp.exists()
            and self.setup_stamp.read_text().strip() == wanted
        ):
            return
        log.info("setting up Superset's metadata in %s", self.metadata_db)
        self.superset_command("db", "upgrade")
        self.superset_command("init")
        user = ("--username", self.admin_user, "--password", self.admin_password)
        created = self.superset_command(
            "fab",
            "create-admin",
            *user,
            "--firstname",
            "Periscope",
            "--lastname",
            "Admin",
            "--email",
            f"{self.admin_user}@localhost",
        )
        if "already exists" in created.stdout + created.stderr:
            self.superset_command("fab", "reset-password", *user)
        self.setup_stamp.write_text(wanted + "\n")


def _base_python() -> str:
    """The interpreter the project's venv was made from (Superset 6.1 runs on 3.11)."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(candidate if candidate.exists() else Path(sys.executable).resolve())


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise MissingDependencyError(
            "uv was not found (beside the project's python or on PATH); `make setup` installs it."
        )
    return found


def _last_lines(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
