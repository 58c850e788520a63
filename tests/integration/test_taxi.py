"""Real NYC taxi trips through Kafka, bronze and silver (real Kafka and Spark).

A day and a half of the TLC January file is replayed with chaos, one trip per rule is sent
broken that way, and the first trips are replayed again. Bronze must hold exactly what Kafka holds;
every bronze row must be an observation, a quarantined record (with its reason) or a
duplicate; the real trips that break the contract's checks must be quarantined for the reason
an independent DuckDB evaluation gives; and the zone windows must equal the DuckDB reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl
import pytest

from ingest.datasets import read_taxi
from ingest.producer import encode_record
from ingest.replay import build_messages, prepare_frame, replay
from ml.data import feature_windows
from ml.windows import window_features
from periscope.audit import audit_source
from periscope.contracts import TAXI
from periscope.lake import read_delta
from periscope.messages import Publisher
from periscope.topics import create_topics, topic_specs
from spark_streaming.bronze import run_bronze
from spark_streaming.silver import run_silver
from spark_streaming.silver.validate import reason_codes

pytestmark = pytest.mark.integration

UNTIL = datetime(2023, 1, 2, 11, tzinfo=UTC)  # the first 30 hours: 1,538 trips
BAD_RATE, SEED = 0.03, 17
RESENT = 40  # the first trips replayed again: duplicates by trip id


def expected_reasons(trips: pl.DataFrame) -> list[str | None]:
    """The reason silver should give each trip, evaluated by DuckDB: a required measure out
    of its range first, then the contract's rules in order (None: an observation)."""
    ranges = " or ".join(
        f"{m.name} not between {m.valid_min} and {m.valid_max}" for m in TAXI.measures if m.required
    )
    checks = [("out_of_range", ranges), *((r.reason, r.condition) for r in TAXI.rules)]
    case = " ".join(f"when coalesce({c}, false) then '{r}'" for r, c in checks)
    con = duckdb.connect()
    con.register("trips", trips.to_arrow())
    return [row[0] for row in con.sql(f"select case {case} end from trips").fetchall()]


def _wire(row: dict) -> dict:
    return {
        k: v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v
        for k, v in row.items()
    }


