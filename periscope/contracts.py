"""Source contracts: each stream described once, declaratively.

Every stage reads the contract (topic names now; schema, measures and windows as the
stages that need them land) instead of hard-coding names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CONTRACTS", "SourceContract", "TopicRole", "get_contract"]

TopicRole = Literal["raw", "dlq", "features", "predictions"]
TOPIC_ROLES: tuple[TopicRole, ...] = ("raw", "dlq", "features", "predictions")


@dataclass(frozen=True)
class SourceContract:
    """What a stream is: its name, Kafka key and event-time field."""

    name: str
    description: str
    key_field: str = "station_id"
    event_time_field: str = "timestamp"

    def topic(self, role: TopicRole) -> str:
        """The Kafka topic for one role, e.g. `weather-raw`."""
        return f"{self.name}-{role}"

    @property
    def topics(self) -> dict[TopicRole, str]:
        return {role: self.topic(role) for role in TOPIC_ROLES}


CONTRACTS: dict[str, SourceContract] = {
    c.name: c
    for c in (
        SourceContract("weather", "Hourly weather observations from many city stations."),
        SourceContract("air_quality", "Hourly gas-sensor readings of the UCI air-quality station."),
    )
}


def get_contract(name: str) -> SourceContract:
    """The contract for a source name; a clear error names the known sources."""
    try:
        return CONTRACTS[name]
    except KeyError:
        known = ", ".join(sorted(CONTRACTS))
        raise KeyError(f"unknown source {name!r}; known sources: {known}") from None
