"""The audit's equations, on counts alone (no Kafka, no lake)."""

from __future__ import annotations

import pytest

from periscope.audit import SourceAudit, reconcile
from periscope.contracts import get_contract
from spark_streaming.features import feature_columns, interval_seconds


def _audit(**changes) -> SourceAudit:
    tables = {"observations": 90, "quarantined": 6, "duplicates": 4, "late": 2}
    fields = {
        "source": "weather",
        "kafka": 120,
        "bronze": 110,
        "processed": 100,
        "tables": dict(tables),
        "ledger": dict(tables),
    }
    fields.update(changes)
    return SourceAudit(**fields)


def test_consistent_counts_add_up_with_records_in_flight():
    audit = reconcile(_audit())
    assert audit.problems == []
    assert (audit.not_landed, audit.not_processed) == (10, 10)


def test_in_flight_fails_only_when_caught_up_is_required():
    assert any("not caught up" in p for p in reconcile(_audit(), require_caught_up=True).problems)
    caught_up = _audit(kafka=100, bronze=100)
    assert reconcile(caught_up, require_caught_up=True).problems == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"bronze": 130}, "Kafka only ever had"),
        ({"processed": 111}, "bronze has 110"),
        ({"processed": 99}, "observations + quarantined + duplicates = 100"),
    ],
)
def test_each_broken_equation_is_named(changes, expected):
    problems = reconcile(_audit(**changes)).problems
    assert any(expected in p for p in problems), problems


def test_a_table_that_disagrees_with_the_ledger_is_named():
    audit = _audit()
    audit.tables["quarantined"] += 1
    audit.processed += 1  # keeps the sum equation true: only the ledger check can catch it
    problems = reconcile(audit).problems
    assert problems == ["quarantined: table has 7 rows, silver's ledger says 6"]


def test_window_intervals_and_feature_columns():
    assert interval_seconds("5 minutes") == 300 and interval_seconds("6 hours") == 21600
    with pytest.raises(ValueError, match="unsupported interval"):
        interval_seconds("a fortnight")
    columns = feature_columns(get_contract("weather"))
    assert columns[:4] == ["station_id", "window_start", "window_end", "reading_count"]
    assert "pressure_trend" in columns and len(columns) == 4 + 5 * 6
