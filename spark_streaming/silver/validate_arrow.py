"""Silver's validation without Spark: bronze rows (Arrow) in, exactly what the Spark path
(`validate` + `BatchProcessor._validate`) returns out.

`validate_arrow(bronze, contract)` keeps every bronze row, in order, with the columns
`_validate` selects: `observation_columns(contract)` without `reason`/`reason_detail`, then
`reason`, `reason_detail`, then the raw `key` and `value`, kept only for quarantined rows.
Same Arrow types, reason codes, first failing check, `reason_detail` texts and QA counts.

How: each value is parsed once in Python (orjson; the rare record orjson refuses, or one that
may repeat a name, is read by a small reader that follows Spark's Jackson settings), each
field's values become one Arrow column by their JSON types, and the rest is vectorised
(pyarrow.compute for the checks, Arrow's strptime for the producers' time form, DuckDB for the
contract's rules, whose conditions are SQL both engines read).

What Spark 4.0 does (found with real calls), and so what this does; pinned by
tests/unit/test_validate_arrow.py and compared with Spark on the same rows by
tests/integration/test_fuzz_silver.py:

- UTF-8: a null value (a tombstone) is `invalid_utf8`, as is anything Python's strict decoder
  refuses (Spark's `is_valid_utf8` agrees: overlong forms, surrogates, past U+10FFFF, cut).
- `oversize` counts bytes, after UTF-8 and before JSON; an oversize record is still parsed
  (its key, time and fields fill the quarantine's identity columns).
- JSON as `from_json` reads it (Jackson, Spark's defaults): the first JSON value of the text
  counts and anything after it is ignored (`{"a":1} junk` is an object); single quotes are
  allowed, `\'` too; the number tokens `NaN`, `Infinity`, `+Infinity`, `-Infinity`, `+INF`,
  `-INF` are read (`INF`, `+NaN`, `-NaN` are errors); comments, unquoted names, leading zeros,
  `+1`, `.5`, `1.`, trailing commas, raw control characters in strings, a byte order mark, and
  whitespace other than space, tab, CR and LF are errors. A lone `\ud800` escape becomes `?`.
  Anything that is not an object (an array, a scalar, `null`, empty, broken) is
  `malformed_json`, with every parsed column null.
- A name given twice: the last value wins, except that Spark's struct reader skips a value it
  cannot convert, keeping the one before (`{"t":1,"t":"x"}` reads t = 1.0, no `wrong_type`);
  `wrong_type` only when the last is not null and none converted. Followed exactly.
- Measures (double) take JSON numbers (2 is 2.0; 1e400 is +inf, so `out_of_range`) and the
  strings "NaN", "Infinity", "+Infinity", "-Infinity", "+INF", "-INF"; any other string
  ("12.5", "", "INF"), a boolean, an array or an object is `wrong_type`.
- Counts (long) take JSON integers within 64 bits only: 2.0, 1e2, "2", true and 2**63 are
  `wrong_type`. Flags take true/false only.
- String fields (key, event time, text, categories) take a JSON string as is; a number
  becomes its text (integers exactly, -0 as 0; decimals as Java prints a double: 1.50 -> "1.5",
  1e2 -> "100.0", 1e20 -> "1.0E20"; NaN/Infinity tokens with their quotes, '"NaN"'), a
  boolean "true"/"false", an object or array its compact JSON.
- The key and text/category values are trimmed of spaces only (Spark's `trim`: a tab stays);
  an empty key is `missing_key`, an empty text null. Category levels are exact (case too).
- Sentinels (UCI's -200) become null before the range check; NaN is out of range; an optional
  value out of range becomes null and counts in `qa_out_of_range_fields`.
- The event time is `try_cast(<text> as timestamp)` in the UTC session: `yyyy-[m]m-[d]d`, then
  optionally `T` or one space and `[h]h`, `:[m]m`, `:[s]s`, a fraction of 0-9 digits (cut to
  the microsecond, not rounded), then a zone (only after the seconds; one space may precede
  it): `Z`, `+h`, `+hh`, `+hh:mm`, `+hhmm`, `+hh:mm:ss`, `+hhmmss`, `+h:mm`, `+hh:m`, at most
  18:00 (no zone: UTC); whitespace and control characters around it ignored; real calendar
  dates only (no 02-30, 24:00 or :60); year 0000 allowed. `2017-01-01T10:00Z` (a zone after
  minutes) and `2017-01-01Z` are not times, in Spark either. Stricter than Spark on purpose
  (Spark reads these, this module calls them `invalid_timestamp`): a bare year or year-month,
  a time without a date (Spark stamps it with today), a year with a sign or more than four
  digits, and zone names (`UTC`, `GMT+2`, `CET`, `Europe/Paris`).
- Rules: each rule's `condition` runs in DuckDB over the checked columns (the key trimmed,
  sentinels and optional out-of-range values null); a null condition passes. Its
  `try_cast(<field> as int)` is Spark's (digits with a sign, whitespace around; "1e2",
  "0x10", "1_000", "132.5" are null, which DuckDB's own cast reads). `reason_detail` shows the
  values as Spark's `cast(... as string)` prints them (4200.0, 1.0E20, null as "null").

Known differences left (each needs a record no producer sends): Java 17 prints some doubles
below 2^53 or from 2^63 up with more digits than the shortest form this module writes (1e23 is
"9.999999999999999E22" in Spark, "1.0E23" here; whole doubles in between are written as Java
does) in a rule's detail or a number given to a string field; a number of
more than 1,000 characters in a decimal form orjson reads, or nesting between 1,000 and 1,024
levels deep, passes here where Jackson's limits make the record malformed; an object given
to a string field is written back without the names it repeats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from itertools import repeat
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from periscope.contracts import Category, Count, Field, Measure, SourceContract
from spark_streaming.silver.columns import observation_columns

__all__ = [
    "java_double_text",
    "parse_json_like_spark",
    "parse_timestamp_like_spark",
    "validate_arrow",
]

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

# --- Java's text for a double (Double.toString: Jackson's writer and Spark's cast) ---------


def java_double_text(x: float) -> str:
    """A double as Java's Double.toString writes it.

    >>> [java_double_text(v) for v in (1.5, 100.0, 1e20, 1e-5, 0.001, -0.0, 12345678.0)]
    ['1.5', '100.0', '1.0E20', '1.0E-5', '0.001', '-0.0', '1.2345678E7']
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    if _TWO_53 <= abs(x) < _TWO_63:  # a whole number: Java writes its exact digits
        digits, point = _java_long_digits(int(abs(x)))
    else:
        digits_tuple, exponent = Decimal(repr(abs(x))).as_tuple()[1:]
        assert isinstance(exponent, int)
        digits = "".join(map(str, digits_tuple)).rstrip("0") or "0"
        # value = 0.d1 d2 ... * 10^point: `point` digits before the decimal point
        point = len(digits_tuple) + exponent
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        whole = digits[:point].ljust(point, "0")
        return f"{sign}{whole}.{digits[point:] or '0'}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{point - 1}"


