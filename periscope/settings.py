"""One place for configuration: `PERISCOPE_*` environment variables, then `.env`, then defaults.

The defaults describe one machine (Spark `local[*]`, local Ray, the project's own Kafka
broker and PostgreSQL server). A cluster is the same code with other settings: a Spark
master URL, a Ray address, a Kafka bootstrap list and an `s3a://` lake root.
Passwords have no defaults: they come from the environment or `.env`
(`make setup` writes a `.env` with random local passwords when there is none).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from periscope.errors import PeriscopeError

__all__ = ["PROJECT_DIR", "Settings", "get_settings", "instance_ports"]

# The checkout this package was installed from (`pip install -e .`).
PROJECT_DIR = Path(__file__).resolve().parents[1]


def _default_shared_dir() -> Path:
    """`../shared` beside the checkout, used when `PERISCOPE_SHARED_DIR` is not set.

    Raises PeriscopeError naming the setting when that folder does not exist.
    """
    beside = PROJECT_DIR.parent / "shared"
    if not beside.is_dir():
        raise PeriscopeError(
            f"no shared inputs folder: {beside} does not exist. Set PERISCOPE_SHARED_DIR (in the "
            "environment or .env) to the folder that holds data/ and schemas/."
        )
    return beside


class Settings(BaseSettings):
    """Periscope settings; each field `x` is read from `PERISCOPE_X`."""

    model_config = SettingsConfigDict(
        env_prefix="PERISCOPE_",
        env_file=PROJECT_DIR / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- where things live -------------------------------------------------------------
    project_dir: Path = PROJECT_DIR
    local_dir: Path = Field(
        default=PROJECT_DIR / ".local",
        description="Run-time state of local services, fetched jars and logs (git-ignored).",
    )
    jars_dir: Path = Field(
        default=PROJECT_DIR / ".local" / "jars",
        description="Jars fetched by `make setup`: kafka/ for the broker, spark/ for spark.jars.",
    )
    shared_dir: Path = Field(
        default_factory=_default_shared_dir,
        description="Shared read-only inputs: data/ (real datasets) and schemas/.",
    )
    lake_root: str = Field(
        default=str(PROJECT_DIR / "lake"),
        description="Root of the Delta lake: a local path, or s3a://bucket/prefix on a cluster.",
    )

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="",
        description="Comma-separated host:port list; empty means the local broker.",
    )
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    kafka_compression: Literal["lz4", "gzip", "none"] = "lz4"
    producer_linger_ms: int = Field(default=20, ge=0)
    producer_batch_bytes: int = Field(default=256 * 1024, ge=1024)
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_retention_hours: int = Field(default=7 * 24, ge=1)
    dlq_retention_hours: int = Field(default=30 * 24, ge=1)

    # --- PostgreSQL ----------------------------------------------------------------------
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5433
    postgres_db: str = "periscope"
    postgres_owner_user: str = "periscope"
    postgres_owner_password: SecretStr
    postgres_bi_user: str = "bi_reader"
    postgres_bi_password: SecretStr
    postgres_bin_dir: Path | None = Field(
        default=None,
        description="Folder holding initdb/pg_ctl/postgres; found automatically when empty.",
    )

    # --- ingest ------------------------------------------------------------------------
    open_meteo_base_url: str = Field(
        default="https://api.open-meteo.com",
        description="Open-Meteo forecast API root (tests point it at a local replay server).",
    )
    open_meteo_timeout_s: float = Field(default=10.0, gt=0)
    live_poll_interval_s: float = Field(
        default=120.0, ge=60.0, le=300.0, description="How often `ingest live` polls (1-5 minutes)."
    )
    live_stations: str = Field(
        default="", description="Comma-separated station ids for `ingest live`; empty = all."
    )

    # --- streams -------------------------------------------------------------------------
    bronze_max_offsets_per_trigger: int = Field(
        default=500_000,
        ge=1,
        description="Upper bound of Kafka records per bronze micro-batch (big batches amortise commits).",
    )
    bronze_engine: Literal["direct", "spark"] = Field(
        default="direct",
        description="What `bronze run` uses: `direct` (librdkafka consumer group + delta-rs, "
        "one machine's fastest) or `spark` (the Spark job, for a cluster's master URL).",
    )
    bronze_batch_records: int = Field(
        default=100_000, ge=1, description="Records per commit of the direct bronze writer."
    )
    bronze_group: str = Field(
        default="periscope-bronze",
        min_length=1,
        description="Kafka consumer group of the direct bronze writers: processes in one group "
        "share the partitions; another group (a second lake, a bench) reads the topics again.",
    )
    bronze_batch_seconds: float = Field(
        default=1.0,
        gt=0,
        description="The direct bronze writer commits at least this often while records arrive.",
    )
    silver_engine: Literal["auto", "direct", "spark"] = Field(
        default="auto",
        description="What `silver run` uses: `direct` (delta-rs reads bronze's log, Arrow "
        "validation, no JVM), `spark` (the Spark query, for a cluster's master URL) or `auto`: "
        "the engine a lake's silver tables were started with, else direct on one machine and "
        "Spark on a cluster.",
    )
    silver_batch_records: int = Field(
        default=250_000, ge=1, description="Bronze records per batch of the direct silver engine."
    )
    silver_spark_max_bytes_per_trigger: str = Field(
        default="8m",
        description="Bronze bytes per micro-batch of the Spark silver query (Delta's "
        "maxBytesPerTrigger, whole files). Each micro-batch is collected to the driver: a 1M "
        "backlog in one batch peaked at 3.6 GB in Python, in 8 MB batches at 1.7 GB, as fast.",
    )
    silver_poll_seconds: float = Field(
        default=0.25, gt=0, description="How often the direct silver engine looks for new bronze."
    )
    stream_trigger_interval: str = Field(
        default="2 seconds", description="Micro-batch interval of continuously running streams."
    )

    # --- engines -------------------------------------------------------------------------
    spark_master: str = "local[*]"
    spark_driver_memory: str = "2g"
    spark_shuffle_partitions: int = Field(default=4, ge=1)
    spark_ui_enabled: bool = True
    ray_address: str = Field(default="", description="Ray cluster address; empty = local Ray.")
    ray_host: str = Field(
        default="127.0.0.1",
        description="Address of a local Ray runtime: a loopback address keeps every Ray server "
        "(GCS, raylet, workers, agents) on loopback; another address is the node's own, and Ray "
        "then listens on every interface (its default).",
    )

    # --- models --------------------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking + registry URI; empty = SQLite under <local_dir>/mlflow.",
    )
    train_workers: int = Field(
        default=2, ge=1, description="Ray workers (CPUs) that train series in parallel."
    )
    retrain_cron: str = Field(
        default="0 3 * * *", description="When the scheduler runs `retrain` (cron, UTC)."
    )
    score_actors: int = Field(
        default=2,
        ge=1,
        description="Ray actors in the `periscope score` pool (models loaded once each).",
    )
    score_actor_niceness: int = Field(
        default=0,
        ge=-20,
        le=19,
        description="Scheduling niceness of the scoring actors. Ray starts its workers at 15 (below "
        "everything else), which starves scoring when Spark and Kafka share the machine.",
    )
    score_round_rows: int = Field(
        default=20_000,
        ge=1,
        description="At most about this many feature windows per scoring round (one gold commit).",
    )
    score_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a running `periscope score` looks for new windows.",
    )

    # --- the REST API (`periscope api`) ------------------------------------------------
    api_host: str = Field(
        default="127.0.0.1", description="Interface `periscope api` binds (0.0.0.0: every one)."
    )
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="How often the API looks for a new version of a gold table it keeps warm. "
        "A new version costs ~1.3 s of CPU on 2.2M gold rows (the index is rebuilt), so a "
        "stream committing every 2 s is followed at most this often.",
    )

    # --- metrics (Prometheus) ------------------------------------------------------------
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface each stage's Prometheus endpoint binds."
    )
    metrics_bronze_port: int = Field(default=9461, ge=0, le=65535, description="0: no endpoint.")
    metrics_silver_port: int = Field(default=9462, ge=0, le=65535, description="0: no endpoint.")
    metrics_score_port: int = Field(default=9463, ge=0, le=65535, description="0: no endpoint.")
    metrics_ingest_port: int = Field(default=9464, ge=0, le=65535, description="0: no endpoint.")
    prometheus_port: int = Field(
        default=9090, ge=1, le=65535, description="`periscope services up prometheus` listens here."
    )
    prometheus_scrape_interval_s: int = Field(default=5, ge=1)

    # --- the live dashboard (`periscope dashboard`) ----------------------------------------
    dashboard_host: str = Field(
        default="127.0.0.1", description="Interface `periscope dashboard` binds."
    )
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    dashboard_refresh_s: float = Field(
        default=5.0, ge=1.0, description="How often the dashboard's panels re-read the lake."
    )

    # --- orchestration (`periscope orchestrate`, `periscope lake maintain`) ---------------
    dagster_host: str = Field(
        default="127.0.0.1", description="Interface the Dagster UI binds (0.0.0.0: every one)."
    )
    dagster_port: int = Field(default=3000, ge=1, le=65535)
    dagster_storage: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Where Dagster keeps runs and events: SQLite under <local_dir>/dagster, or "
        "the project's Postgres database (its tables in the owner's schema public).",
    )
    warehouse_cron: str = Field(
        default="5 * * * *",
        description="When Dagster loads the warehouse and builds dbt (cron, UTC); a sensor "
        "also does when new silver or gold versions appear.",
    )
    maintenance_cron: str = Field(
        default="45 * * * *",
        description="When Dagster runs `lake maintain` (cron, UTC). Hourly: at 1,000 records/s "
        "bronze gains a file a second between runs.",
    )
    vacuum_retention_hours: int = Field(
        default=7 * 24,
        ge=7 * 24,
        description="Vacuum deletes files older versions held after this long: time travel "
        "works within it and a stream restarted within it still finds its checkpoint's files.",
    )

    # --- behaviour of `periscope services` -----------------------------------------------
    service_start_timeout_s: float = Field(default=90.0, gt=0)

    @field_validator("local_dir", "jars_dir", "shared_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Services change directory (PostgreSQL's lock file lives under local_dir), so a
        # relative PERISCOPE_LOCAL_DIR is taken from where the command was started.
        return path.expanduser().absolute()

    @model_validator(mode="after")
    def _default_bootstrap_to_local_broker(self) -> Settings:
        if not self.kafka_bootstrap_servers:
            self.kafka_bootstrap_servers = f"{self.kafka_host}:{self.kafka_port}"
        return self

    # --- derived paths -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The real datasets (see data/PROVENANCE.md there); read in place, never copied."""
        return self.shared_dir / "data"

    def lake_path(self, table: str) -> str:
        """Where a lake table lives, e.g. `lake_path("bronze/weather_raw")` (local or s3a://)."""
        return f"{self.lake_root.rstrip('/')}/{table}"

    def checkpoint_path(self, query: str) -> str:
        """One checkpoint folder per streaming query, under `<lake_root>/_checkpoints/`."""
        return self.lake_path(f"_checkpoints/{query}")

    @property
    def mlflow_uri(self) -> str:
        """The MLflow tracking/registry store: the setting, else a local SQLite file."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.local_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        """Where new experiments keep model artifacts (beside the local SQLite store)."""
        return (self.local_dir / "mlflow" / "artifacts").as_uri()

    # --- derived connection strings ------------------------------------------------------
    def postgres_dsn(self, role: str = "owner") -> str:
        """A libpq URI for the `owner` (loads data) or `bi` (read-only) role."""
        if role == "owner":
            user, password = self.postgres_owner_user, self.postgres_owner_password
        elif role == "bi":
            user, password = self.postgres_bi_user, self.postgres_bi_password
        else:
            raise ValueError(f"unknown role {role!r}: expected 'owner' or 'bi'")
        secret = quote(password.get_secret_value(), safe="")
        return (
            f"postgresql://{quote(user, safe='')}:{secret}"
            f"@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"
        )


# A test instance's ports: these base ports plus 1000 x instance, so the integration tests and
# the benches of one instance never collide with another's, nor with the defaults of a demo.
_INSTANCE_BASE_PORTS = {
    "PERISCOPE_KAFKA_PORT": 19092,
    "PERISCOPE_KAFKA_CONTROLLER_PORT": 19093,
    "PERISCOPE_POSTGRES_PORT": 15433,
    "PERISCOPE_API_PORT": 18000,
    "PERISCOPE_DASHBOARD_PORT": 18501,
    "PERISCOPE_DAGSTER_PORT": 13000,
    "PERISCOPE_SUPERSET_PORT": 18088,
    "PERISCOPE_METRICS_BRONZE_PORT": 19461,
    "PERISCOPE_METRICS_SILVER_PORT": 19462,
    "PERISCOPE_METRICS_SCORE_PORT": 19463,
    "PERISCOPE_METRICS_INGEST_PORT": 19464,
}


def instance_ports(instance: int) -> dict[str, str]:
    """The `PERISCOPE_*_PORT` overrides of test instance `instance` (0, 1, 2, ...): every port a
    service or stage listens on, shifted by 1000 x instance (`PERISCOPE_TEST_INSTANCE`).

    >>> instance_ports(2)["PERISCOPE_KAFKA_PORT"], instance_ports(0)["PERISCOPE_POSTGRES_PORT"]
    ('21092', '15433')
    """
    if instance < 0:
        raise ValueError(f"a test instance is 0 or more, not {instance}")
    return {name: str(port + 1000 * instance) for name, port in _INSTANCE_BASE_PORTS.items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (no import-time side effects).

    Raises PeriscopeError naming the variables that are missing or invalid.
    """
    try:
        return Settings()  # type: ignore[call-arg]  # required fields come from the environment
    except ValidationError as exc:
        names = [
            f"PERISCOPE_{'_'.join(map(str, e['loc'])).upper()} ({e['msg']})" for e in exc.errors()
        ]
        raise PeriscopeError(
            "invalid or missing settings: "
            + ", ".join(names)
            + ". Set them in the environment or in .env (`make setup` writes a .env "
            "from .env.example with local passwords)."
        ) from exc
