"""Local services that the project installs and runs itself: a Kafka broker and PostgreSQL.

Each service is a background process owned by the project, with its state under
`<local_dir>/<service>/` (git-ignored). `up` waits until it answers; `down` stops it.
"""

from periscope.services._process import ServiceStatus
from periscope.services.kafka import KafkaBroker
from periscope.services.postgres import PostgresServer

__all__ = ["SERVICE_NAMES", "KafkaBroker", "PostgresServer", "ServiceStatus", "get_service"]

SERVICE_NAMES = ("kafka", "postgres")


def get_service(name: str, settings):  # type: ignore[no-untyped-def]
    """The service object for `kafka` or `postgres`."""
    if name == "kafka":
        return KafkaBroker(settings)
    if name == "postgres":
        return PostgresServer(settings)
    raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")
