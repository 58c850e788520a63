"""Local services that the project installs and runs itself: a Kafka broker, PostgreSQL,
Superset and Prometheus (those two started only when named: `periscope services up superset`).

Each service is a background process owned by the project, with its state under
`<local_dir>/<service>/` (git-ignored). `up` waits until it answers; `down` stops it.
"""

from periscope.services._process import ServiceStatus
from periscope.services.kafka import KafkaBroker
from periscope.services.postgres import PostgresServer
from periscope.services.prometheus import PrometheusServer
from periscope.services.superset import SupersetServer

__all__ = [
    "DEFAULT_SERVICE_NAMES",
    "SERVICE_NAMES",
    "KafkaBroker",
    "PostgresServer",
    "PrometheusServer",
    "ServiceStatus",
    "SupersetServer",
    "get_service",
]

SERVICE_NAMES = ("kafka", "postgres", "superset", "prometheus")
# What `periscope services up/down/status` act on when no name is given (Superset and
# Prometheus are opt-in).
DEFAULT_SERVICE_NAMES = ("kafka", "postgres")


def get_service(name: str, settings):  # type: ignore[no-untyped-def]
    """The service object for `kafka`, `postgres`, `superset` or `prometheus`."""
    if name == "kafka":
        return KafkaBroker(settings)
    if name == "postgres":
        return PostgresServer(settings)
    if name == "superset":
        return SupersetServer(settings)
    if name == "prometheus":
        return PrometheusServer(settings)
    raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")
