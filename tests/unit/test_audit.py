"""The audit's equations, on counts alone (no Kafka, no lake)."""

from __future__ import annotations

import pytest

from periscope.audit import SourceAudit, reconcile
from periscope.contracts import get_contract
from periscope.windows import feature_columns, interval_seconds


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


def test_gold_is_checked_only_once_it_exists():
    no_gold = reconcile(_audit(windows=50, latest_batch=3), require_caught_up=True)
    assert no_gold.problems == ["not caught up: 10 not in bronze, 10 not processed"]


@pytest.mark.parametrize(
    ("gold", "mark", "caught_up", "problem"),
    [
        (50, 3, True, None),  # every window scored
        (40, 2, False, None),  # scoring behind silver: fewer predictions are expected
        (40, 3, True, "holds 40 predictions for 50 feature windows"),  # scored yet missing
        (51, 3, True, "gold has 51 predictions for 50"),  # windows silver never had
    ],
)
def test_gold_predictions_match_feature_windows_once_caught_up(gold, mark, caught_up, problem):
    audit = reconcile(_audit(kafka=110, windows=50, latest_batch=3, gold=gold, gold_mark=mark))
    assert audit.gold_caught_up is caught_up
    if problem is None:
        assert audit.problems == []
    else:
        assert len(audit.problems) == 1 and problem in audit.problems[0]


def test_gold_behind_silver_fails_only_when_caught_up_is_required():
    behind = _audit(kafka=110, bronze=110, processed=100, windows=50, latest_batch=3, gold=40)
    behind.gold_mark = 2
    assert reconcile(behind).problems == []
    assert reconcile(behind, require_caught_up=True).problems == [
        "not caught up: 0 not in bronze, 10 not processed",
        "gold not caught up: scored through silver batch 2, silver is at 3",
    ]
