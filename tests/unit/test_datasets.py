"""The dataset parsers against the real files in `settings.data_dir`, checked cell by cell."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from ingest.datasets import (
    UCI_STATION_ID,
    load_stations,
    read_air_quality,
    read_source,
    read_weather,
    station_id,
)
from periscope.contracts import AIR_QUALITY, WEATHER
from periscope.settings import Settings

# Cities missing from the derived temperature.csv and pressure.csv (data/PROVENANCE.md, 2c).
NO_TEMPERATURE = ("vancouver", "san_francisco", "toronto", "montreal")


@pytest.fixture(scope="module")
def data_dir() -> Path:
    # Module-scoped, so it cannot use the unit conftest's function-scoped environment.
    settings = Settings(_env_file=None, postgres_owner_password="unit", postgres_bi_password="unit")
    return settings.data_dir


@pytest.fixture(scope="module")
def weather(data_dir: Path) -> pl.DataFrame:
    """Every station, read once (about a second): the files are 36 MB."""
    return read_weather(data_dir)


@pytest.fixture(scope="module")
def air(data_dir: Path) -> pl.DataFrame:
    return read_air_quality(data_dir)


def _at(frame: pl.DataFrame, station: str, *when: int) -> dict:
    rows = frame.filter(
        (pl.col("station_id") == station) & (pl.col("timestamp") == datetime(*when, tzinfo=UTC))
    ).to_dicts()
    assert len(rows) == 1, f"{station} {when}: {len(rows)} rows"
    return rows[0]


# --- stations ------------------------------------------------------------------------------


def test_station_ids_are_slugs_of_city_names():
    assert station_id("Tel Aviv District") == "tel_aviv_district"
    assert station_id("Saint Louis") == "saint_louis"
    assert station_id("New York") == "new_york"


def test_stations_are_the_36_cities_with_their_coordinates(data_dir):
    stations = load_stations(data_dir)
    assert len(stations) == 36
    assert len({s.station_id for s in stations}) == 36
    by_id = {s.station_id: s for s in stations}
    portland = by_id["portland"]
    assert (portland.name, portland.country) == ("Portland", "United States")
    assert (portland.latitude, portland.longitude) == (45.523449, -122.676208)
    assert by_id["tel_aviv_district"].country == "Israel"
    assert {"saint_louis", *NO_TEMPERATURE} <= set(by_id)


# --- air quality ---------------------------------------------------------------------------


def test_air_quality_schema_follows_the_contract(air):
    assert air.columns == ["station_id", "timestamp", *AIR_QUALITY.measure_names]
    assert air.schema["station_id"] == pl.Utf8
    assert air.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert all(air.schema[m] == pl.Float64 for m in AIR_QUALITY.measure_names)
    assert air["station_id"].unique().to_list() == [UCI_STATION_ID]


def test_air_quality_first_row_by_value(air):
    first = air.row(0, named=True)
    assert first["timestamp"] == datetime(2004, 3, 10, 18, tzinfo=UTC)
    expected = {
        "co_gt": 2.6,
        "pt08_s1_co": 1360.0,
        "nmhc_gt": 150.0,
        "c6h6_gt": 11.9,
        "pt08_s2_nmhc": 1046.0,
        "nox_gt": 166.0,
        "pt08_s3_nox": 1056.0,
        "no2_gt": 113.0,
        "pt08_s4_no2": 1692.0,
        "pt08_s5_o3": 1268.0,
        "temperature": 13.6,
        "relative_humidity": 48.9,
        "absolute_humidity": 0.7578,
    }
    assert {k: first[k] for k in expected} == expected


def test_air_quality_sentinels_become_nulls(air):
    # 11/03/2004;03.00.00;0,6;1010;19;1,7;561;-200;1705;-200;1235;501;10,3;60,2;0,7517
    row = _at(air, UCI_STATION_ID, 2004, 3, 11, 3)
    assert (row["co_gt"], row["nox_gt"], row["no2_gt"], row["pt08_s3_nox"]) == (
        0.6,
        None,
        None,
        1705.0,
    )
    # 01/04/2004;14.00.00;1,7;-200;222;-200,0;...: the sentinel also appears as "-200,0".
    row = _at(air, UCI_STATION_ID, 2004, 4, 1, 14)
    assert (row["co_gt"], row["pt08_s1_co"], row["nmhc_gt"], row["c6h6_gt"]) == (
        1.7,
        None,
        222.0,
        None,
    )
    assert (
        air.select(pl.any_horizontal(pl.col(AIR_QUALITY.measure_names) == -200.0).any()).item()
        is False
    )


def test_air_quality_row_counts_and_hourly_order(data_dir, air):
    raw = pl.read_csv(data_dir / "air_quality" / "AirQualityUCI.csv", separator=";")
    assert raw.height == 8_357
    # 31 rows are -200 in all 13 measures (e.g. 25/05/2004 19:00): nothing to keep.
    assert air.height == 8_326
    assert air.filter(pl.col("timestamp") == datetime(2004, 5, 25, 19, tzinfo=UTC)).is_empty()
    assert air["timestamp"].is_sorted() and air["timestamp"].n_unique() == air.height
    assert air["timestamp"][-1] == datetime(2005, 2, 21, 22, tzinfo=UTC)


def test_air_quality_local_times_are_kept_as_recorded(air):
    # 28/03/2004 02:00 does not exist in Europe/Rome (clocks jumped to 03:00), yet the
    # station recorded it: labelling as recorded keeps it, one row per hour.
    assert _at(air, UCI_STATION_ID, 2004, 3, 28, 2)["co_gt"] == 1.7
    night = air.filter(
        pl.col("timestamp").is_between(
            datetime(2004, 10, 31, 0, tzinfo=UTC), datetime(2004, 10, 31, 4, tzinfo=UTC)
        )
    )
    assert night["timestamp"].dt.hour().to_list() == [0, 1, 2, 3, 4]


# --- weather -------------------------------------------------------------------------------


def test_weather_schema_follows_the_contract(weather):
    assert weather.columns == ["station_id", "timestamp", *WEATHER.measure_names]
    assert weather.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert weather.schema["station_id"] == pl.Utf8
    assert all(weather.schema[m] == pl.Float64 for m in WEATHER.measure_names)


def test_weather_cells_by_value(weather):
    # temperature.csv: 2012-10-01 13:00:00,282.08,... (Portland); humidity 81.0; pressure 1024.0
    portland = _at(weather, "portland", 2012, 10, 1, 13)
    assert portland["temperature"] == 8.93  # 282.08 K, float noise rounded away
    assert (portland["humidity"], portland["pressure"]) == (81.0, 1024.0)
    assert portland["wind_direction"] is None  # wind_direction.csv starts 2016-12-01
    # 2017-01-15 06:00:00: temperature 268.99 K, humidity 68, pressure 1026, wind 3 m/s from 120°
    later = _at(weather, "portland", 2017, 1, 15, 6)
    assert later == {
        "station_id": "portland",
        "timestamp": datetime(2017, 1, 15, 6, tzinfo=UTC),
        "temperature": -4.16,
        "humidity": 68.0,
        "pressure": 1026.0,
        "wind_speed": 3.0,
        "wind_direction": 120.0,
    }
    assert _at(weather, "san_francisco", 2017, 1, 15, 6)["wind_direction"] == 292.0
    assert _at(weather, "jerusalem", 2012, 10, 1, 13)["humidity"] == 50.0


def test_cities_missing_from_temperature_file_have_null_temperature_but_real_humidity(weather):
    missing = weather.filter(pl.col("station_id").is_in(NO_TEMPERATURE))
    assert set(missing["station_id"].unique()) == set(NO_TEMPERATURE)
    assert missing["temperature"].null_count() == missing.height
    assert missing["pressure"].null_count() == missing.height
    assert missing["humidity"].drop_nulls().len() > 39_000
    vancouver = _at(weather, "vancouver", 2017, 1, 15, 6)
    assert (vancouver["temperature"], vancouver["humidity"], vancouver["wind_direction"]) == (
        None,
        74.0,
        76.0,
    )


def test_wind_direction_covers_only_december_2016_onward(weather):
    before = weather.filter(pl.col("timestamp") < datetime(2016, 12, 1, tzinfo=UTC))
    after = weather.filter(pl.col("timestamp") >= datetime(2016, 12, 1, tzinfo=UTC))
    assert before["wind_direction"].null_count() == before.height
    assert after.height == 3_624 * 36
    assert after["wind_direction"].null_count() == 1


def test_weather_row_counts_order_and_dropped_empty_rows(weather):
    # 40,140 hours x 36 stations, less the all-empty cells: the first hour has only Eilat.
    assert weather.height == 1_445_005
    assert weather["station_id"].n_unique() == 36
    first_hour = weather.filter(pl.col("timestamp") == datetime(2012, 10, 1, 12, tzinfo=UTC))
    assert first_hour["station_id"].to_list() == ["eilat"]
    assert (
        weather.select(pl.all_horizontal(pl.col(WEATHER.measure_names).is_null()).any()).item()
        is False
    )
    assert weather.equals(weather.sort("timestamp", "station_id"))
    assert weather.select(pl.struct("station_id", "timestamp").is_unique().all()).item()
    assert weather["timestamp"].max() == datetime(2017, 4, 30, 23, tzinfo=UTC)


def test_weather_for_some_stations_is_the_same_rows(data_dir, weather):
    some = read_weather(data_dir, stations=["portland", "vancouver"])
    assert some.equals(weather.filter(pl.col("station_id").is_in(["portland", "vancouver"])))
    assert some.height == 2 * 40_139


def test_unknown_station_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="atlantis.*known: vancouver, portland"):
        read_weather(data_dir, stations=["portland", "atlantis"])


def test_read_source_dispatches_by_contract_name(data_dir, air):
    assert read_source("air_quality", data_dir).equals(air)
    assert read_source("weather", data_dir, stations=["eilat"])[
        "station_id"
    ].unique().to_list() == ["eilat"]
    with pytest.raises(ValueError, match="unknown source 'flights'"):
        read_source("flights", data_dir)
    with pytest.raises(ValueError, match="one station"):
        read_source("air_quality", data_dir, stations=["portland"])
