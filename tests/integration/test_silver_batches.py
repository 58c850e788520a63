"""Silver's micro-batch logic on real Delta tables, validated by either engine (Spark, or the
direct engine's `validate_arrow`): reasons, dedupe, late data, replays, features."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from ingest.chaos import MALFORMED_KINDS, malformed_records
from ingest.datasets import read_weather
from ingest.producer import encode_record
from periscope import duckdb_lake
from periscope.contracts import get_contract
from periscope.lake import read_delta
from periscope.topics import create_topics
from periscope.windows import feature_columns
from spark_streaming.silver import REASON_CODES, process_batch

from .silver_helpers import ENGINES, bronze_frame, run_batch, silver_tables, wire

pytestmark = pytest.mark.integration

# What each kind of chaos must be quarantined as (the sentinel kind: UCI's -200 everywhere means
# no measure is left; weather has no sentinel, so its out-of-band -9999 is out of range).
EXPECTED_REASON = {
    "broken_json": {"malformed_json"},
    "wrong_type": {"wrong_type"},
    "missing_field": {"missing_key", "missing_timestamp"},
    "out_of_range": {"out_of_range"},
    "oversize": {"oversize"},
    "invalid_utf8": {"invalid_utf8"},
}


@pytest.fixture
def session(request):
    """A Spark session of its own (MERGE idempotency tokens live in session conf); none for the
    direct engine, which needs no JVM."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("engine") == "direct":
        return None
    return request.getfixturevalue("spark").newSession()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("source", ["weather", "air_quality"])
def test_every_malformed_kind_is_quarantined_with_its_reason_and_sent_to_the_dlq(
    session, services, tmp_path, source, engine
):
    contract = get_contract(source)
    create_topics(services)
    chaos = malformed_records(contract, 3 * len(MALFORMED_KINDS), seed=7)
    good = [wire("s1", h, contract) for h in range(3)]
    tables = silver_tables(session, tmp_path, services, contract, engine)
    dlq = _end_offsets(services, tables.dlq_topic)

    counts = run_batch(
        engine,
        session,
        [(k, v) for _, k, v in chaos] + good,
        0,
        settings=services,
        contract=contract,
        tables=tables,
        app_id="test",
    )
    assert counts["quarantined"] == len(chaos) and counts["observations"] == len(good)

    quarantine = read_delta(tables.quarantine, ["offset", "reason", "value"]).to_pylist()
    by_offset = {row["offset"]: row for row in quarantine}
    sentinel_reason = "no_values" if contract.measures[0].sentinels else "out_of_range"
    for offset, (kind, _, value) in enumerate(chaos):
        expected = EXPECTED_REASON.get(kind, {sentinel_reason})
        assert by_offset[offset]["reason"] in expected, (kind, by_offset[offset]["reason"])
        assert by_offset[offset]["value"] == value  # the raw bytes are kept for a human to look at
    assert {row["reason"] for row in quarantine} <= set(REASON_CODES)

    letters = _consume(services, tables.dlq_topic, dlq, len(chaos))
    assert sorted(letter["offset"] for letter in letters) == list(range(len(chaos)))
    assert {letter["reason"] for letter in letters} == {row["reason"] for row in quarantine}


def test_sentinels_become_nulls_with_qa_counts(session, services, tmp_path):
    contract = get_contract("air_quality")
    tables = silver_tables(session, tmp_path, services, contract)
    record = json.loads(wire("uci", 0, contract)[1])
    record.update(co_gt=-200.0, nmhc_gt=-200, no2_gt=None)
    process_batch(
        bronze_frame(session, [(b"uci", encode_record(record))]),
        0,
        settings=services,
        contract=contract,
        tables=tables,
        app_id="test",
        publish=False,
    )
    [row] = read_delta(tables.observations).to_pylist()
    assert (row["co_gt"], row["nmhc_gt"], row["no2_gt"]) == (None, None, None)
    assert row["qa_missing_fields"] == 3 and row["qa_out_of_range_fields"] == 0
    assert row["c6h6_gt"] == record["c6h6_gt"]


