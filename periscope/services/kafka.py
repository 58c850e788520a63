"""A real Apache Kafka broker in KRaft mode (broker and controller in one JVM).

The jars come from Maven Central through `make setup` (jvm/kafka-broker/pom.xml);
the broker runs with `java` as a background process whose state lives in
`<local_dir>/kafka/` (config, formatted log dirs, pid file, log).
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid

from periscope.errors import MissingDependencyError, ServiceError
from periscope.services._process import BackgroundService, ensure_ports_free
from periscope.settings import Settings

log = logging.getLogger(__name__)

_LOG4J2 = """\
# Written by periscope; the broker's log goes to stdout, which periscope sends to kafka.log.
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaBroker(BackgroundService):
    """The project's single-node Kafka broker."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.local_dir / "kafka"
        self.data_dir = self.root / "data"
        self.config_file = self.root / "server.properties"
        self.log4j_file = self.root / "log4j2.properties"
        self.pidfile = self.root / "kafka.pid"
        self.log_file = self.root / "kafka.log"
        self.jars_dir = settings.jars_dir / "kafka"

    # --- public ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.settings.kafka_host}:{self.settings.kafka_port}"

    @property
    def detail(self) -> str:
        return f"KRaft, data in {self.data_dir}"

    def start(self) -> str:
        """Start the broker unless it runs already; wait until it answers a metadata request."""
        if running := self._already_running():
            return running
        java = self._java()
        ensure_ports_free(
            self.name,
            self.settings.kafka_host,
            {
                "kafka_port": self.settings.kafka_port,
                "kafka_controller_port": self.settings.kafka_controller_port,
            },
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._server_properties())
        self.log4j_file.write_text(_LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage(java)
        # SIGTERM on stop is the broker's controlled shutdown.
        process = self._launch([*self._java_command(java), "kafka.Kafka", str(self.config_file)])
        return f"started (pid {process.pid})"

    def healthy(self) -> bool:
        """True when the broker answers a metadata request."""
        from kafka import KafkaAdminClient  # imported here: the CLI should start fast
        from kafka.errors import RetriableError  # connection refused, timeouts

        not_answering = (RetriableError, OSError)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.address, request_timeout_ms=3000, bootstrap_timeout_ms=3000
            )
        except not_answering:
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except not_answering:
            return False
        finally:
            admin.close()

    # --- private -----------------------------------------------------------------------
    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise MissingDependencyError(
                "java was not found on PATH; Kafka and Spark need Java 17. "
                "`make setup` installs it (Debian package openjdk-17-jre-headless)."
            )
        if not any(self.jars_dir.glob("kafka_*.jar")):
            raise MissingDependencyError(
                f"the Kafka broker jars are missing from {self.jars_dir}; "
                "`make setup` fetches them with mvn."
            )
        return java

    def _java_command(self, java: str) -> list[str]:
        heap = self.settings.kafka_heap
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{self.jars_dir}/*",
        ]

    def _format_storage(self, java: str) -> None:
        """Format the KRaft log dir once, with a fresh cluster id."""
        cluster_id = _new_cluster_id()
        log.info("formatting Kafka storage in %s (cluster id %s)", self.data_dir, cluster_id)
        result = subprocess.run(
            [
                *self._java_command(java),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")

    def _server_properties(self) -> str:
        s = self.settings
        host = s.kafka_host
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{host}:{s.kafka_port},CONTROLLER://{host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Topics are created explicitly (`periscope topics create`), never by a typo.
            "auto.create.topics.enable": "false",
            "num.partitions": str(s.topic_partitions),
            # One broker: internal topics cannot have more than one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": str(s.topic_retention_hours),
        }
        body = "\n".join(f"{key}={value}" for key, value in lines.items())
        return f"# Written by periscope from its settings at every start; edit settings instead.\n{body}\n"


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, no leading '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id
