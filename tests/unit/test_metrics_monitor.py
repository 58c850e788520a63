"""`periscope monitor`'s pure part: scrapes -> rows of throughput, lag, latency."""

from __future__ import annotations

import math

from serving.monitor import group_rows, histogram_quantile, parse_exposition, stage_rows

BEFORE = """
periscope_stage_records_in_total{stage="bronze",source="weather"} 1000.0
periscope_stage_records_out_total{stage="bronze",source="weather"} 1000.0
"""
AFTER = """
periscope_stage_records_in_total{stage="bronze",source="weather"} 1500.0
periscope_stage_records_out_total{stage="bronze",source="weather"} 1400.0
periscope_stage_batch_duration_seconds_sum{stage="bronze",source="weather"} 6.0
periscope_stage_batch_duration_seconds_count{stage="bronze",source="weather"} 4.0
periscope_stage_offsets_behind_latest{stage="bronze",source="weather",stat="max"} 250.0
periscope_stage_offsets_behind_latest{stage="bronze",source="weather",stat="min"} 3.0
"""
SCORE = """
periscope_stage_records_in_total{stage="score",source="taxi"} 10.0
periscope_gold_latency_seconds_bucket{source="taxi",kind="event",le="1.0"} 50.0
periscope_gold_latency_seconds_bucket{source="taxi",kind="event",le="2.0"} 90.0
periscope_gold_latency_seconds_bucket{source="taxi",kind="event",le="5.0"} 100.0
periscope_gold_latency_seconds_bucket{source="taxi",kind="event",le="+Inf"} 100.0
periscope_ingest_records_produced_total{topic="taxi-raw"} 40.0
"""


def test_rates_come_from_the_difference_of_two_scrapes():
    (row,) = stage_rows(
        {"bronze": parse_exposition(BEFORE)}, {"bronze": parse_exposition(AFTER)}, 2.0
    )
    assert (row.stage, row.source) == ("bronze", "weather")
    assert row.records_in == 1500 and row.in_per_s == 250.0 and row.out_per_s == 200.0
    assert row.behind == "250 offsets"  # the worst partition, not the best
    assert row.batch_s == 1.5


def test_a_stage_first_seen_counts_from_zero_and_score_shows_latency_p95():
    rows = stage_rows({}, {"score": parse_exposition(SCORE)}, 5.0)
    score, produced = rows
    assert score.in_per_s == 2.0
    assert score.latency_p95_s == 3.5  # the 95th of 100 lies halfway into (2, 5]
    assert (produced.source, produced.records_out, produced.out_per_s) == ("taxi-raw", 40.0, 8.0)


def test_histogram_quantile_of_an_empty_or_overflowing_histogram():
    assert histogram_quantile(0.95, {}) is None
    assert histogram_quantile(0.95, {1.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {1.0: 1.0, math.inf: 10.0}) == 1.0


def test_consumer_group_rows():
    (row,) = group_rows({"dashboard-consumers": {"weather-predictions": 1234}})
    assert (row.stage, row.source, row.behind) == (
        "group dashboard-consumers",
        "weather-predictions",
        "1,234 records",
    )
