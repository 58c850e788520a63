"""What `/health` reports: Kafka and Postgres reachable, each lake table's freshness, the model
versions gold scores with and the registry's champions. Each check is small and never raises."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from periscope.settings import Settings

__all__ = ["Champions", "champions", "kafka_status", "lake_freshness", "postgres_status"]


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def kafka_status(settings: Settings, timeout_s: float = 2.0) -> dict[str, Any]:
    """Up when a broker of the bootstrap list answers a metadata request."""
    servers = settings.kafka_bootstrap_servers
    errors = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        error = _reachable(host, int(port), timeout_s)
        if error is None:
            break
        errors.append(error)
    else:
        return {"up": False, "detail": "; ".join(errors)}
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": servers}).list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException: the port is open but no broker answers
        return {"up": False, "detail": str(exc)}
    return {
        "up": True,
        "detail": f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics",
    }


def postgres_status(settings: Settings, timeout_s: int = 2) -> dict[str, Any]:
    """Up when the bi role can log in and run a query."""
    import psycopg2

    try:
        conn = psycopg2.connect(settings.postgres_dsn("bi"), connect_timeout=timeout_s)
        try:
            with conn.cursor() as cur:
                cur.execute("select 1")
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return {"up": False, "detail": str(exc).strip().splitlines()[0]}
    return {"up": True, "detail": f"{settings.postgres_host}:{settings.postgres_port}"}


def lake_freshness(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Every lake table: its version, when it was last committed and how long ago."""
    from deltalake import DeltaTable

    from periscope.lake import tables

    found = []
    for t in tables(settings):
        history = DeltaTable(t.path).history(1)
        stamp = history[0].get("timestamp") if history else None
        committed = None if stamp is None else datetime.fromtimestamp(stamp / 1000, tz=UTC)
        found.append(
            {
                "table": t.name,
                "version": t.version,
                "committed_at": committed,
                "age_s": None if committed is None else round((now - committed).total_seconds(), 3),
            }
        )
    return found


def champions(settings: Settings, model_names: list[str]) -> dict[str, int | None]:
    """The registry's `champion` version of each model (None: no champion, or no registry)."""
    from pathlib import Path

    uri = settings.mlflow_uri
    # An absent SQLite file is no registry: MLflow would create an empty one.
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return dict.fromkeys(model_names)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found: dict[str, int | None] = {}
    for name in model_names:
        try:
            found[name] = int(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            found[name] = None
    return found


class Champions:
    """`champions()` cached: the first MLflow call in a process imports MLflow and opens its
    store (half a minute on a busy laptop), so lookups run in the background, at most every
    `ttl_s`, and /health shows the last answer (None until there is one)."""

    def __init__(self, settings: Settings, ttl_s: float = 60.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self._known: dict[str, int | None] = {}
        self._looked_up_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, model_names: list[str]) -> dict[str, int | None]:
        stale = time.monotonic() - self._looked_up_at >= self.ttl_s
        if (stale or set(model_names) - set(self._known)) and not self._lock.locked():
            self._looked_up_at = time.monotonic()
            threading.Thread(target=self.lookup, args=(model_names,), daemon=True).start()
        return {name: self._known.get(name) for name in model_names}

    def lookup(self, model_names: list[str]) -> dict[str, int | None]:
        """Ask the registry now (blocking)."""
        with self._lock:
            try:
                self._known = champions(self.settings, model_names)
            except Exception:  # the registry store is unreadable: report no champions
                self._known = dict.fromkeys(model_names)
            return self._known
