"""Fuzzing silver's Spark parsing (spark_streaming/silver/validate.py) then its decision step
with hypothesis: any bytes on `weather-raw` end as an observation or a quarantine row with a
reason code and detail, never an exception. Bounded (a few Spark jobs) to stay cheap."""

from __future__ import annotations

import json

import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from periscope.contracts import get_contract
from spark_streaming.silver.classify import QUARANTINED, classify, dedupe_keys
from spark_streaming.silver.validate import reason_codes, validate
from tests.integration.silver_helpers import bronze_frame, wire

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
