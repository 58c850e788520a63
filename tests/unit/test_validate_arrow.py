"""Silver's validation without Spark (spark_streaming/silver/validate_arrow.py): every reason
code, sentinel, QA count, rule and output type, as the Spark path (validate.py) decides them.
The two are compared on the same rows in tests/integration/test_fuzz_silver.py."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from ingest.chaos import BROKEN_RULE, MALFORMED_KINDS, malformed_record
from ingest.producer import encode_record
from periscope.contracts import get_contract
from spark_streaming.bronze_direct import BRONZE_ARROW_SCHEMA
from spark_streaming.silver.columns import observation_columns, table_columns
from spark_streaming.silver.validate import REASON_CODES, reason_codes
from spark_streaming.silver.validate_arrow import (
    java_double_text,
    parse_json_like_spark,
    parse_timestamp_like_spark,
    validate_arrow,
)

WEATHER, AIR_QUALITY, TAXI = (get_contract(s) for s in ("weather", "air_quality", "taxi"))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ARROW_TYPES = {
    "string": pa.string(),
    "double": pa.float64(),
    "long": pa.int64(),
    "int": pa.int32(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
}


def bronze(values: list[bytes | None], keys: list[bytes | None] | None = None) -> pa.Table:
    n = len(values)
    keys = keys if keys is not None else [b"k"] * n
    return pa.Table.from_arrays(
        [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array(["t"] * n),
            pa.array([0] * n, pa.int32()),
            pa.array(range(n), pa.int64()),
            pa.array([NOW] * n, pa.timestamp("us", "UTC")),
            pa.array([NOW] * n, pa.timestamp("us", "UTC")),
            pa.array([NOW.date()] * n, pa.date32()),
        ],
        schema=BRONZE_ARROW_SCHEMA,
    )


def weather(**changes: Any) -> dict[str, Any]:
    record = {
        "station_id": "denver",
        "timestamp": "2017-01-01T10:00:00Z",
        "temperature": 12.5,
        "humidity": 40.0,
        "pressure": 1010.0,
        "wind_speed": 3.0,
        "wind_direction": 180.0,
    }
    return record | changes


def taxi(**changes: Any) -> dict[str, Any]:
    record = {
        "pu_location_id": "132",
        "pickup_time": "2023-01-01T10:00:00Z",
        "trip_id": "t-1",
        "do_location_id": "48",
        "vendor": "verifone",
        "passenger_count": 1,
        "trip_distance": 2.5,
        "fare_amount": 14.0,
        "tip_amount": 2.0,
        "total_amount": 18.0,
        "payment_type": "credit_card",
        "rate_code": "standard",
        "duration_min": 12.0,
    }
    return record | changes


def air_quality(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"station_id": "uci", "timestamp": "2004-03-10T18:00:00Z"}
    for m in AIR_QUALITY.measures:
        record[m.name] = (m.valid_min + m.valid_max) / 2
    return record | changes


def check(contract, *values: bytes | dict | None) -> list[dict[str, Any]]:
    raw = [encode_record(v) if isinstance(v, dict) else v for v in values]
    return validate_arrow(bronze(raw), contract).to_pylist()


def one(contract, value: bytes | dict | None) -> dict[str, Any]:
    [row] = check(contract, value)
    return row


# --- the shape of the output --------------------------------------------------------------


@pytest.mark.parametrize("contract", [WEATHER, AIR_QUALITY, TAXI], ids=lambda c: c.name)
def test_columns_and_types_are_those_validate_selects(contract) -> None:
    table = validate_arrow(bronze([encode_record(weather()), b"[]"]), contract)
    parsed = [c for c in observation_columns(contract) if c not in ("reason", "reason_detail")]
    assert table.column_names == [*parsed, "reason", "reason_detail", "key", "value"]
    declared = {c.name: ARROW_TYPES[c.type] for c in table_columns(contract, "observations")}
    declared |= {"reason": pa.string(), "reason_detail": pa.string()}
    declared |= {"key": pa.binary(), "value": pa.binary()}
    assert {f.name: f.type for f in table.schema} == declared


def test_an_empty_batch_has_the_same_columns() -> None:
    table = validate_arrow(bronze([]), WEATHER)
    assert table.num_rows == 0 and "reason" in table.column_names


def test_a_good_record_is_parsed_and_keeps_no_raw_bytes() -> None:
    row = one(WEATHER, weather(station_id="  denver ", temperature=12))
    assert row["reason"] is None and row["reason_detail"] is None
    assert row["station_id"] == "denver"  # trimmed of spaces
    assert row["event_time"] == datetime(2017, 1, 1, 10, tzinfo=UTC)
    assert row["temperature"] == 12.0 and isinstance(row["temperature"], float)
    assert (row["qa_missing_fields"], row["qa_out_of_range_fields"]) == (0, 0)
    assert row["key"] is None and row["value"] is None
    assert (row["topic"], row["partition"], row["offset"]) == ("t", 0, 0)


def test_every_row_is_kept_in_order() -> None:
    rows = check(WEATHER, weather(), b"x", None, weather(station_id="b"))
    assert [r["offset"] for r in rows] == [0, 1, 2, 3]
    assert [r["reason"] for r in rows] == [None, "malformed_json", "invalid_utf8", None]


# --- each reason ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (None, "invalid_utf8", "value bytes are not valid UTF-8"),
        (b'{"station_id":"d\xffr"}', "invalid_utf8", "value bytes are not valid UTF-8"),
        (b"\xed\xa0\x80", "invalid_utf8", "value bytes are not valid UTF-8"),  # a surrogate
        (b"\xc0\x80", "invalid_utf8", "value bytes are not valid UTF-8"),  # overlong
        (b'{"station_id": "x"' + b" " * 16400 + b"}", "oversize", "value is 16419 bytes > 16384"),
        (b'{"station_id":"denver",', "malformed_json", "value is not a JSON object"),
        (b"[]", "malformed_json", "value is not a JSON object"),
        (b'[{"station_id":"denver"}]', "malformed_json", "value is not a JSON object"),
        (b"5", "malformed_json", "value is not a JSON object"),
        (b"null", "malformed_json", "value is not a JSON object"),
        (b"", "malformed_json", "value is not a JSON object"),
        (b"  ", "malformed_json", "value is not a JSON object"),
        (b'{"station_id":"a",}', "malformed_json", "value is not a JSON object"),
        (b'{station_id:"a"}', "malformed_json", "value is not a JSON object"),
        (b'{"temperature":01}', "malformed_json", "value is not a JSON object"),
        (b"\xef\xbb\xbf{}", "malformed_json", "value is not a JSON object"),
        (weather(station_id=None), "missing_key", "station_id is missing"),
        (weather(station_id="   "), "missing_key", "station_id is missing"),
        ({"timestamp": "2017-01-01T10:00:00Z"}, "missing_key", "station_id is missing"),
        (weather(timestamp=None), "missing_timestamp", "timestamp is missing"),
        (weather(timestamp="2017"), "invalid_timestamp", "timestamp 2017 is not ISO-8601"),
        (weather(timestamp="yesterday"), "invalid_timestamp", "timestamp yesterday is not ISO-8601"),
        (weather(temperature="n/a"), "wrong_type", "wrong JSON type: temperature"),
        (weather(humidity="12.5", wind_speed=True), "wrong_type", "wrong JSON type: humidity, wind_speed"),
        (weather(pressure=[1]), "wrong_type", "wrong JSON type: pressure"),
        (weather(temperature=99.0), "out_of_range", "out of range: temperature"),
        (weather(temperature=-9999.0, humidity=101), "out_of_range", "out of range: temperature, humidity"),
        (
            {"station_id": "denver", "timestamp": "2017-01-01T10:00:00Z"},
            "no_values",
            "every value is missing or a sentinel",
        ),
    ],
)  # fmt: skip
def test_weather_reasons_and_details(value, reason, detail) -> None:
    row = one(WEATHER, value)
    assert (row["reason"], row["reason_detail"]) == (reason, detail)
    assert row["value"] == (encode_record(value) if isinstance(value, dict) else value)


def test_the_first_failing_check_wins() -> None:
    row = one(WEATHER, weather(timestamp="x", temperature="hot"))
    assert row["reason"] == "invalid_timestamp"
    row = one(WEATHER, weather(station_id="", timestamp=None))
    assert row["reason"] == "missing_key"
    row = one(TAXI, taxi(trip_id=None, passenger_count="two", fare_amount=-5000.0))
    assert row["reason"] == "wrong_type"  # before missing_required and out_of_range


def test_a_number_or_boolean_key_is_its_text() -> None:
    assert one(WEATHER, weather(station_id=132))["station_id"] == "132"
    assert one(WEATHER, weather(station_id=1.50))["station_id"] == "1.5"
    assert one(WEATHER, weather(station_id=True))["station_id"] == "true"
    assert one(WEATHER, b'{"station_id":123456789012345678901234567890}')["station_id"] == (
        "123456789012345678901234567890"
    )


def test_identity_columns_are_kept_for_quarantined_rows() -> None:
    row = one(WEATHER, weather(temperature="warm"))
    assert row["station_id"] == "denver" and row["event_time"] == datetime(
        2017, 1, 1, 10, tzinfo=UTC
    )
    assert row["temperature"] is None and row["humidity"] == 40.0


# --- sentinels, optional values, QA counts ----------------------------------------------------


def test_sentinels_become_nulls_with_qa_counts() -> None:
    row = one(AIR_QUALITY, air_quality(co_gt=-200.0, nmhc_gt=-200, no2_gt=None))
    assert row["reason"] is None
    assert (row["co_gt"], row["nmhc_gt"], row["no2_gt"]) == (None, None, None)
    assert (row["qa_missing_fields"], row["qa_out_of_range_fields"]) == (3, 0)


def test_every_measure_a_sentinel_is_no_values() -> None:
    record = air_quality(**{m.name: -200.0 for m in AIR_QUALITY.measures})
    row = one(AIR_QUALITY, record)
    assert row["reason"] == "no_values"
    assert row["qa_missing_fields"] == len(AIR_QUALITY.measures)


def test_optional_measure_out_of_range_is_dropped_and_counted() -> None:
    row = one(WEATHER, weather(wind_direction=999.0))
    assert row["reason"] is None and row["wind_direction"] is None
    assert (row["qa_out_of_range_fields"], row["qa_missing_fields"]) == (1, 1)


def test_nan_and_infinity_are_out_of_range() -> None:
    assert one(WEATHER, b'{"station_id":"d","timestamp":"2017-01-01","temperature":NaN}')[
        "reason"
    ] == ("out_of_range")
    assert one(WEATHER, weather(temperature="Infinity"))["reason"] == "out_of_range"
    assert one(WEATHER, b'{"station_id":"d","timestamp":"2017-01-01","temperature":1e400}')[
        "reason"
    ] == ("out_of_range")
    row = one(
        WEATHER,
        b'{"station_id":"d","timestamp":"2017-01-01","temperature":1,"wind_direction":-INF}',
    )
    assert row["reason"] is None and row["wind_direction"] is None
    assert row["qa_out_of_range_fields"] == 1


# --- taxi: counts, categories, required text, rules -----------------------------------------


def test_taxi_good_trip() -> None:
    row = one(TAXI, taxi(pu_location_id=132, vendor=" verifone "))
    assert row["reason"] is None
    assert (row["pu_location_id"], row["trip_id"], row["vendor"]) == ("132", "t-1", "verifone")
    assert row["passenger_count"] == 1 and row["event_time"] == datetime(2023, 1, 1, 10, tzinfo=UTC)
    assert (row["qa_missing_fields"], row["qa_out_of_range_fields"]) == (0, 0)


@pytest.mark.parametrize("count", [2.0, 2.5, "2", True, 2**63, 1e2])
def test_a_count_takes_whole_json_numbers_only(count) -> None:
    row = one(TAXI, taxi(passenger_count=count))
    assert (row["reason"], row["reason_detail"]) == (
        "wrong_type",
        "wrong JSON type: passenger_count",
    )


def test_a_count_at_the_edge_of_64_bits_is_a_number() -> None:
    row = one(TAXI, taxi(passenger_count=2**63 - 1))
    assert row["passenger_count"] == 2**63 - 1
    assert row["reason"] == "passenger_count_out_of_range"


def test_optional_categories_and_counts_out_of_range_are_dropped_and_counted() -> None:
    row = one(TAXI, taxi(vendor="Verifone", payment_type="bitcoin", passenger_count=-1))
    assert (row["vendor"], row["payment_type"], row["passenger_count"]) == (None, None, None)
    assert row["qa_out_of_range_fields"] == 3 and row["qa_missing_fields"] == 3
    assert row["reason"] is None  # passenger_count null: the rule's condition is null, passes


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"trip_id": None}, "missing: trip_id"),
        ({"trip_id": "  "}, "missing: trip_id"),
        ({"trip_id": "", "do_location_id": None}, "missing: trip_id, do_location_id"),
    ],
)
def test_required_text_must_be_present(changes, detail) -> None:
    row = one(TAXI, taxi(**changes))
    assert (row["reason"], row["reason_detail"]) == ("missing_required", detail)


def test_a_required_measure_may_be_missing() -> None:
    row = one(TAXI, taxi(trip_distance=None))
    assert row["reason"] is None and row["qa_missing_fields"] == 1


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"duration_min": -7.5}, "dropoff_before_pickup", "the trip ends before it starts: duration_min=-7.5"),
        ({"fare_amount": -12.0}, "negative_fare", "a negative fare (a refund or void): fare_amount=-12.0"),
        ({"fare_amount": 4200}, "absurd_fare", "a fare above 500 USD: fare_amount=4200.0"),
        (
            {"trip_distance": 0.0, "fare_amount": 18.5},
            "zero_distance_with_fare",
            "a fare charged for no distance: trip_distance=0.0, fare_amount=18.5",
        ),
        (
            {"do_location_id": "999"},
            "unknown_zone",
            "a pickup or dropoff zone that is not in taxi_zone_lookup.csv: pu_location_id=132, do_location_id=999",
        ),
        (
            {"pu_location_id": "abc"},
            "unknown_zone",
            "a pickup or dropoff zone that is not in taxi_zone_lookup.csv: pu_location_id=abc, do_location_id=48",
        ),
        ({"passenger_count": 0}, "passenger_count_out_of_range", "no passengers, or more than a taxi seats: passenger_count=0"),
        ({"duration_min": 1000.0}, "over_12_hours", "a trip longer than 12 hours: duration_min=1000.0"),
        # the first broken rule wins
        ({"duration_min": -1.0, "fare_amount": -1.0}, "dropoff_before_pickup", "the trip ends before it starts: duration_min=-1.0"),
    ],
)  # fmt: skip
def test_taxi_rules(changes, reason, detail) -> None:
    row = one(TAXI, taxi(**changes))
    assert (row["reason"], row["reason_detail"]) == (reason, detail)
    assert row["value"] == encode_record(taxi(**changes))


def test_rules_are_checked_only_after_the_field_checks() -> None:
    row = one(TAXI, taxi(duration_min=-7.5, total_amount="lots"))
    assert row["reason"] == "wrong_type"


def test_rules_read_the_checked_values() -> None:
    # tip_amount is optional: out of range it is null, and no rule reads it anyway; a zone id
    # with spaces around it is trimmed before the rule casts it.
    row = one(TAXI, taxi(pu_location_id=" 132 ", tip_amount=99999.0))
    assert row["reason"] is None and row["pu_location_id"] == "132"


# --- the chaos generators' records ------------------------------------------------------------


@pytest.mark.parametrize("contract", [WEATHER, AIR_QUALITY, TAXI], ids=lambda c: c.name)
def test_every_chaos_kind_gets_its_reason(contract) -> None:
    rng = random.Random(3)
    base = {"weather": weather(), "air_quality": air_quality(), "taxi": taxi()}[contract.name]
    expected = {
        "broken_json": {"malformed_json"},
        "wrong_type": {"wrong_type"},
        "missing_field": {"missing_key", "missing_timestamp"},
        "out_of_range": {"out_of_range"},
        "sentinel": {"no_values"} if contract.measures[0].sentinels else {"out_of_range"},
        "oversize": {"oversize"},
        "invalid_utf8": {"invalid_utf8"},
        BROKEN_RULE: {rule.reason for rule in contract.rules},
    }
    kinds = [*MALFORMED_KINDS, *([BROKEN_RULE] if contract.rules else [])] * 5
    records = [malformed_record(contract, kind, rng, base) for kind in kinds]
    rows = validate_arrow(bronze([v for _, v in records], [k for k, _ in records]), contract)
    for kind, row in zip(kinds, rows.to_pylist(), strict=True):
        assert row["reason"] in expected[kind], (kind, row["reason"], row["reason_detail"])
        assert row["reason_detail"]
    assert set(rows["reason"].to_pylist()) <= set(reason_codes(contract))


# --- JSON as Spark reads it --------------------------------------------------------------------


def test_json_text_after_the_object_is_ignored_and_single_quotes_are_allowed() -> None:
    row = one(WEATHER, b"{'station_id':'denver','timestamp':'2017-01-01','temperature':1} junk")
    assert row["reason"] is None and row["temperature"] == 1.0


@pytest.mark.parametrize(
    ("temperatures", "value", "reason"),
    [
        ('1,"temperature":"x"', 1.0, None),  # Spark's struct reader skips what it cannot convert
        ('"x","temperature":2', 2.0, None),
        ('1,"temperature":null', None, None),  # a null clears it
        ('null,"temperature":"x"', None, "wrong_type"),
        ('"x","temperature":[1]', None, "wrong_type"),
    ],
)
def test_a_repeated_measure_reads_as_spark_reads_it(temperatures, value, reason) -> None:
    text = (
        '{"station_id":"d","timestamp":"2017-01-01","humidity":5,"temperature":'
        + temperatures
        + "}"
    )
    row = one(WEATHER, text.encode())
    assert (row["temperature"], row["reason"]) == (value, reason)


def test_the_last_of_duplicate_keys_wins() -> None:
    row = one(
        WEATHER, b'{"station_id":"a","station_id":"b","timestamp":"2017-01-01","temperature":1}'
    )
    assert row["station_id"] == "b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": NaN}', "nan"),
        ('{"a": -Infinity}', -float("inf")),
        ('{"a": +INF}', float("inf")),
        ('{"a": "\\ud83d\\ude00"}', "😀"),
        ('{"a": "x\\ud800y"}', "x?y"),
        ("{'a': 'it\\'s'}", "it's"),
        ('{"a": 1} {"a": 2}', 1),
        ('{"a": -0}', 0),
    ],
)
def test_parse_json_like_spark(text, expected) -> None:
    value = parse_json_like_spark(text)["a"]
    assert str(value) == "nan" if expected == "nan" else value == expected


@pytest.mark.parametrize(
    "text", ['{"a":1,}', '{"a":.5}', '{"a":1.}', '{"a":+1}', "{a:1}", '{"a":"\t"}', '{"a":1']
)
def test_parse_json_like_spark_refuses(text) -> None:
    with pytest.raises(ValueError):
        parse_json_like_spark(text)


# --- event time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-01-01T10:00:00Z", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("2017-01-01", datetime(2017, 1, 1, tzinfo=UTC)),
        ("2017-01-01 10:00", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("2017-01-01T10:00", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("2017-01-01T10:00:00+02:00", datetime(2017, 1, 1, 8, tzinfo=UTC)),
        ("2017-01-01T10:00:00+0200", datetime(2017, 1, 1, 8, tzinfo=UTC)),
        ("2017-01-01T10:00:00-02", datetime(2017, 1, 1, 12, tzinfo=UTC)),
        ("2017-01-01T10:00:00.5Z", datetime(2017, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2017-01-01T10:00:00.1234569Z", datetime(2017, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        (" 2017-01-01T10:00:00Z\n", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("2017-1-1", datetime(2017, 1, 1, tzinfo=UTC)),
        ("2017-01-01T10", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("2017-01-01T1:2:3", datetime(2017, 1, 1, 1, 2, 3, tzinfo=UTC)),
        ("2017-01-01T10:00:00 +02:00", datetime(2017, 1, 1, 8, tzinfo=UTC)),
        ("2017-01-01T10:00:00+2:00", datetime(2017, 1, 1, 8, tzinfo=UTC)),
        ("2017-01-01T10:00:00+02:00:30", datetime(2017, 1, 1, 7, 59, 30, tzinfo=UTC)),
        ("2017-01-01T10:00:00-18:00", datetime(2017, 1, 2, 4, tzinfo=UTC)),
        ("2017-01-01T10:00:00.", datetime(2017, 1, 1, 10, tzinfo=UTC)),
        ("1582-10-10T00:00:00Z", datetime(1582, 10, 10, tzinfo=UTC)),
        ("2017-01-01T10:00Z", None),  # Spark takes a zone only after the seconds
        ("2017-01-01Z", None),
        ("2017-01-01T10:00:00+18:01", None),
        ("2017-01-01T10:00:00+020", None),
        ("2017-01-01T10:00:00z", None),
        ("2017-01-01  10:00:00", None),
        ("2017-01-01T10:00:00,5Z", None),
        ("2017-01-01T10:00:00\u00a0", None),
        ("2017-01-01T10:00:00UTC", None),  # Spark reads zone names: stricter on purpose
        ("+2017-01-01", None),
        ("2017", None),
        ("2017-01", None),
        ("10:00:00", None),
        ("2017-02-30", None),
        ("2017-01-01T24:00:00", None),
        ("2017-01-01T10:00:00Europe/Paris", None),
        ("02017-01-01", None),
        ("", None),
    ],
)
def test_event_time_forms(text, expected) -> None:
    micros = parse_timestamp_like_spark(text)
    if expected is None:
        assert micros is None
    else:
        assert micros == (expected - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000
    row = one(WEATHER, weather(timestamp=text))
    assert row["event_time"] == expected
    assert row["reason"] == (None if expected else "invalid_timestamp")


def test_year_zero_is_a_year() -> None:
    assert parse_timestamp_like_spark("0000-01-01") == -62167219200000000


def test_the_wire_form_is_checked_for_real_dates() -> None:
    rows = check(
        WEATHER,
        weather(timestamp="2017-02-30T00:00:00Z"),
        weather(timestamp="2016-02-29T23:59:59Z"),
    )
    assert [r["reason"] for r in rows] == ["invalid_timestamp", None]


# --- Java's text for doubles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1000.0, "1000.0"), (1e20, "1.0E20"), (1e-5, "1.0E-5"), (0.1 + 0.2, "0.30000000000000004"),
     (-7.5, "-7.5"), (1e7, "1.0E7"), (9999999.0, "9999999.0"), (0.001, "0.001"), (0.0001, "1.0E-4"),
     (-0.0, "-0.0"), (123456789.123, "1.23456789123E8"),
     # whole doubles in [2^53, 2^63): Java's exact digits, not the shortest (as Spark printed them)
     (-5.031991734891029e16, "-5.0319917348910288E16"), (3.282093804028811e16, "3.2820938040288112E16"),
     (1e17, "1.0E17")],
)  # fmt: skip
def test_java_double_text(value, text) -> None:
    assert java_double_text(value) == text


def test_reason_codes_are_the_documented_ones() -> None:
    rows = check(
        WEATHER,
        None,
        b"x",
        weather(station_id=""),
        weather(timestamp=None),
        weather(temperature="a"),
    )
    assert set(r["reason"] for r in rows) <= set(REASON_CODES)
    assert json.dumps([r["reason_detail"] for r in rows])
