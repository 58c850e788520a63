"""Fuzzing silver's Spark parsing (spark_streaming/silver/validate.py) then its decision step
with hypothesis: any bytes on `weather-raw` end as an observation or a quarantine row with a
reason code and detail, never an exception; and the Arrow validator (validate_arrow.py, the
direct engine's) returns exactly Spark's table for the same bronze rows, fuzzed bytes, damaged
records of every contract, replayed records and chaos. Bounded (a few Spark jobs) to stay cheap."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.chaos import MALFORMED_KINDS, malformed_records
from ingest.datasets import read_source
from ingest.replay import build_messages, prepare_frame
from periscope.contracts import Category, Count, Measure, get_contract
from spark_streaming.bronze_direct import BRONZE_ARROW_SCHEMA
from spark_streaming.silver import BatchProcessor, SilverTables
from spark_streaming.silver.classify import QUARANTINED, classify, dedupe_keys
from spark_streaming.silver.validate import reason_codes, validate
from spark_streaming.silver.validate_arrow import _Repeated, parse_json_like_spark, validate_arrow
from tests.integration.silver_helpers import BRONZE_SCHEMA, bronze_frame, wire

WEATHER = get_contract("weather")
_JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
# Records that look like weather: the right names with any JSON values, or other keys.
_NEAR_JSON = st.dictionaries(
    st.one_of(
        st.sampled_from(["station_id", "timestamp", *WEATHER.measure_names]), st.text(max_size=8)
    ),
    _JSON_VALUE,
    max_size=8,
).map(lambda record: json.dumps(record).encode())
VALUE = st.one_of(
    st.binary(max_size=200),  # anything, invalid UTF-8 included
    st.text(max_size=120).map(lambda text: text.encode("utf-8", "surrogatepass")),
    _NEAR_JSON,
    st.integers(0, 30).map(lambda hour: wire("portland", hour, WEATHER)[1]),  # a good record
    st.just(b"x" * (WEATHER.max_record_bytes + 1)),
)
RECORD = st.tuples(st.one_of(st.none(), st.binary(max_size=20)), VALUE)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(records=st.lists(RECORD, min_size=1, max_size=40))
def test_any_bytes_become_an_observation_or_a_quarantine_row_with_a_reason(
    spark, records: list[tuple[bytes | None, bytes]]
) -> None:
    validated = validate(bronze_frame(spark, records, topic="weather-raw"), WEATHER).toArrow()
    assert validated.num_rows == len(records)  # nothing dropped, nothing multiplied
    outcome = classify(
        validated, validated.select(dedupe_keys(WEATHER)).slice(0, 0), dedupe_keys(WEATHER), None
    )
    bad = pc.equal(outcome, QUARANTINED)
    quarantined, kept = validated.filter(bad), validated.filter(pc.invert(bad))
    assert set(quarantined["reason"].to_pylist()) <= set(reason_codes(WEATHER))
    assert quarantined["reason_detail"].null_count == 0
    # What silver keeps has an entity and a time, the fields every later stage reads.
    assert kept["reason"].null_count == kept.num_rows
    assert kept["station_id"].null_count == 0 and kept["event_time"].null_count == 0


# --- the Arrow validator (validate_arrow.py) against Spark's, on the same bronze rows ----------
# Spark's figure is `BatchProcessor._validate` itself (validate + select + toArrow). Rows where
# the two differ by design (the module docstring: Spark also reads a bare year, a year-month, a
# time without a date, signed or 5-digit years and zone names as times) are set aside, and only
# when Spark made a time of them and the text is one of those forms.
_SPARK_ONLY_TIME = re.compile(
    r"[+-]?[0-9]{4,}(-[0-9]{1,2})?"  # a bare year or year-month
    r"|[+-][0-9]{4,}-.*|[0-9]{5,}-.*"  # a signed or five-digit year
    r"|T?[0-9]{1,2}:.*"  # a time without a date
    r"|.*[0-9][ ]?[A-Za-z]{2}.*"  # a zone name after the time (UTC, GMT+2, Europe/Paris)
)
CONTRACTS = [get_contract(name) for name in ("weather", "air_quality", "taxi")]
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _bronze(records: list[tuple[bytes | None, bytes | None]]) -> pa.Table:
    n = len(records)
    return pa.Table.from_arrays(
        [
            pa.array([k for k, _ in records], pa.binary()),
            pa.array([v for _, v in records], pa.binary()),
            pa.array(["t"] * n),
            pa.array([i % 3 for i in range(n)], pa.int32()),
            pa.array([i // 3 for i in range(n)], pa.int64()),
            pa.array([_NOW] * n, pa.timestamp("us", "UTC")),
            pa.array([_NOW] * n, pa.timestamp("us", "UTC")),
            pa.array([_NOW.date()] * n, pa.date32()),
        ],
        schema=BRONZE_ARROW_SCHEMA,
    )


def _time_text(value: bytes, contract) -> str:
    """The event-time text of a record Spark read a time from (its number's text for a number)."""
    record = parse_json_like_spark(value.decode())
    time = record[contract.event_time_field]
    time = time.values[-1] if isinstance(time, _Repeated) else time
    return time if isinstance(time, str) else str(time)


def _comparable(table: pa.Table) -> pa.Table:
    """Timestamps as microseconds: Spark makes times past year 9999 of texts it reads and this
    module does not (documented), which Python's datetime cannot hold."""
    return pa.table(
        {
            name: column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
    )


# A number given to a string field is written as Java's Double.toString writes it, and Java 17
# writes some doubles with more digits than the shortest form validate_arrow writes (its
# docstring's known differences: 2^-24 is "5.9604644775390625E-8" in Spark, "5.960464477539063E-8"
# here). The same double either way, so such a pair counts as the same.
_JAVA_DOUBLE = re.compile(r"-?[0-9]+\.[0-9]+(E-?[0-9]+)?")


def _same(x: object, y: object) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    java_doubles = isinstance(x, str) and isinstance(y, str)
    if java_doubles and _JAVA_DOUBLE.fullmatch(str(x)) and _JAVA_DOUBLE.fullmatch(str(y)):
        return float(str(x)) == float(str(y))
    return x == y


def assert_validators_agree(spark, settings, contract, records) -> int:
    """Spark's `_validate` and `validate_arrow` on the same bronze rows give equal tables
    (sorted by partition and offset); returns the rows compared."""
    bronze = _bronze(records)
    processor = BatchProcessor(
        settings=settings,
        contract=contract,
        tables=SilverTables.for_contract(settings, contract),
        app_id="fuzz",
        publish=False,
    )
    frame = spark.createDataFrame([tuple(r.values()) for r in bronze.to_pylist()], BRONZE_SCHEMA)
    order = [("partition", "ascending"), ("offset", "ascending")]
    theirs = processor._validate(frame).sort_by(order)
    ours = validate_arrow(bronze, contract).sort_by(order)
    assert [(f.name, f.type) for f in ours.schema] == [(f.name, f.type) for f in theirs.schema]
    assert ours.num_rows == theirs.num_rows == len(records)

    values = bronze.sort_by(order)["value"].to_pylist()
    compared, mismatches = 0, []
    rows = zip(values, _comparable(ours).to_pylist(), _comparable(theirs).to_pylist(), strict=True)
    for value, mine, spark_row in rows:
        spark_only = mine["event_time"] is None and spark_row["event_time"] is not None
        if spark_only and _SPARK_ONLY_TIME.fullmatch(_time_text(value, contract).strip()):
            continue  # a documented difference
        compared += 1
        differ = {c: (mine[c], spark_row[c]) for c in mine if not _same(mine[c], spark_row[c])}
        if differ:
            mismatches.append((value, differ))
    assert not mismatches, f"{len(mismatches)} rows differ, e.g. {mismatches[:3]}"
    return compared


# Event times both validators read (and some neither does).
_TIMES = st.sampled_from(
    [
        "2017-01-01T10:00:00Z", "2017-01-01T10:00:00", "2017-01-01 10:00:00", "2017-01-01",
        "2017-01-01T10:00", "2017-01-01T10:00:00.5Z", "2017-01-01T10:00:00.123456789Z",
        "2017-01-01T10:00:00+02:00", "2017-01-01T10:00:00-0530", "2017-01-01T10:00:00+02",
        " 2017-01-01T10:00:00Z ", "2017-1-2T3:4:5Z", "2016-02-29T23:59:59Z", "2017-02-29T00:00:00Z",
        "2017-13-01T00:00:00Z", "2017-01-01T24:00:00Z", "2017-01-01T10:00:00+19:00", "", " ",
        "yesterday", "2017-01-01T10:00:00ZZ", "2017/01/01 10:00", "20170101T100000Z",
    ]
)  # fmt: skip
_ODD_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    # Java 17 writes some doubles outside (2^-1022, 2^63) with a digit more than the shortest
    # form (documented in validate_arrow); json.dumps writes inf as Infinity, a token Spark reads
    st.floats(-(2.0**63), 2.0**63, allow_subnormal=False),
    st.sampled_from([math.inf, -math.inf, 1e300, -1e20, 5e-300]),
    st.text(max_size=10),
    st.sampled_from(["NaN", "Infinity", "-INF", "12.5", " 3 ", "", "  ", "-200", "1e400"]),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.text("ab", max_size=2), st.integers(0, 9), max_size=2),
)