_TWO_53, _TWO_63 = 2.0**53, 2.0**63
# Decimal digits Java's FloatingDecimal drops (rounding) from a whole double of 2^(54 + i)...
_INSIGNIFICANT_DIGITS = (
    0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 8, 8, 8,
    9, 9, 9, 9, 10, 10, 10, 11, 11, 11, 12, 12, 12, 12, 13, 13, 13, 14, 14, 14, 15, 15, 15, 15,
    16, 16, 16, 17, 17, 17, 18, 18, 18, 19,
)  # fmt: skip


def _java_long_digits(value: int) -> tuple[str, int]:
    """(digits, point) as Java 17's Double.toString develops a whole double in [2^53, 2^63):
    the exact integer, less the digits its binary exponent makes insignificant (rounded half
    up), so 50319917348910288.0 keeps 17 digits where the shortest form has 16."""
    p2 = value.bit_length() - 1 - 54
    insignificant = _INSIGNIFICANT_DIGITS[p2] if 1 < p2 < len(_INSIGNIFICANT_DIGITS) else 0
    exponent = 0
    if insignificant:
        scale = 10**insignificant
        value, residue = divmod(value, scale)
        value += residue >= scale // 2
        exponent = insignificant
    text = str(value)
    digits = text.rstrip("0") or "0"
    return digits, len(text) + exponent


# --- JSON as Spark's Jackson reads it ------------------------------------------------------


class _NotJson(ValueError):
    pass


