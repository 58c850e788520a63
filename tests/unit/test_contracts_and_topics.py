from __future__ import annotations

import pytest

from periscope.contracts import CONTRACTS, get_contract
from periscope.settings import Settings
from periscope.topics import topic_specs


def test_every_contract_has_four_topics_named_by_role():
    assert set(CONTRACTS) >= {"weather", "air_quality"}
    assert get_contract("weather").topics == {
        "raw": "weather-raw",
        "dlq": "weather-dlq",
        "features": "weather-features",
        "predictions": "weather-predictions",
    }


def test_unknown_source_names_the_known_ones():
    with pytest.raises(KeyError, match="air_quality, weather"):
        get_contract("taxi")


def test_topic_specs_take_partitions_and_retention_from_settings(monkeypatch):
    monkeypatch.setenv("PERISCOPE_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("PERISCOPE_TOPIC_RETENTION_HOURS", "2")
    monkeypatch.setenv("PERISCOPE_DLQ_RETENTION_HOURS", "5")
    specs = {s.name: s for s in topic_specs(Settings())}
    assert len(specs) == 4 * len(CONTRACTS)
    assert {s.partitions for s in specs.values()} == {6}
    assert specs["weather-raw"].configs["retention.ms"] == str(2 * 3_600_000)
    assert specs["air_quality-dlq"].configs["retention.ms"] == str(5 * 3_600_000)