def _good(contract, f) -> st.SearchStrategy:
    """Values a real record carries, edges included."""
    if f.name == contract.key_field:
        return st.sampled_from(["denver", "132", " 7 ", "264", "266", "0", "abc", "uci"])
    if isinstance(f, Measure):
        low = -1e6 if math.isinf(f.valid_min) else f.valid_min
        high = 1e6 if math.isinf(f.valid_max) else f.valid_max
        return st.one_of(
            st.floats(low, high),
            st.integers(int(low), int(high)),
            st.sampled_from([*f.sentinels, f.valid_min, f.valid_max, low - 1, high + 1, 0.0]),
        )
    if isinstance(f, Count):
        return st.integers(-1, 8)
    if isinstance(f, Category):
        return st.sampled_from([*f.levels, f" {f.levels[0]} ", f.levels[0].upper(), "other"])
    return st.one_of(st.text(max_size=6), st.sampled_from(["t-1", "48", " 12 ", "999"]))


@st.composite
def _records(draw, contract) -> tuple[bytes, bytes]:
    """A record of the contract, perhaps damaged: fields changed to odd JSON, dropped, repeated,
    the text around the object changed."""
    fields = {f.name: f for f in contract.fields}
    record: dict[str, object] = {}
    for name in contract.wire_fields:
        if name == contract.event_time_field:
            record[name] = draw(_TIMES)
        else:
            record[name] = draw(_good(contract, fields[name]))
    for name in draw(st.lists(st.sampled_from(contract.wire_fields), max_size=2)):
        if draw(st.booleans()):
            record[name] = draw(_ODD_JSON)
        else:
            record.pop(name, None)
    text = json.dumps(record, separators=(",", ":"))
    style = draw(st.sampled_from(["plain", "plain", "plain", "spaced", "duplicate", "tail"]))
    if style == "spaced":
        text = " " + json.dumps(record, indent=1) + "\n"
    elif style == "duplicate" and len(text) > 2:  # the key first, then the record's own
        text = '{"' + contract.key_field + '":"first",' + text[1:]
    elif style == "tail":
        text += draw(st.sampled_from([" junk", "{}", ",", "]"]))
    return b"k", text.encode("utf-8", "surrogatepass")


