"""The taxi source: its contract, its reader over the real TLC file, its rules and its chaos."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ingest.chaos import BROKEN_RULE, MALFORMED_KINDS, malformed_kinds, malformed_records
from ingest.datasets import TAXI_READER, read_taxi, read_zones
from ingest.replay import build_messages, prepare_frame
from periscope.contracts import (
    TAXI,
    ContractError,
    Measure,
    Rule,
    SourceContract,
    Text,
    get_contract,
)
from periscope.settings import PROJECT_DIR, Settings

# What scripts/taxi_reasons.py prints and the README's taxi section shows.
DOCUMENTED = {
    "out_of_range": 35,
    "dropoff_before_pickup": 0,
    "negative_fare": 176,
    "absurd_fare": 0,
    "zero_distance_with_fare": 3217,
    "unknown_zone": 0,
    "passenger_count_out_of_range": 301,
    "over_12_hours": 199,
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    settings = Settings(_env_file=None, postgres_owner_password="unit", postgres_bi_password="unit")
    return settings.data_dir


@pytest.fixture(scope="module")
def trips(data_dir) -> pl.DataFrame:
    return read_taxi(data_dir)


def _holds(frame: pl.DataFrame, condition: str) -> list[bool]:
    """The SQL condition per row, as DuckDB reads it (null = passes)."""
    con = duckdb.connect()
    con.register("trips", frame.to_arrow())
    return [row[0] for row in con.sql(f"select coalesce({condition}, false) from trips").fetchall()]


# --- the contract --------------------------------------------------------------------------
def test_the_contract_names_topics_key_event_id_and_zone_windows():
    assert get_contract("taxi") is TAXI
    assert TAXI.topics == {
        "raw": "taxi-raw",
        "dlq": "taxi-dlq",
        "features": "taxi-features",
        "predictions": "taxi-predictions",
    }
    assert (TAXI.key_field, TAXI.event_time_field, TAXI.event_id_field) == (
        "pu_location_id",
        "pickup_time",
        "trip_id",
    )
    assert (TAXI.window.size, TAXI.window.slide) == ("15 minutes", "5 minutes")
    columns = dict(TAXI.feature_columns())
    for name in ("fare_amount_mean", "fare_amount_max", "trip_distance_mean", "duration_min_mean"):
        assert columns[name] == "double"
    assert columns["payment_type_credit_card_count"] == "long"
    assert TAXI.forecast_names == ("event_count",)
    assert [r.reason for r in TAXI.rules] == list(DOCUMENTED)[1:]


def _contract(*rules: Rule) -> SourceContract:
    return SourceContract(
        "toy",
        "a toy",
        fields=(Text("zone", required=True), Measure("fare", "USD", -10, 10)),
        key_field="zone",
        rules=rules,
    )


def test_an_inconsistent_rule_fails_naming_contract_and_rule():
    assert _contract(Rule("negative", "fare < 0", "below zero", ("fare",))).rules
    with pytest.raises(ContractError, match="contract 'toy': rule 'x' reads 'tip'"):
        _contract(Rule("x", "tip < 0", "no tip field", ("tip",)))
    with pytest.raises(ContractError, match="rule 'x' reads 'tip'"):
        _contract(Rule("x", "fare < 0", "breaks with a tip", ("fare",), (("tip", 1.0),)))
    with pytest.raises(ContractError, match="rule reason 'Bad Name' is not a lowercase"):
        _contract(Rule("Bad Name", "fare < 0", "", ("fare",)))
    with pytest.raises(ContractError, match="rule reason 'x' is used twice"):
        _contract(Rule("x", "fare < 0", "", ("fare",)), Rule("x", "fare > 5", "", ("fare",)))
    with pytest.raises(ContractError, match="rule 'x' names no fields"):
        _contract(Rule("x", "true", "", ()))


# --- the reader ----------------------------------------------------------------------------
def test_the_reader_gives_every_trip_of_january_once_in_pickup_order(trips, data_dir):
    # 68,211 in the file; 4 pickups outside January 2023 (one in 2009) are left out.
    assert trips.height == 68_207
    assert set(TAXI.wire_fields) == set(trips.columns)
    assert trips["trip_id"].n_unique() == trips.height
    assert trips[TAXI.event_time_field].is_sorted()
    # NYC local time (EST, UTC-5 in January) as UTC.
    assert trips[TAXI.event_time_field].min() == datetime(2023, 1, 1, 5, 1, 31, tzinfo=UTC)
    assert trips[TAXI.event_time_field].max() == datetime(2023, 2, 1, 4, 58, 23, tzinfo=UTC)
    zones = set(read_zones(data_dir)["location_id"])
    assert len(zones) == 265 and set(trips["pu_location_id"]) <= zones
    assert TAXI_READER.entities(data_dir) == [str(i) for i in range(1, 266)]
    payments = Counter(trips["payment_type"].to_list())
    assert payments["credit_card"] == 40_684 and payments["cash"] == 22_630
    assert payments[None] == 4_324  # the TLC's rows without payment, rate code or passengers
    assert set(trips["rate_code"].drop_nulls()) <= set(TAXI.field("rate_code").levels)  # type: ignore[attr-defined]


def test_trip_ids_are_stable_across_reads_and_zones(trips, data_dir):
    again = read_taxi(data_dir, zones=["74", "75"])
    assert set(again["pu_location_id"]) == {"74", "75"}
    mine = trips.filter(pl.col("pu_location_id").is_in(["74", "75"]))
    assert again["trip_id"].to_list() == mine["trip_id"].to_list()


def test_durations_are_dropoff_minus_pickup_in_minutes(data_dir, trips):
    raw = pl.read_parquet(data_dir / "nyc_tlc" / "green_tripdata_2023-01.parquet")
    longest = raw.filter(pl.col("lpep_pickup_datetime") >= datetime(2023, 1, 1)).select(
        (pl.col("lpep_dropoff_datetime") - pl.col("lpep_pickup_datetime")).max()
    )
    assert trips["duration_min"].max() == pytest.approx(longest.item().total_seconds() / 60)
    assert trips["duration_min"].min() >= 0  # the file has no trip ending before it starts


# --- the rules ------------------------------------------------------------------------------
# The rules again, written independently in polars: DuckDB reading the contract's SQL must agree.


def _unknown(zone: str) -> pl.Expr:
    return ~pl.col(zone).cast(pl.Int64, strict=False).is_between(1, 265).fill_null(False)


BY_HAND: dict[str, pl.Expr] = {
    "dropoff_before_pickup": pl.col("duration_min") < 0,
    "negative_fare": pl.col("fare_amount") < 0,
    "absurd_fare": pl.col("fare_amount") > 500,
    "zero_distance_with_fare": (pl.col("trip_distance") == 0) & (pl.col("fare_amount") > 0),
    "unknown_zone": _unknown("pu_location_id") | _unknown("do_location_id"),
    "passenger_count_out_of_range": ~pl.col("passenger_count").is_between(1, 6),
    "over_12_hours": pl.col("duration_min") > 720,
}


@pytest.mark.parametrize("rule", TAXI.rules, ids=lambda r: r.reason)
def test_each_rule_picks_the_trips_a_hand_written_predicate_picks(rule, trips):
    sample = pl.concat([trips, _broken_trips(trips)], how="vertical_relaxed")
    expected = sample.select(BY_HAND[rule.reason].fill_null(False)).to_series().to_list()
    assert _holds(sample, rule.condition) == expected
    assert any(expected)  # each rule is broken by its own violation at least


def _broken_trips(trips: pl.DataFrame) -> pl.DataFrame:
    """One clean real trip per rule, changed by that rule's `violation`."""
    clean = _clean_trip(trips)
    rows = [clean | dict(rule.violation) for rule in TAXI.rules]
    return pl.DataFrame(rows, schema=trips.schema)


