"""The one place a SparkSession is built: jars, Delta, master URL and safe table defaults.

The Kafka connector and Delta jars are fetched by `make setup` (jvm/spark/pom.xml) and
handed to Spark with `spark.jars`; nothing is resolved through Ivy at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from periscope import MissingDependencyError, Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["DELTA_READER_SAFE_DEFAULTS", "build_spark_session", "spark_jars"]

# Table features that delta-rs, polars and DuckDB cannot read stay off for every new table.
DELTA_READER_SAFE_DEFAULTS: dict[str, str] = {
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.databricks.delta.properties.defaults.columnMapping.mode": "none",
    "spark.databricks.delta.properties.defaults.enableRowTracking": "false",
}

_LOG4J2 = Path(__file__).with_name("log4j2.properties")
_REQUIRED_JARS = ("delta-spark_", "delta-storage-", "spark-sql-kafka-0-10_")


def spark_jars(settings: Settings | None = None) -> list[Path]:
    """The jars Spark needs on `spark.jars`; a clear error when `make setup` has not run."""
    settings = settings or get_settings()
    folder = settings.jars_dir / "spark"
    jars = sorted(folder.glob("*.jar"))
    missing = [
        prefix for prefix in _REQUIRED_JARS if not any(j.name.startswith(prefix) for j in jars)
    ]
    if missing:
        raise MissingDependencyError(
            f"Spark jars missing from {folder} ({', '.join(p.rstrip('_-') for p in missing)}); "
            "`make setup` fetches them with mvn."
        )
    return jars


def build_spark_session(
    app_name: str,
    *,
    settings: Settings | None = None,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A SparkSession with Delta enabled and the Kafka connector on the classpath.

    `master` overrides the `spark_master` setting; `conf` adds or overrides Spark options.
    """
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    options: dict[str, str] = {
        "spark.jars": ",".join(str(jar) for jar in spark_jars(settings)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.enabled": str(settings.spark_ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",  # jobs log their own progress
        # Delta rebuilds table state with this many tasks (default 50): far too many locally.
        "spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions),
        # Streaming state in RocksDB: bounded JVM heap however many keys a window holds.
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.sql.warehouse.dir": str(settings.local_dir / "spark-warehouse"),
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_LOG4J2}",
        **DELTA_READER_SAFE_DEFAULTS,
        **_loopback_only(master or settings.spark_master),
        **(conf or {}),
    }
    if _loopback_only(master or settings.spark_master):
        # The web UI binds SPARK_LOCAL_IP (else every interface); read when the JVM starts.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name).master(master or settings.spark_master)
    for key, value in options.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _loopback_only(master: str) -> dict[str, str]:
    """A local-mode driver listens on 127.0.0.1 only (its RPC and block manager ports).

    Spark binds the host's address otherwise; a cluster master needs that reachable address,
    so only `local[...]` is pinned (a `conf` override still wins).
    """
    if not master.startswith("local"):
        return {}
    return {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}
