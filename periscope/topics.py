"""Kafka topics for every source contract: `<source>-raw|dlq|features|predictions`.

Partitions, replication and retention come from settings; creating is idempotent
(existing topics are left alone and reported as such).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from periscope.contracts import CONTRACTS, SourceContract
from periscope.errors import ServiceError
from periscope.settings import Settings

__all__ = [
    "TopicInfo",
    "TopicSpec",
    "create_topics",
    "describe_topics",
    "list_topics",
    "records_written",
    "recreate_topics",
    "topic_specs",
]

_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project wants: name, partitions, replication and configs."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the broker reports it."""

    name: str
    partitions: int
    replication_factor: int
    retention_ms: int | None


def topic_specs(
    settings: Settings, contracts: Iterable[SourceContract] = CONTRACTS.values()
) -> list[TopicSpec]:
    """The topics of the given contracts, with settings applied (pure: no broker needed)."""
    specs = []
    for contract in contracts:
        for role, name in contract.topics.items():
            # Dead letters wait for a human, so they are kept longer than the stream.
            hours = (
                settings.dlq_retention_hours if role == "dlq" else settings.topic_retention_hours
            )
            specs.append(
                TopicSpec(
                    name=name,
                    partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication_factor,
                    configs={"retention.ms": str(hours * _HOUR_MS), "cleanup.policy": "delete"},
                )
            )
    return specs


def _admin(settings: Settings):  # type: ignore[no-untyped-def]
    from kafka import KafkaAdminClient
    from kafka.errors import RetriableError

    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id="periscope-admin",
            request_timeout_ms=15_000,
            bootstrap_timeout_ms=10_000,
        )
    except RetriableError as exc:
        raise ServiceError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
            "is it running? `periscope services up` starts the local broker."
        ) from exc


def create_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> dict[str, bool]:
    """Create the missing topics; returns {topic: created?} (False = it existed already)."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        outcome = {spec.name: False for spec in specs if spec.name in existing}
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            spec.replication_factor,
                            topic_configs=spec.configs,
                        )
                    ],
                    validate_only=False,
                )
                outcome[spec.name] = True
            except TopicAlreadyExistsError:  # created by someone else meanwhile
                outcome[spec.name] = False
        return {spec.name: outcome[spec.name] for spec in specs}
    finally:
        admin.close()


def recreate_topics(
    settings: Settings, contracts: list[SourceContract], *, timeout_s: float = 120
) -> None:
    """Delete the contracts' topics and create them again, empty (a test or benchmark that
    must see only its own records on a broker earlier runs wrote to). Deleting is asynchronous
    on the broker, so this waits until the names are gone and then until creation succeeds."""
    import time

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    specs = topic_specs(settings, contracts)
    names = {spec.name for spec in specs}
    doomed = sorted(names & set(admin.list_topics(timeout=30).topics))
    if doomed:
        for done in admin.delete_topics(doomed, operation_timeout=30).values():
            done.result()
    deadline = time.monotonic() + timeout_s
    while names & set(admin.list_topics(timeout=30).topics):
        if time.monotonic() > deadline:
            raise ServiceError(f"{sorted(names)} were not deleted within {timeout_s:.0f} s")
        time.sleep(0.5)
    while True:
        try:
            create_topics(settings, specs)
        except Exception:  # a topic still being deleted refuses creation for a moment
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if names <= set(admin.list_topics(timeout=30).topics):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"{sorted(names)} were not recreated within {timeout_s:.0f} s")
        time.sleep(0.5)


def list_topics(settings: Settings, *, include_internal: bool = False) -> list[str]:
    """Topic names on the cluster, sorted; internal ones (`__consumer_offsets`) hidden."""
    admin = _admin(settings)
    try:
        names = admin.list_topics()
    finally:
        admin.close()
    return sorted(n for n in names if include_internal or not n.startswith("__"))


def describe_topics(settings: Settings, names: list[str] | None = None) -> list[TopicInfo]:
    """Partitions, replication and retention of the named topics (default: all, sorted)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(settings)
    try:
        names = (
            sorted(names)
            if names
            else sorted(n for n in admin.list_topics() if not n.startswith("__"))
        )
        if not names:
            return []
        described = {t["name"]: t for t in admin.describe_topics(names)}
        # kafka-python answers {"topic": {name: {config: {"value": ...}}}}.
        configs = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, configs=["retention.ms"])
                for name in names
            ],
            config_filter="all",
        ).get("topic", {})
    finally:
        admin.close()
    infos = []
    for name in names:
        topic = described.get(name)
        if topic is None or topic.get("error_code"):
            raise KeyError(f"topic {name!r} does not exist")
        partitions = topic["partitions"]
        infos.append(
            TopicInfo(
                name=name,
                partitions=len(partitions),
                replication_factor=len(partitions[0]["replica_nodes"]) if partitions else 0,
                retention_ms=_int_or_none(
                    configs.get(name, {}).get("retention.ms", {}).get("value")
                ),
            )
        )
    return infos


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def records_written(settings: Settings, topic: str) -> int:
    """Records ever written to a topic: the sum of its partitions' end offsets (0 if it is absent)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","))
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise ServiceError(
            f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({exc.__class__.__name__}); "
            "start it with `periscope services up`"
        ) from None
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()