_WS = " \t\n\r"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPES["'"] = "'"  # Jackson allows \' when single quotes are allowed (Spark's default)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_NON_NUMBERS = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "+Infinity": math.inf,
    "-Infinity": -math.inf,
    "+INF": math.inf,
    "-INF": -math.inf,
}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 1000  # Jackson's default limits (StreamReadConstraints)
_MAX_NUMBER_LENGTH = 1000


class _Repeated:
    """Every value of a name the root object gives more than once, in order."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __eq__(self, other: object) -> bool:
        return type(other) is _Repeated and other.values == self.values

    def __repr__(self) -> str:
        return f"_Repeated({self.values!r})"


class _Reader:
    """A recursive-descent reader of one JSON value with Spark's Jackson options."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def skip_ws(self) -> None:
        text, at = self.text, self.at
        while at < len(text) and text[at] in _WS:
            at += 1
        self.at = at

    def peek(self) -> str:
        if self.at >= len(self.text):
            raise _NotJson("unexpected end")
        return self.text[self.at]

    def value(self, depth: int) -> Any:
        self.skip_ws()
        c = self.peek()
        if c in "{[":
            if depth >= _MAX_DEPTH:
                raise _NotJson("too deep")
            return self.object(depth + 1, root=depth == 0) if c == "{" else self.array(depth + 1)
        if c in "\"'":
            return self.string()
        for token, number in _NON_NUMBERS.items():
            if self.text.startswith(token, self.at):
                self.at += len(token)
                return number
        for token, literal in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(token, self.at):
                self.at += len(token)
                return literal
        match = _NUMBER.match(self.text, self.at)
        if not match:
            raise _NotJson(f"unexpected {c!r}")
        self.at = match.end()
        if len(match.group()) > _MAX_NUMBER_LENGTH:
            raise _NotJson("number too long")
        if self.at < len(self.text) and self.text[self.at] in ".eE0123456789":
            raise _NotJson("bad number")  # 01, 1., 1e
        if match.group(1) or match.group(2):
            return float(match.group())
        return int(match.group())

    def object(self, depth: int, *, root: bool = False) -> dict[str, Any]:
        """An object; at the root, a name given more than once keeps all its values."""
        self.at += 1
        result: dict[str, Any] = {}
        self.skip_ws()
        if self.peek() == "}":
            self.at += 1
            return result
        while True:
            self.skip_ws()
            if self.peek() not in "\"'":
                raise _NotJson("a name must be quoted")
            name = self.string()
            self.skip_ws()
            if self.peek() != ":":
                raise _NotJson("expected ':'")
            self.at += 1
            value = self.value(depth)
            if name not in result:
                result[name] = value
            elif root:
                earlier = result[name]
                result[name] = _Repeated(
                    [*earlier.values, value] if type(earlier) is _Repeated else [earlier, value]
                )
            else:
                result[name] = value  # the last wins (in a string field's copy of an object)
            self.skip_ws()
            c = self.peek()
            self.at += 1
            if c == "}":
                return result
            if c != ",":
                raise _NotJson("expected ',' or '}'")

    def array(self, depth: int) -> list[Any]:
        self.at += 1
        result: list[Any] = []
        self.skip_ws()
        if self.peek() == "]":
            self.at += 1
            return result
        while True:
            result.append(self.value(depth))
            self.skip_ws()
            c = self.peek()
            self.at += 1
            if c == "]":
                return result
            if c != ",":
                raise _NotJson("expected ',' or ']'")

    def string(self) -> str:
        quote = self.text[self.at]
        self.at += 1
        text, parts = self.text, []
        while True:
            end = self.at
            while end < len(text) and text[end] not in (quote, "\\") and text[end] >= " ":
                end += 1
            parts.append(text[self.at : end])
            self.at = end
            c = self.peek()
            if c == quote:
                self.at += 1
                break
            if c != "\\":
                raise _NotJson("control character in a string")
            escape = text[self.at + 1 : self.at + 2]
            if escape == "u":
                code = text[self.at + 2 : self.at + 6]
                if not re.fullmatch(r"[0-9a-fA-F]{4}", code):
                    raise _NotJson("bad \\u escape")
                parts.append(chr(int(code, 16)))
                self.at += 6
            elif escape in _ESCAPES:
                parts.append(_ESCAPES[escape])
                self.at += 2
            else:
                raise _NotJson("bad escape")
        joined = "".join(parts)
        if _LONE_SURROGATE.search(joined):
            # Escaped pairs make one character; a lone half becomes '?' (Java's UTF-8 encoder).
            utf16 = joined.encode("utf-16-le", "surrogatepass")
            joined = _LONE_SURROGATE.sub("?", utf16.decode("utf-16-le", "surrogatepass"))
        return joined


