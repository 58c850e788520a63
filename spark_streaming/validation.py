"""Parse and validate bronze records against a source contract (pure DataFrame -> DataFrame).

`validate(bronze, contract)` keeps every bronze row and adds the parsed, typed fields, a
`reason` (null for a good record, else one of REASON_CODES) with a human `reason_detail`,
and QA counts. Sentinels (UCI's -200) become nulls, never readings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from periscope.contracts import Measure, SourceContract

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["REASON_CODES", "observation_columns", "validate"]

# The documented quarantine reasons, in the order they are checked: a record gets the first.
REASON_CODES: dict[str, str] = {
    "invalid_utf8": "the value is not valid UTF-8",
    "oversize": "the value is larger than the contract's max_record_bytes",
    "malformed_json": "the value is not a JSON object (broken JSON, an array, empty, or null)",
    "missing_station_id": "station_id is absent, null or empty",
    "missing_timestamp": "timestamp is absent or null",
    "invalid_timestamp": "timestamp is not an ISO-8601 date-time",
    "wrong_type": "a measure is present but not a JSON number",
    "out_of_range": "a required measure is outside its valid range, NaN or infinite",
    "no_measures": "every measure is missing or a sentinel",
}


def _measure_value(raw: Column, measure: Measure) -> Column:
    """The reading with sentinels turned into null."""
    from pyspark.sql import functions as F

    if not measure.sentinels:
        return raw
    return F.when(raw.isin(*measure.sentinels), F.lit(None).cast("double")).otherwise(raw)


def _out_of_range(value: Column, measure: Measure) -> Column:
    from pyspark.sql import functions as F

    return value.isNotNull() & (
        F.isnan(value) | (value < F.lit(measure.valid_min)) | (value > F.lit(measure.valid_max))
    )


def _names_where(conditions: dict[str, Column]) -> Column:
    """A comma-separated list of the names whose condition holds (for reason_detail)."""
    from pyspark.sql import functions as F

    return F.concat_ws(", ", *[F.when(cond, F.lit(name)) for name, cond in conditions.items()])


def validate(bronze: DataFrame, contract: SourceContract) -> DataFrame:
    """Every bronze row, with parsed fields, `reason`, `reason_detail` and QA counts."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, MapType, StringType, StructField, StructType

    typed_schema = StructType(
        [
            StructField(contract.key_field, StringType()),
            StructField(contract.event_time_field, StringType()),
            *[StructField(m.name, DoubleType()) for m in contract.measures],
        ]
    )
    # A binary -> string cast does not check the bytes; is_valid_utf8 does (decode() would throw).
    utf8_ok = F.expr("is_valid_utf8(cast(value as string))")
    text = F.when(utf8_ok, F.col("value").cast("string"))
    df = bronze.select(
        "*",
        utf8_ok.alias("_utf8_ok"),
        F.length(F.col("value")).alias("_bytes"),
        # As a string map, a wrong-typed measure is still visible; as typed fields it is null.
        F.from_json(text, MapType(StringType(), StringType())).alias("_fields"),  # type: ignore[arg-type]
        F.from_json(text, typed_schema).alias("_typed"),
    )
    station = F.col(f"_typed.{contract.key_field}")
    ts_text = F.col(f"_typed.{contract.event_time_field}")
    event_time = F.expr(f"try_cast(_typed.`{contract.event_time_field}` as timestamp)")

    raw = {m.name: F.col(f"_typed.`{m.name}`") for m in contract.measures}
    wrong_type = {
        m.name: F.col("_fields").getItem(m.name).isNotNull() & raw[m.name].isNull()
        for m in contract.measures
    }
    values = {m.name: _measure_value(raw[m.name], m) for m in contract.measures}
    out_of_range = {m.name: _out_of_range(values[m.name], m) for m in contract.measures}
    required_out = {m.name: out_of_range[m.name] for m in contract.measures if m.required}
    # Optional measures out of range are dropped (null) and counted, not quarantined.
    kept = {
        m.name: values[m.name]
        if m.required
        else F.when(out_of_range[m.name], None).otherwise(values[m.name])
        for m in contract.measures
    }

    def any_of(conditions: dict[str, Column]) -> Column:
        result = F.lit(False)
        for cond in conditions.values():
            result = result | F.coalesce(cond, F.lit(False))
        return result

    no_measures = F.lit(True)
    for value in kept.values():
        no_measures = no_measures & value.isNull()

    checks: list[tuple[str, Column, Column]] = [
        (
            "invalid_utf8",
            ~F.coalesce(F.col("_utf8_ok"), F.lit(False)),
            F.lit("value bytes are not valid UTF-8"),
        ),
        (
            "oversize",
            F.col("_bytes") > F.lit(contract.max_record_bytes),
            F.format_string(f"value is %d bytes > {contract.max_record_bytes}", F.col("_bytes")),
        ),
        ("malformed_json", F.col("_fields").isNull(), F.lit("value is not a JSON object")),
        (
            "missing_station_id",
            station.isNull() | (F.trim(station) == F.lit("")),
            F.lit(f"{contract.key_field} is missing"),
        ),
        ("missing_timestamp", ts_text.isNull(), F.lit(f"{contract.event_time_field} is missing")),
        (
            "invalid_timestamp",
            event_time.isNull(),
            F.format_string("timestamp %s is not ISO-8601", ts_text),
        ),
        (
            "wrong_type",
            any_of(wrong_type),
            F.concat(F.lit("not a number: "), _names_where(wrong_type)),
        ),
        (
            "out_of_range",
            any_of(required_out),
            F.concat(F.lit("out of range: "), _names_where(required_out)),
        ),
        ("no_measures", no_measures, F.lit("every measure is missing or a sentinel")),
    ]
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, failed, why in reversed(checks):  # the first failing check wins
        reason = F.when(failed, F.lit(code)).otherwise(reason)
        detail = F.when(failed, why).otherwise(detail)

    missing = sum((v.isNull().cast("int") for v in kept.values()), F.lit(0))
    optional_out = sum(
        (
            F.coalesce(out_of_range[m.name], F.lit(False)).cast("int")
            for m in contract.measures
            if not m.required
        ),
        F.lit(0),
    )
    return df.select(
        *bronze.columns,
        F.trim(station).alias(contract.key_field),
        event_time.alias("event_time"),
        *[kept[m.name].alias(m.name) for m in contract.measures],
        missing.alias("qa_missing_fields"),
        optional_out.alias("qa_out_of_range_fields"),
        reason.alias("reason"),
        detail.alias("reason_detail"),
    )


def observation_columns(contract: SourceContract) -> list[str]:
    """Columns of `silver/<source>_observations`, in order (bronze coordinates kept for lineage)."""
    return [
        contract.key_field,
        "event_time",
        *contract.measure_names,
        "qa_missing_fields",
        "qa_out_of_range_fields",
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
    ]
