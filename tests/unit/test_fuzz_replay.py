"""Fuzzing the replay parsers (ingest/datasets.py) with hypothesis: whatever CSV-ish lines a
dataset file holds, a reader returns contract-shaped rows (bad rows dropped) or raises
DatasetError naming the file, never an unexpected exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.datasets import DatasetError, read_air_quality, read_weather
from periscope.contracts import AIR_QUALITY, WEATHER

AIR_HEADER = (
    "Date;Time;CO(GT);PT08.S1(CO);NMHC(GT);C6H6(GT);PT08.S2(NMHC);NOx(GT);PT08.S3(NOx);"
    "NO2(GT);PT08.S4(NO2);PT08.S5(O3);T;RH;AH;;"
)
AIR_GOOD = "10/03/2004;18.00.00;2,6;1360;150;11,9;1046;166;1056;113;1692;1268;13,6;48,9;0,7578;;"

# Characters that matter to these files (separators, decimals, dates, signs, quotes) and any other.
_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(list("0123456789;,.:/- \"'eE+-NaN\t")), st.characters()),
    max_size=80,
).map(lambda line: line.encode("utf-8", "surrogatepass"))
# Text lines, and raw bytes (invalid UTF-8 included); one line each.
CSV_ISH = st.one_of(_TEXT, st.binary(max_size=60)).map(
    lambda line: line.replace(b"\n", b" ").replace(b"\r", b" ")
)
AIR_LINE = st.one_of(
    st.just(AIR_GOOD.encode()),
    st.just(("10/03/2004;19.00.00" + ";-200" * 13 + ";;").encode()),
    CSV_ISH,
)
WEATHER_LINE = st.one_of(
    st.just(b"2012-10-01 13:00:00,282.08"),
    st.just(b"2012-10-01 14:00:00,"),
    st.builds(lambda t, v: t + b"," + v, CSV_ISH, CSV_ISH),
    CSV_ISH,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_rows(frame: pl.DataFrame, measures: list[str], lines: int) -> None:
    """Rows the reader kept are whole records: a timestamp, a key and at least one value."""
    assert frame.height <= lines
    assert frame["timestamp"].null_count() == 0
    assert frame["station_id"].null_count() == 0
    if frame.height:
        assert (
            frame.select(pl.any_horizontal(pl.col(m).is_not_null() for m in measures))
            .to_series()
            .all()
        )


@FUZZ
@given(lines=st.lists(AIR_LINE, max_size=8))
def test_air_quality_reader_keeps_good_rows_or_names_the_file(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "air_quality" / "AirQualityUCI.csv"
        path.parent.mkdir()
        path.write_bytes(b"\n".join([AIR_HEADER.encode(), *lines]) + b"\n")
        try:
            frame = read_air_quality(Path(tmp))
        except DatasetError as exc:
            assert str(path) in str(exc)
            return
        _check_rows(frame, AIR_QUALITY.measure_names, len(lines))
        assert (
            not frame.select(
                pl.any_horizontal(pl.col(m) == -200 for m in AIR_QUALITY.measure_names)
            )
            .to_series()
            .any()
        )


@FUZZ
@given(
    files=st.fixed_dictionaries(
        {m.source or m.name: st.lists(WEATHER_LINE, max_size=5) for m in WEATHER.measures}
    )
)
# Found by the fuzzer: an hour listed twice in two files came out as four rows.
@example(files={m.source or m.name: [b"2012-10-01 13:00:00,282.08"] * 2 for m in WEATHER.measures})
def test_weather_reader_keeps_good_rows_or_names_the_file(files: dict[str, list[bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "weather_hourly"
        folder.mkdir()
        (folder / "city_attributes.csv").write_text(
            "City,Country,Latitude,Longitude\nPortland,United States,45.52,-122.68\n"
        )
        for name, lines in files.items():
            (folder / f"{name}.csv").write_bytes(b"\n".join([b"datetime,Portland", *lines]) + b"\n")
        try:
            frame = read_weather(Path(tmp), stations=["portland"])
        except DatasetError as exc:
            assert "weather_hourly" in str(exc)
            return
        _check_rows(frame, WEATHER.measure_names, sum(len(lines) for lines in files.values()))