def parse_json_like_spark(text: str) -> Any:
    """The first JSON value of `text` as Spark's from_json reads it (trailing text ignored);
    raises ValueError when Spark would call it malformed. A name the root object repeats
    keeps all its values.

    >>> parse_json_like_spark("{'a': NaN, 'b': 'x', 'a': 2} and more")
    {'a': _Repeated([nan, 2]), 'b': 'x'}
    """
    reader = _Reader(text)
    return reader.value(0)


def _read_like_spark(text: str) -> Any:
    """What the Spark-like reader makes of a text orjson refused; None if Spark could not read it."""
    try:
        return parse_json_like_spark(text)
    except (_NotJson, RecursionError):
        return None


# --- event time ------------------------------------------------------------------------------

# Spark's forms: a zone only after the seconds; an offset as java.time reads it once Spark has
# padded a one-digit hour (+2:00) or minute (+02:0): +h, +hh, +hh:mm, +hhmm, +hh:mm:ss, +hhmmss.
_ZONE = r"Z|[+-](?:[0-9]{1,2}(?::[0-9]{2}(?::[0-9]{2})?)?|[0-9]{2}:[0-9]|[0-9]{4}(?:[0-9]{2})?)"
_TIME = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:[T ](?P<h>[0-9]{1,2})(?::(?P<mi>[0-9]{1,2})"
    r"(?::(?P<s>[0-9]{1,2})(?:\.(?P<f>[0-9]{0,9}))?(?: ?(?P<z>" + _ZONE + r"))?)?)?)?"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _strip_like_spark(text: str) -> str:
    """Spark trims whitespace and control characters (code points <= 32) from both ends."""
    start, end = 0, len(text)
    while start < end and ord(text[start]) <= 32:
        start += 1
    while end > start and ord(text[end - 1]) <= 32:
        end -= 1
    return text[start:end]


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year 0 included, as in Spark)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _offset_seconds(zone: str | None) -> int | None:
    """Seconds east of UTC of a zone; None if java.time would refuse it (past +-18:00)."""
    if not zone or zone == "Z":
        return 0
    digits = zone[1:]
    if ":" in digits:
        parts = [int(p) for p in digits.split(":")]
    else:
        parts = (
            [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
            if len(digits) > 2
            else [int(digits)]
        )
    hours, minutes, seconds = (*parts, 0, 0)[:3]
    total = hours * 3600 + minutes * 60 + seconds
    if hours > 18 or minutes > 59 or seconds > 59 or total > 18 * 3600:
        return None
    return total if zone[0] == "+" else -total


def parse_timestamp_like_spark(text: str) -> int | None:
    """Microseconds since the epoch of an ISO-8601 date-time (UTC unless it names an
    offset), as Spark's try_cast reads it; None when it is not one.

    >>> parse_timestamp_like_spark("2017-01-01T10:00:00+02:00")
    1483257600000000
    >>> parse_timestamp_like_spark("2017") is None
    True
    """
    match = _TIME.fullmatch(_strip_like_spark(text))
    if not match:
        return None
    parts = match.groupdict()
    offset = _offset_seconds(parts["z"])
    year, month, day = int(parts["y"]), int(parts["mo"]), int(parts["d"])
    hour, minute, second = (int(parts[k] or 0) for k in ("h", "mi", "s"))
    if offset is None or not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _DAYS_IN_MONTH[month - 1] + (month == 2 and leap):
        return None
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset) * 1_000_000 + int((parts["f"] or "").ljust(6, "0")[:6])


# --- one field's values by JSON type ---------------------------------------------------------

_WRONG = object()  # a JSON value of the wrong type for its field
_DOUBLE_STRINGS = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "+Infinity": math.inf,
    "-Infinity": -math.inf,
    "+INF": math.inf,
    "-INF": -math.inf,
}


def _as_double(x: Any) -> Any:
    kind = type(x)
    if kind is float:
        return x
    if kind is int:
        try:
            return float(x)
        except OverflowError:
            return math.inf if x > 0 else -math.inf
    if kind is str:
        return _DOUBLE_STRINGS.get(x, _WRONG)
    return _WRONG