def _near_json(contract) -> st.SearchStrategy:
    return st.dictionaries(
        st.one_of(st.sampled_from(contract.wire_fields), st.text(max_size=4)), _ODD_JSON, max_size=6
    ).map(lambda record: (None, json.dumps(record).encode()))


def _any_value(contract) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.one_of(st.none(), st.binary(max_size=8)), st.binary(max_size=60)),
        st.text(max_size=60).map(lambda t: (b"k", t.encode("utf-8", "surrogatepass"))),
        _near_json(contract),
        st.just((b"k", b"x" * (contract.max_record_bytes + 1))),
        st.just((b"k", None)),
    )


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure shows its rows; no shrinking
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
def test_arrow_validator_equals_spark_on_fuzzed_bytes_and_damaged_records(
    spark, test_settings, contract, data
) -> None:
    records = data.draw(
        st.lists(
            st.one_of(_records(contract), _records(contract), _any_value(contract)),
            min_size=40,
            max_size=150,
        )
    )
    assert assert_validators_agree(spark, test_settings, contract, records) > 0


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_arrow_validator_equals_spark_on_replayed_and_chaos_records(
    spark, test_settings, contract
) -> None:
    """Real records as the replay sends them (5% malformed by the chaos hooks), plus every kind of
    chaos on synthetic records."""
    frame = prepare_frame(
        read_source(contract.name, test_settings.data_dir, stations=_FEW[contract.name]),
        contract,
        limit=400,
    )
    replayed = [(m.key, m.value) for m in build_messages(frame, contract, bad_rate=0.05, seed=3)]
    chaos = [(k, v) for _, k, v in malformed_records(contract, 8 * len(MALFORMED_KINDS), seed=11)]
    assert assert_validators_agree(spark, test_settings, contract, replayed + chaos) == len(
        replayed
    ) + len(chaos)


_FEW = {"weather": ["denver", "boston"], "air_quality": None, "taxi": ["74", "75", "41"]}