def test_optional_measure_out_of_range_is_dropped_and_counted(session, services, tmp_path):
    contract = get_contract("weather")
    tables = silver_tables(session, tmp_path, services, contract)
    process_batch(
        bronze_frame(session, [wire("s1", 0, contract, wind_direction=999.0)]),
        0,
        settings=services,
        contract=contract,
        tables=tables,
        app_id="test",
        publish=False,
    )
    [row] = read_delta(tables.observations).to_pylist()
    assert row["wind_direction"] is None
    assert (row["qa_out_of_range_fields"], row["qa_missing_fields"]) == (1, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_duplicates_late_data_and_window_corrections(session, services, tmp_path, engine):
    contract = get_contract("weather")  # hourly: 3 h windows sliding 1 h, 6 h watermark
    tables = silver_tables(session, tmp_path, services, contract, engine)

    def run(batch_id, messages, first_offset):
        return run_batch(
            engine,
            session,
            messages,
            batch_id,
            first_offset=first_offset,
            settings=services,
            contract=contract,
            tables=tables,
            app_id="test",
            publish=False,
        )

    first = [wire("s1", h, contract, temperature=float(h)) for h in range(21)]  # 00:00 .. 20:00
    first.append(wire("s1", 5, contract, temperature=55.0))  # same key again in the batch
    counts = run(0, first, 0)
    assert (counts["observations"], counts["duplicates"], counts["late"]) == (21, 1, 0)

    window = {
        (r["window_start"].hour, r["window_start"].day): r
        for r in read_delta(tables.features).to_pylist()
    }
    assert window[(13, 1)]["reading_count"] == 3  # [13:00, 16:00)

    # Watermark is now 20:00 - 6 h = 14:00. 15:30 is inside it; 10:30 is too late; 05:00 repeats.
    second = [
        wire("s1", 15.5, contract, temperature=50.0),
        wire("s1", 10.5, contract, temperature=-50.0),
        wire("s1", 5, contract, temperature=-1.0),
    ]
    counts = run(1, second, len(first))
    assert (counts["observations"], counts["duplicates"], counts["late"]) == (2, 1, 1)

    window = {
        (r["window_start"].hour, r["window_start"].day): r
        for r in read_delta(tables.features).to_pylist()
    }
    corrected = window[(13, 1)]
    assert corrected["reading_count"] == 4
    assert corrected["temperature_max"] == 50.0
    assert corrected["temperature_mean"] == pytest.approx((13 + 14 + 15 + 50) / 4)
    untouched = window[(9, 1)]  # [09:00, 12:00) would hold 10:30, but it came too late
    assert untouched["reading_count"] == 3 and untouched["temperature_min"] == 9.0
    [late] = read_delta(tables.late).to_pylist()
    assert late["event_time"].hour == 10 and late["watermark"].hour == 14
    assert len(
        {(r["station_id"], r["window_start"]) for r in read_delta(tables.features).to_pylist()}
    ) == len(window)

    # A replayed batch (same id, as after a crash) writes nothing twice.
    run(1, second, len(first))
    assert len(read_delta(tables.observations)) == 23
    assert len(read_delta(tables.duplicates)) == 2 and len(read_delta(tables.late)) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_features_equal_an_independent_duckdb_computation(session, services, tmp_path, engine):
    contract = get_contract("weather")
    tables = silver_tables(session, tmp_path, services, contract, engine)
    history = read_weather(services.data_dir, stations=["portland", "denver"])
    history = history.filter(
        history["timestamp"]
        < history["timestamp"].min() + __import__("datetime").timedelta(days=12)
    )
    messages = []
    for row in history.iter_rows(named=True):
        record = {**row, "timestamp": row["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ")}
        messages.append((row["station_id"].encode(), encode_record(record)))
    # Three micro-batches, so windows are built up and corrected across batches.
    third = len(messages) // 3
    for batch_id, chunk in enumerate(
        (messages[:third], messages[third : 2 * third], messages[2 * third :])
    ):
        run_batch(
            engine,
            session,
            chunk,
            batch_id,
            first_offset=batch_id * third,
            settings=services,
            contract=contract,
            tables=tables,
            app_id="test",
            publish=False,
        )

    ours = {
        (r["station_id"], r["window_start"].replace(tzinfo=None)): r
        for r in read_delta(tables.features).to_pylist()
    }
    theirs = _duckdb_features(tables, contract)
    assert len(ours) == len(theirs) > 500
    columns = feature_columns(contract)[3:]
    mismatches = []
    for key, expected in theirs.items():
        actual = ours[key]
        for column in columns:
            a, b = actual[column], expected[column]
            if isinstance(b, float) and math.isnan(b):
                b = None  # DuckDB's regr_slope says NaN where the slope is undefined; Spark says null
            if a is None or b is None:
                if a is not b:
                    mismatches.append((key, column, a, b))
            elif not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append((key, column, a, b))
    assert mismatches == []


def _duckdb_features(tables, contract) -> dict:
    """The same windows computed by DuckDB from silver observations (minus late rows)."""
    size = 3 * 3600
    slide = 3600
    per_measure = []
    for m in contract.measure_names:
        seen = f"case when {m} is not null then event_time end"
        per_measure.append(
            f"""
            avg({m}) as {m}_mean, stddev_samp({m}) as {m}_stddev, min({m}) as {m}_min, max({m}) as {m}_max,
            (arg_max({m}, {seen}) - arg_min({m}, {seen}))
              / nullif((epoch(max({seen})) - epoch(min({seen}))) / 60.0, 0) as {m}_rate_per_min,
            regr_slope({m}, (epoch(event_time) - epoch(window_start)) / 60.0) as {m}_trend"""
        )
    sql = f"""
        with obs as (
            select o.* from delta_scan('{tables.observations}') o
            anti join delta_scan('{tables.late}') l using (topic, "partition", "offset")
        ),
        windowed as (
            select obs.*, to_timestamp(floor(epoch(event_time) / {slide}) * {slide} - k * {slide}) as window_start
            from obs, range(0, {size // slide}) t(k)
        )
        select station_id, window_start, count(*) as reading_count, {", ".join(per_measure)}
        from windowed group by station_id, window_start
    """
    con = duckdb_lake.connect()
    con.sql("set timezone = 'UTC'")
    result = con.sql(sql)
    names = result.columns
    out = {}
    for values in result.fetchall():
        row = dict(zip(names, values, strict=True))
        out[(row["station_id"], row["window_start"].replace(tzinfo=None))] = row
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_replayed_batch_publishes_its_features_even_when_its_merge_had_committed(
    session, services, tmp_path, engine
):
    """At least once: a crash after the features MERGE but before Kafka acknowledged the
    messages leaves a batch whose replay skips the MERGE; it must publish all the same."""
    contract = get_contract("weather")
    create_topics(services)
    tables = silver_tables(session, tmp_path, services, contract, engine)
    station = f"replay-{uuid.uuid4().hex[:8]}"
    messages = [wire(station, h, contract) for h in range(6)]
    start = _end_offsets(services, tables.features_topic)

    def run(publish: bool) -> dict[str, int]:
        return run_batch(
            engine,
            session,
            messages,
            0,
            settings=services,
            contract=contract,
            tables=tables,
            app_id="test",
            publish=publish,
        )

    first = run(publish=False)  # everything committed, nothing sent: the crash
    assert first["windows_updated"] > 0
    assert run(publish=True)["windows_updated"] == 0  # the replay's MERGE is skipped ...
    features = [
        m
        for m in _consume(services, tables.features_topic, start, 1_000)
        if m["station_id"] == station
    ]
    # ... and every window of the batch reached the topic.
    assert len(features) == first["windows_updated"]
    assert (
        {m["window_start"][:19] for m in features}
        == {  # "2024-01-01 00:00:00", UTC
            str(r["window_start"])[:19]
            for r in read_delta(tables.features, ["window_start"]).to_pylist()
        }
    )


def _end_offsets(settings, topic):
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(parts)
    consumer.close()
    return ends


def _consume(settings, topic, start, expected):
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, consumer_timeout_ms=10_000
    )
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    letters = []
    for message in consumer:
        letters.append(json.loads(message.value))
        if len(letters) >= expected:
            break
    consumer.close()
    return letters


def test_both_engines_create_the_same_silver_tables(spark, services, tmp_path):
    """Spark's `ensure_silver_tables` and the direct engine's delta-rs creation agree, table by
    table: the same columns, types and nullability, and nothing delta-rs cannot read."""
    import pyarrow as pa
    from deltalake import DeltaTable

    for contract in (get_contract("weather"), get_contract("taxi")):
        by_spark = silver_tables(spark, tmp_path / "spark", services, contract, "spark")
        direct = silver_tables(None, tmp_path / "direct", services, contract, "direct")
        for name in ("observations", "quarantine", "duplicates", "late", "features", "batches"):
            ours, theirs = (DeltaTable(getattr(t, name)) for t in (direct, by_spark))
            schemas = [pa.schema(t.schema().to_arrow()) for t in (ours, theirs)]
            assert schemas[0] == schemas[1], (contract.name, name)
            assert ours.metadata().partition_columns == theirs.metadata().partition_columns
