"""Parse and validate bronze records against a source contract (pure DataFrame -> DataFrame).

`validate(bronze, contract)` keeps every bronze row and adds the parsed, typed fields, a
`reason` (null for a good record, else one of REASON_CODES) with a human `reason_detail`,
and QA counts. Sentinels (UCI's -200) become nulls, never readings. Field kinds parse as
their JSON types: measures as numbers, counts as whole numbers >= 0, flags as booleans,
categories and text as strings (a category must be one of its levels). A contract's
cross-field `rules` (a trip that ends before it starts) are checked last, each with its own
reason code, as SQL over the parsed fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from periscope.contracts import Category, Count, Field, Measure, SourceContract
from spark_streaming.silver.columns import observation_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["REASON_CODES", "observation_columns", "reason_codes", "validate"]

# The documented quarantine reasons, in the order they are checked: a record gets the first.
REASON_CODES: dict[str, str] = {
    "invalid_utf8": "the value is not valid UTF-8",
    "oversize": "the value is larger than the contract's max_record_bytes",
    "malformed_json": "the value is not a JSON object (broken JSON, an array, empty, or null)",
    "missing_key": "the contract's key field (station_id, ...) is absent, null or empty",
    "missing_timestamp": "the event-time field is absent or null",
    "invalid_timestamp": "the event-time field is not an ISO-8601 date-time",
    "missing_required": "a required field (the event id, say) is absent, null or empty",
    "wrong_type": "a number, whole number or boolean field holds another JSON type",
    "out_of_range": "a required value is outside its valid range (NaN, infinite, an unknown level)",
    "no_values": "every field besides key, time and event id is missing or a sentinel",
}


def reason_codes(contract: SourceContract) -> dict[str, str]:
    """Every reason a record of this contract can be quarantined for, in checking order:
    the generic ones, then the contract's rules."""
    return REASON_CODES | {rule.reason: rule.description for rule in contract.rules}


def _spark_type(field: Field):  # type: ignore[no-untyped-def]
    from pyspark.sql import types as T

    return {
        "measure": T.DoubleType(),
        "count": T.LongType(),
        "flag": T.BooleanType(),
    }.get(field.kind, T.StringType())


def _value(raw: Column, field: Field) -> Column:
    """The parsed value with sentinels turned into null (strings trimmed)."""
    from pyspark.sql import functions as F

    if isinstance(field, Measure) and field.sentinels:
        return F.when(raw.isin(*field.sentinels), F.lit(None).cast("double")).otherwise(raw)
    if field.kind in ("text", "category"):
        trimmed = F.trim(raw)
        return F.when(trimmed != F.lit(""), trimmed)
    return raw


def _out_of_range(value: Column, field: Field) -> Column | None:
    from pyspark.sql import functions as F

    if isinstance(field, Measure):
        return value.isNotNull() & (
            F.isnan(value) | (value < F.lit(field.valid_min)) | (value > F.lit(field.valid_max))
        )
    if isinstance(field, Count):
        too_big = value > F.lit(field.valid_max) if field.valid_max is not None else F.lit(False)
        return value.isNotNull() & ((value < F.lit(0)) | too_big)
    if isinstance(field, Category):
        return value.isNotNull() & ~value.isin(*field.levels)
    return None


def _names_where(conditions: dict[str, Column]) -> Column:
    """A comma-separated list of the names whose condition holds (for reason_detail)."""
    from pyspark.sql import functions as F

    return F.concat_ws(", ", *[F.when(cond, F.lit(name)) for name, cond in conditions.items()])


def _any_of(conditions: dict[str, Column]) -> Column:
    from pyspark.sql import functions as F

    result = F.lit(False)
    for cond in conditions.values():
        result = result | F.coalesce(cond, F.lit(False))
    return result