@pytest.fixture(scope="module")
def taxi(services, spark, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("taxi")
    settings = services.model_copy(update={"lake_root": str(root / "lake"), "local_dir": root})
    create_topics(settings, topic_specs(settings, [TAXI]))
    report = replay(settings, TAXI.name, until=UNTIL, bad_rate=BAD_RATE, seed=SEED, progress=False)

    history = prepare_frame(read_taxi(settings.data_dir), TAXI, until=UNTIL)
    reasons = expected_reasons(history)
    history = history.with_columns(pl.Series("expected", reasons, dtype=pl.Utf8))
    good = history.filter(pl.col("expected").is_null())
    # One trip per rule, a clean one changed by the rule's violation, under a new trip id.
    broken = [
        _wire(row) | dict(rule.violation) | {"trip_id": f"broken-{rule.reason}"}
        for rule, row in zip(TAXI.rules, good.drop("expected").iter_rows(named=True), strict=False)
    ]
    publisher = Publisher(settings, client_id="test-taxi")
    try:
        extra = publisher.publish(
            TAXI.topic("raw"), [(r["pu_location_id"].encode(), encode_record(r)) for r in broken]
        )
    finally:
        publisher.close()
    # The first trips replayed again: the same trip ids, so duplicates (or, for a trip that
    # breaks a check, quarantined again).
    again = replay(settings, TAXI.name, until=UNTIL, limit=RESENT, progress=False)
    run_bronze(settings, [TAXI], available_now=True, spark=spark)
    run_silver(settings, [TAXI], available_now=True, spark=spark)
    yield {
        "settings": settings,
        "report": report,
        "extra": extra,
        "history": history,
        "good": good,
        "again": again,
        "replayed_again": history.head(RESENT),
    }


def _table(taxi: dict, entity: str, columns: list[str] | None = None):
    return read_delta(taxi["settings"].lake_path(TAXI.table("silver", entity)), columns)


def test_bronze_is_kafka_and_every_record_is_an_observation_quarantined_or_a_duplicate(taxi):
    report, history, good = taxi["report"], taxi["history"], taxi["good"]
    assert report.good == history.height == 1_538 and report.bad > 40
    audit = audit_source(taxi["settings"], TAXI, require_caught_up=True)
    assert audit.problems == []
    again = taxi["replayed_again"]
    assert taxi["again"].sent == RESENT
    assert audit.kafka == audit.bronze == report.sent + taxi["extra"] + RESENT
    assert audit.tables["observations"] == good.height
    duplicates = again["expected"].null_count()
    assert audit.tables["duplicates"] == duplicates > 0
    assert audit.tables["late"] == 0  # the replay is in pickup order, the watermark an hour
    bad_real = history.height - good.height + (RESENT - duplicates)
    quarantined = bad_real + report.bad + len(TAXI.rules)
    assert audit.tables["quarantined"] == quarantined
    assert good.height + quarantined + duplicates == audit.bronze


def test_observations_are_the_good_trips_and_a_replayed_trip_is_a_duplicate(taxi):
    observations = _table(taxi, "observations")
    assert sorted(observations["trip_id"].to_pylist()) == sorted(taxi["good"]["trip_id"])
    schema = {f.name: str(f.type) for f in observations.schema}
    assert schema["pu_location_id"] == "string" and schema["passenger_count"] == "int64"
    assert schema["fare_amount"] == "double" and schema["payment_type"] == "string"
    duplicates = _table(taxi, "duplicates", ["trip_id"])
    again = taxi["replayed_again"].filter(pl.col("expected").is_null())
    assert sorted(duplicates["trip_id"].to_pylist()) == sorted(again["trip_id"])


def test_every_quarantined_record_has_its_reason_and_real_trips_the_expected_one(taxi):
    quarantine = pl.from_arrow(_table(taxi, "quarantine"))
    assert isinstance(quarantine, pl.DataFrame)
    assert quarantine["reason"].null_count() == 0
    assert set(quarantine["reason"]) <= set(reason_codes(TAXI))
    assert quarantine["reason_detail"].null_count() == 0
    # Each rule's broken trip, for that rule's reason, with the values it read.
    by_id = dict(zip(quarantine["trip_id"], quarantine["reason"], strict=True))
    for rule in TAXI.rules:
        assert by_id[f"broken-{rule.reason}"] == rule.reason
    detail = quarantine.filter(pl.col("trip_id") == "broken-zero_distance_with_fare")
    assert detail["reason_detail"].item() == (
        "a fare charged for no distance: trip_distance=0.0, fare_amount=18.5"
    )
    # Real trips that break a check: found by their exact wire bytes, with DuckDB's reason.
    history = taxi["history"]
    sent = [m for m in build_messages(history.drop("expected"), TAXI) if m.kind is None]
    expected = {
        m.value: reason
        for m, reason in zip(sent, history["expected"], strict=True)
        if reason is not None
    }
    found = {
        value: reason
        for value, reason in zip(quarantine["value"], quarantine["reason"], strict=True)
        if value in expected
    }
    assert found == expected
    assert {"zero_distance_with_fare", "passenger_count_out_of_range"} <= set(found.values())


def test_zone_windows_equal_the_duckdb_reference(taxi):
    silver = feature_windows(taxi["settings"], TAXI).sort_values(
        [TAXI.key_field, "window_start"], ignore_index=True
    )
    good = taxi["good"].rename({TAXI.event_time_field: "event_time"}).to_pandas()
    reference = window_features(good, TAXI).sort_values(
        [TAXI.key_field, "window_start"], ignore_index=True
    )
    assert len(silver) == len(reference) > 1_000
    assert silver[TAXI.key_field].tolist() == reference[TAXI.key_field].tolist()
    assert (silver["window_start"].values == reference["window_start"].values).all()
    counts = ["reading_count", "payment_type_credit_card_count", "payment_type_cash_count"]
    for column in counts:
        assert silver[column].tolist() == reference[column].tolist(), column
    floats = [c for c, kind in TAXI.feature_columns() if kind == "double"]
    for column in floats:
        assert np.allclose(silver[column], reference[column], equal_nan=True), column
    # 15-minute windows every 5 minutes: each trip is in three windows of its pickup zone.
    assert silver["reading_count"].sum() == 3 * len(good)
    assert set(silver[TAXI.key_field]) == set(good[TAXI.key_field])