def _as_long(x: Any) -> Any:
    return x if type(x) is int and _LONG_MIN <= x <= _LONG_MAX else _WRONG


def _as_flag(x: Any) -> Any:
    return x if type(x) is bool else _WRONG


def _jackson_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch < " ":
            short = {"\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}.get(ch)
            out.append("\\" + short if short else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _compact_json(x: Any) -> str:
    """A JSON value written back compactly, as Jackson's copyCurrentStructure writes it."""
    if x is None:
        return "null"
    if x is True or x is False:
        return "true" if x else "false"
    if type(x) is int:
        return str(x)
    if type(x) is float:
        return f'"{java_double_text(x)}"' if not math.isfinite(x) else java_double_text(x)
    if type(x) is str:
        return _jackson_string(x)
    if type(x) is list:
        return "[" + ",".join(_compact_json(v) for v in x) + "]"
    return "{" + ",".join(f"{_jackson_string(k)}:{_compact_json(v)}" for k, v in x.items()) + "}"


def _as_string(x: Any) -> Any:
    kind = type(x)
    if kind is str:
        return x
    if kind is bool:
        return "true" if x else "false"
    if kind is int:
        return str(x)
    if kind is float:
        return java_double_text(x) if math.isfinite(x) else _compact_json(x)
    return _compact_json(x)


_CONVERTERS: dict[str, tuple[Callable[[Any], Any], pa.DataType]] = {
    "measure": (_as_double, pa.float64()),
    "count": (_as_long, pa.int64()),
    "flag": (_as_flag, pa.bool_()),
    "text": (_as_string, pa.string()),
    "category": (_as_string, pa.string()),
}
# The JSON types a field's column takes as they are (the rest go through its converter).
_FAST_TYPES: dict[str, frozenset[type]] = {
    "measure": frozenset({float, type(None)}),
    "count": frozenset({int, type(None)}),
    "flag": frozenset({bool, type(None)}),
    "text": frozenset({str, type(None)}),
    "category": frozenset({str, type(None)}),
}


def _column(raw: list[Any], kind: str, reparse: Callable[[int], Any]) -> tuple[pa.Array, Any]:
    """(typed values, wrong-type mask or None) of one field's raw JSON values.

    Values of the field's own JSON type are taken as they are; only the others (a malformed
    record's string in a number field, say) go one by one through the field's converter.
    `reparse(i)` re-reads row i with the Spark-like reader: orjson turns integers past 64
    bits into floats, whose text a string field must not take.
    """
    convert, arrow_type = _CONVERTERS[kind]
    fast = _FAST_TYPES[kind]
    odd = np.flatnonzero(~np.fromiter(map(fast.__contains__, map(type, raw)), bool, len(raw)))
    if kind == "count":  # an int past 64 bits is no long
        too_big = [
            i for i, x in enumerate(raw) if type(x) is int and not _LONG_MIN <= x <= _LONG_MAX
        ]
        odd = np.union1d(odd, np.array(too_big, dtype=np.intp))
    if not len(odd):
        return pa.array(raw, arrow_type), None
    values, wrong = list(raw), np.zeros(len(raw), dtype=bool)
    string_kind = kind in ("text", "category")
    for i in odd.tolist():
        x = raw[i]
        if string_kind and type(x) is float:
            x = reparse(i)
        if type(x) is _Repeated:
            typed, wrong[i] = _last_converted(x.values, convert)
        else:
            typed = convert(x) if x is not None else None
            if typed is _WRONG:
                wrong[i] = True
                typed = None
        values[i] = typed
    return pa.array(values, arrow_type), wrong


def _last_converted(values: list[Any], convert: Callable[[Any], Any]) -> tuple[Any, bool]:
    """(value, wrong type?) of a name given several times, as Spark reads it: its struct reader
    keeps the last value that converts (a null clears it, one that does not convert is
    skipped); its map reader keeps the last value, which is the wrong type if it is not null
    and nothing converted."""
    typed = None
    for value in values:
        if value is None:
            typed = None
            continue
        converted = convert(value)
        if converted is not _WRONG:
            typed = converted
    return typed, values[-1] is not None and typed is None


# --- the checks ------------------------------------------------------------------------------


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean column as numpy, null read as false."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _kept_value(values: pa.Array, field: Field) -> pa.Array:
    """Sentinels become null, strings are trimmed of spaces (an empty one is null)."""
    if isinstance(field, Measure) and field.sentinels:
        return pc.if_else(
            pc.is_in(values, pa.array(field.sentinels, pa.float64())),
            pa.scalar(None, pa.float64()),
            values,
        )
    if field.kind in ("text", "category"):
        trimmed = pc.utf8_trim(values, characters=" ")
        return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    return values


def _out_of_range(values: pa.Array, field: Field) -> np.ndarray | None:
    if isinstance(field, Measure):
        numbers = values.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            out = np.isnan(numbers) | (numbers < field.valid_min) | (numbers > field.valid_max)
        return out & ~_mask(pc.is_null(values))
    if isinstance(field, Count):
        out = _mask(pc.less(values, 0))
        if field.valid_max is not None:
            out |= _mask(pc.greater(values, field.valid_max))
        return out
    if isinstance(field, Category):
        return _mask(pc.invert(pc.is_in(values, pa.array(field.levels)))) & ~_mask(
            pc.is_null(values)
        )
    return None


def _names(conditions: dict[str, np.ndarray], row: int) -> str:
    return ", ".join(name for name, cond in conditions.items() if cond[row])


def _rule_text(value: Any, arrow_type: pa.DataType) -> str:
    """A value as Spark's cast(... as string) prints it inside format_string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if pa.types.is_floating(arrow_type):
        return java_double_text(value)
    return str(value)


def validate_arrow(bronze: pa.Table, contract: SourceContract) -> pa.Table:
    """Every bronze row, parsed and checked: the table `BatchProcessor._validate` returns."""
    bronze = bronze.combine_chunks()
    n = bronze.num_rows
    key_field, time_field = contract.key_field, contract.event_time_field
    fields = [f for f in contract.fields if f.name != key_field]
    values: list[bytes | None] = bronze["value"].to_pylist()

    # 1. bytes: UTF-8, size, one JSON object per record. orjson checks UTF-8 as strictly
    # as Python's decoder: only what it refuses is decoded and read again.
    sizes = pc.fill_null(pc.binary_length(bronze["value"]), 0).to_numpy()
    utf8_ok = np.ones(n, dtype=bool)
    objects: list[Any] = [None] * n
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for i, value in enumerate(values):
        try:
            parsed = loads(value)  # type: ignore[arg-type]
            # One '":' per name, or names given twice (or nested objects): read it as Spark does.
            if type(parsed) is not dict or value.count(b'":') == len(parsed):  # type: ignore[union-attr]
                objects[i] = parsed
                continue
        except decode_error:
            pass
        if value is None:  # a tombstone
            utf8_ok[i] = False
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            utf8_ok[i] = False
            continue
        objects[i] = _read_like_spark(text)
    objects = [o if type(o) is dict else None for o in objects]

    def reparse(i: int) -> Any:
        return parse_json_like_spark(values[i].decode())  # type: ignore[union-attr]

    empty: dict[str, Any] = {}
    rows = [o if o is not None else empty for o in objects]

    def reparsed(name: str) -> Callable[[int], Any]:
        return lambda i: reparse(i).get(name)

    def raw_column(name: str, kind: str) -> tuple[pa.Array, Any]:
        return _column(list(map(dict.get, rows, repeat(name, n))), kind, reparsed(name))

    # 2. typed fields
    key_raw, _ = raw_column(key_field, "text")
    entity = pc.utf8_trim(key_raw, characters=" ")
    ts_text, _ = raw_column(time_field, "text")
    event_time = _event_times(ts_text)
    raw: dict[str, pa.Array] = {}
    wrong_type: dict[str, np.ndarray] = {}
    for f in fields:
        raw[f.name], wrong = raw_column(f.name, f.kind)
        if f.kind in ("measure", "count", "flag"):
            wrong_type[f.name] = wrong if wrong is not None else np.zeros(n, dtype=bool)
    kept_values = {f.name: _kept_value(raw[f.name], f) for f in fields}
    ranges = {f.name: _out_of_range(kept_values[f.name], f) for f in fields}
    out_of_range = {name: cond for name, cond in ranges.items() if cond is not None}
    required = {f.name for f in fields if f.required or f.name == contract.event_id_field}
    required_out = {name: c for name, c in out_of_range.items() if name in required}
    kept = {
        name: value
        if name in required or name not in out_of_range
        else pc.if_else(out_of_range[name], pa.scalar(None, value.type), value)
        for name, value in kept_values.items()
    }
    null = {name: _mask(pc.is_null(value)) for name, value in kept.items()}
    must_exist = {
        f.name: null[f.name] for f in fields if f.name in required and not isinstance(f, Measure)
    }
    identity = {key_field, contract.event_id_field}
    counted = [name for name in kept if name not in identity]
    no_values = np.ones(n, dtype=bool)
    for name in counted:
        no_values &= null[name]
    missing = np.zeros(n, dtype=np.int32)
    for name in counted:
        missing += null[name]
    optional_out = np.zeros(n, dtype=np.int32)
    for name, cond in out_of_range.items():
        if name not in required:
            optional_out += cond

    # 3. the first failing check, then the first broken rule
    entity_missing = _mask(pc.is_null(entity)) | _mask(pc.equal(entity, ""))
    ts_missing = _mask(pc.is_null(ts_text))
    checks: list[tuple[str, np.ndarray]] = [
        ("invalid_utf8", ~utf8_ok),
        ("oversize", sizes > contract.max_record_bytes),
        ("malformed_json", np.array([o is None for o in objects], dtype=bool)),
        ("missing_key", entity_missing),
        ("missing_timestamp", ts_missing),
        ("invalid_timestamp", _mask(pc.is_null(event_time))),
        ("wrong_type", _any(wrong_type, n)),
        ("missing_required", _any(must_exist, n)),
        ("out_of_range", _any(required_out, n)),
        ("no_values", no_values),
    ]
    failed = np.stack([mask for _, mask in checks])
    first = np.where(failed.any(axis=0), failed.argmax(axis=0), -1)
    codes: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    ts_values = ts_text.to_pylist()
    for row in np.flatnonzero(first >= 0).tolist():
        code = checks[first[row]][0]
        codes[row] = code
        details[row] = _detail(
            code,
            row,
            contract=contract,
            size=int(sizes[row]),
            ts_text=ts_values[row],
            wrong_type=wrong_type,
            must_exist=must_exist,
            required_out=required_out,
        )

    columns: dict[str, pa.Array] = {
        key_field: entity,
        "event_time": event_time,
        **kept,
        "qa_missing_fields": pa.array(missing, pa.int32()),
        "qa_out_of_range_fields": pa.array(optional_out, pa.int32()),
    }
    if contract.rules:
        _apply_rules(columns, contract, codes, details)
    reason = pa.array(codes, pa.string())
    bad = pc.is_valid(reason)
    columns |= {name: bronze[name] for name in ("topic", "partition", "offset", "kafka_timestamp")}
    parsed_names = [
        c for c in observation_columns(contract) if c not in ("reason", "reason_detail")
    ]
    return pa.table(
        {
            **{name: columns[name] for name in parsed_names},
            "reason": reason,
            "reason_detail": pa.array(details, pa.string()),
            "key": pc.if_else(bad, bronze["key"], pa.scalar(None, bronze["key"].type)),
            "value": pc.if_else(bad, bronze["value"], pa.scalar(None, bronze["value"].type)),
        }
    )


def _any(conditions: dict[str, np.ndarray], n: int) -> np.ndarray:
    result = np.zeros(n, dtype=bool)
    for cond in conditions.values():
        result |= cond
    return result


_WIRE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _event_times(ts_text: pa.Array) -> pa.Array:
    """Event times: the producers' form (2017-01-01T10:00:00Z) parsed by Arrow in one go and
    kept where it prints back the same (Arrow rolls 02-30 over to 03-02), every other
    distinct text parsed once in Python."""
    wire = pc.strptime(ts_text, format=_WIRE_FORMAT, unit="s", error_is_null=True)
    same = pc.fill_null(pc.equal(pc.strftime(wire, format=_WIRE_FORMAT), ts_text), False)
    times = pc.if_else(same, wire, pa.scalar(None, wire.type)).cast(_TIMESTAMP)
    rest = pc.and_(pc.invert(same), pc.is_valid(ts_text))
    if not pc.any(rest).as_py():
        return times
    others = pc.unique(pc.filter(ts_text, rest))
    parsed = pa.array(
        [parse_timestamp_like_spark(text) for text in others.to_pylist()], pa.int64()
    ).cast(_TIMESTAMP)
    return pc.if_else(same, times, pc.take(parsed, pc.index_in(ts_text, others)))


def _detail(
    code: str,
    row: int,
    *,
    contract: SourceContract,
    size: int,
    ts_text: str | None,
    wrong_type: dict[str, np.ndarray],
    must_exist: dict[str, np.ndarray],
    required_out: dict[str, np.ndarray],
) -> str:
    """`reason_detail` of one quarantined row, worded as validate.py words it."""
    if code == "invalid_utf8":
        return "value bytes are not valid UTF-8"
    if code == "oversize":
        return f"value is {size} bytes > {contract.max_record_bytes}"
    if code == "malformed_json":
        return "value is not a JSON object"
    if code == "missing_key":
        return f"{contract.key_field} is missing"
    if code == "missing_timestamp":
        return f"{contract.event_time_field} is missing"
    if code == "invalid_timestamp":
        return f"{contract.event_time_field} {ts_text} is not ISO-8601"
    if code == "wrong_type":
        return "wrong JSON type: " + _names(wrong_type, row)
    if code == "missing_required":
        return "missing: " + _names(must_exist, row)
    if code == "out_of_range":
        return "out of range: " + _names(required_out, row)
    return "every value is missing or a sentinel"


# Spark's try_cast(<string> as int): digits with an optional sign, whitespace and control
# characters around them ignored, null past 32 bits. DuckDB's own cast also reads 1e2, 0x10 and
# 1_000 and rounds 132.5, so a rule's `try_cast(... as int)` is run with this macro instead.
_SPARK_INT_MACRO = r"""
create or replace macro spark_try_cast_int(x) as (
    case when regexp_full_match(x, '[\x00-\x20\x7f]*[+-]?[0-9]+[\x00-\x20\x7f]*') then
        case when try_cast(regexp_extract(x, '[+-]?[0-9]+') as hugeint)
            between -2147483648 and 2147483647
        then cast(regexp_extract(x, '[+-]?[0-9]+') as integer) end
    end
)
"""
_TRY_CAST_INT = re.compile(r"try_cast\(\s*([a-z_][a-z0-9_]*)\s+as\s+int\s*\)", re.IGNORECASE)


def _spark_casts(sql: str) -> str:
    """A rule's SQL with its `try_cast(<field> as int)` read as Spark reads it.

    >>> _spark_casts("try_cast(pu_location_id as int) is null")
    'spark_try_cast_int(pu_location_id) is null'
    """
    return _TRY_CAST_INT.sub(r"spark_try_cast_int(\1)", sql)


def _is_none(x: object) -> bool:
    return x is None


def _apply_rules(
    columns: dict[str, pa.Array],
    contract: SourceContract,
    codes: list[str | None],
    details: list[str | None],
) -> None:
    """Rows every field check passed get the reason of the first rule they break (in place)."""
    passed = np.flatnonzero(np.fromiter(map(_is_none, codes), bool, len(codes))).tolist()
    if not passed:
        return
    read = sorted(
        {name for rule in contract.rules for name in rule.fields} | set(contract.field_names)
    )
    table = pa.table({name: columns[name] for name in read}).take(pa.array(passed, pa.int64()))
    broken = ", ".join(
        f"coalesce(({rule.condition}), false) as rule_{i}" for i, rule in enumerate(contract.rules)
    )
    with duckdb.connect() as con:
        con.execute(_SPARK_INT_MACRO)
        con.register("checked", table)
        verdicts = con.execute(f"select {_spark_casts(broken)} from checked").fetchnumpy()
    for i, rule in enumerate(contract.rules):
        hits = np.flatnonzero(np.asarray(verdicts[f"rule_{i}"], dtype=bool))
        rows = [passed[position] for position in hits.tolist()]
        shown = {
            name: [
                _rule_text(v, columns[name].type)
                for v in pc.take(columns[name], pa.array(rows, pa.int64())).to_pylist()
            ]
            for name in rule.fields
        }
        for j, row in enumerate(rows):
            if codes[row] is not None:
                continue  # an earlier rule already broke
            codes[row] = rule.reason
            values = ", ".join(f"{name}={shown[name][j]}" for name in rule.fields)
            details[row] = f"{rule.description}: {values}"