def _clean_trip(trips: pl.DataFrame) -> dict:
    conditions = " or ".join(f"coalesce({r.condition}, false)" for r in TAXI.rules)
    con = duckdb.connect()
    con.register("trips", trips.to_arrow())
    clean = con.sql(f"select * from trips where not ({conditions}) limit 1").pl()
    return clean.row(0, named=True)


def test_each_violation_breaks_its_own_rule_and_no_other(trips):
    broken = _broken_trips(trips)
    for i, rule in enumerate(TAXI.rules):
        row = broken.slice(i, 1)
        assert [r.reason for r in TAXI.rules if _holds(row, r.condition)[0]] == [rule.reason]


def test_the_documented_counts_are_what_the_real_file_gives(trips):
    spec = importlib.util.spec_from_file_location(
        "taxi_reasons", PROJECT_DIR / "scripts" / "taxi_reasons.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.reasons(trips, TAXI)
    assert dict(zip(table["reason"], table["first"], strict=True)) == DOCUMENTED
    # Counted by hand, a trip breaking several rules is counted under each.
    for reason, expr in BY_HAND.items():
        breaking = table.filter(pl.col("reason") == reason)["breaking"].item()
        assert breaking == trips.select(expr.fill_null(False).sum()).item(), reason


# --- chaos and replay -------------------------------------------------------------------------
def test_taxi_chaos_adds_broken_rules_to_the_field_kinds(trips):
    assert malformed_kinds(TAXI) == (*MALFORMED_KINDS, BROKEN_RULE)
    assert BROKEN_RULE not in malformed_kinds(get_contract("weather"))
    clean = _clean_trip(trips)
    base = {
        k: (v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v)
        for k, v in clean.items()
    }
    records = malformed_records(TAXI, 16 * 4, seed=5, base_records=[base])
    assert Counter(kind for kind, _, _ in records) == {k: 8 for k in malformed_kinds(TAXI)}
    broken = [json.loads(v) for kind, _, v in records if kind == BROKEN_RULE]
    reasons = set()
    for record in broken:
        row = pl.DataFrame([record], schema=trips.schema | {"pickup_time": pl.Utf8})
        failing = [r.reason for r in TAXI.rules if _holds(row, r.condition)[0]]
        assert len(failing) == 1, record
        reasons.add(failing[0])
        assert record["trip_id"] == base["trip_id"]  # only the rule's fields changed
    assert len(reasons) > 3  # the rules are drawn at random


def test_a_replay_sends_wire_records_and_broken_rules(trips):
    frame = prepare_frame(trips.head(400), TAXI, now=datetime(2026, 1, 1, tzinfo=UTC))
    messages = list(build_messages(frame, TAXI, bad_rate=0.1, seed=2))
    good = [m for m in messages if m.kind is None]
    assert len(good) == 400 and len(messages) == 444
    assert Counter(m.kind for m in messages if m.kind) == Counter(
        malformed_kinds(TAXI)[i % 8] for i in range(44)
    )
    first = json.loads(good[0].value)
    assert list(first) == list(TAXI.wire_fields)
    assert good[0].key == first["pu_location_id"].encode()
    assert first["trip_id"] == trips["trip_id"][0]
    # Rebased so the last pickup is now; the duration travels with the pickup.
    assert json.loads(good[-1].value)["pickup_time"] == "2026-01-01T00:00:00Z"
    assert first["duration_min"] == trips["duration_min"][0]
    again = list(build_messages(frame, TAXI, bad_rate=0.1, seed=2))
    assert [m.value for m in again] == [m.value for m in messages]