def validate(bronze: DataFrame, contract: SourceContract) -> DataFrame:
    """Every bronze row, with parsed fields, `reason`, `reason_detail` and QA counts."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType, StringType, StructField, StructType

    key, time_field = contract.key_field, contract.event_time_field
    fields = [f for f in contract.fields if f.name != key]
    typed_schema = StructType(
        [
            StructField(key, StringType()),
            StructField(time_field, StringType()),
            *[StructField(f.name, _spark_type(f)) for f in fields],
        ]
    )
    # A binary -> string cast does not check the bytes; is_valid_utf8 does (decode() would throw).
    utf8_ok = F.expr("is_valid_utf8(cast(value as string))")
    text = F.when(utf8_ok, F.col("value").cast("string"))
    df = bronze.select(
        "*",
        utf8_ok.alias("_utf8_ok"),
        F.length(F.col("value")).alias("_bytes"),
        # As a string map, a wrong-typed field is still visible; as typed fields it is null.
        F.from_json(text, MapType(StringType(), StringType())).alias("_fields"),  # type: ignore[arg-type]
        F.from_json(text, typed_schema).alias("_typed"),
    )
    entity = F.trim(F.col(f"_typed.`{key}`"))
    ts_text = F.col(f"_typed.`{time_field}`")
    event_time = F.expr(f"try_cast(_typed.`{time_field}` as timestamp)")

    raw = {f.name: F.col(f"_typed.`{f.name}`") for f in fields}
    wrong_type = {
        f.name: F.col("_fields").getItem(f.name).isNotNull() & raw[f.name].isNull()
        for f in fields
        if f.kind in ("measure", "count", "flag")
    }
    values = {f.name: _value(raw[f.name], f) for f in fields}
    ranges = {f.name: _out_of_range(values[f.name], f) for f in fields}
    out_of_range = {name: cond for name, cond in ranges.items() if cond is not None}
    required = {f.name for f in fields if f.required or f.name == contract.event_id_field}
    required_out = {n: c for n, c in out_of_range.items() if n in required}
    # Optional values out of range are dropped (null) and counted, not quarantined.
    kept = {
        f.name: values[f.name]
        if f.name in required or f.name not in out_of_range
        else F.when(out_of_range[f.name], None).otherwise(values[f.name])
        for f in fields
    }
    # A required measure may be missing (a sensor without that reading); a required field of
    # another kind, and the event id, must be present.
    must_exist = {
        f.name: kept[f.name].isNull()
        for f in fields
        if f.name in required and not isinstance(f, Measure)
    }
    # What a record carries besides its identity: all missing means nothing to keep.
    identity = {key, contract.event_id_field}
    no_values = F.lit(True)
    for name, value in kept.items():
        if name not in identity:
            no_values = no_values & value.isNull()

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
        ("missing_key", entity.isNull() | (entity == F.lit("")), F.lit(f"{key} is missing")),
        ("missing_timestamp", ts_text.isNull(), F.lit(f"{time_field} is missing")),
        (
            "invalid_timestamp",
            event_time.isNull(),
            F.format_string(f"{time_field} %s is not ISO-8601", ts_text),
        ),
        (
            "wrong_type",
            _any_of(wrong_type),
            F.concat(F.lit("wrong JSON type: "), _names_where(wrong_type)),
        ),
        (
            "missing_required",
            _any_of(must_exist),
            F.concat(F.lit("missing: "), _names_where(must_exist)),
        ),
        (
            "out_of_range",
            _any_of(required_out),
            F.concat(F.lit("out of range: "), _names_where(required_out)),
        ),
        ("no_values", no_values, F.lit("every value is missing or a sentinel")),
    ]
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, failed, why in reversed(checks):  # the first failing check wins
        reason = F.when(failed, F.lit(code)).otherwise(reason)
        detail = F.when(failed, why).otherwise(detail)

    counted = [name for name in kept if name not in identity]
    missing = sum((kept[n].isNull().cast("int") for n in counted), F.lit(0))
    optional_out = sum(
        (
            F.coalesce(cond, F.lit(False)).cast("int")
            for name, cond in out_of_range.items()
            if name not in required
        ),
        F.lit(0),
    )
    checked = df.select(
        *bronze.columns,
        entity.alias(key),
        event_time.alias("event_time"),
        *[kept[f.name].alias(f.name) for f in fields],
        missing.alias("qa_missing_fields"),
        optional_out.alias("qa_out_of_range_fields"),
        reason.alias("reason"),
        detail.alias("reason_detail"),
    )
    return _apply_rules(checked, contract)


def _apply_rules(checked: DataFrame, contract: SourceContract) -> DataFrame:
    """Records every field check passed get the reason of the first rule they break.

    The rules read the parsed columns by name (so they are SQL over the fields, as the
    contract states them); a rule whose condition is null passes.
    """
    from pyspark.sql import functions as F

    if not contract.rules:
        return checked
    passed = F.col("reason").isNull()
    reason: Column = F.col("reason")
    detail: Column = F.col("reason_detail")
    for rule in reversed(contract.rules):  # the first failing rule wins
        failed = passed & F.coalesce(F.expr(rule.condition), F.lit(False))
        shown = ", ".join(f"{name}=%s" for name in rule.fields)
        why = F.format_string(
            f"{rule.description.replace('%', '%%')}: {shown}",
            *[F.col(name).cast("string") for name in rule.fields],
        )
        reason = F.when(failed, F.lit(rule.reason)).otherwise(reason)
        detail = F.when(failed, why).otherwise(detail)
    return checked.withColumns({"reason": reason, "reason_detail": detail})
