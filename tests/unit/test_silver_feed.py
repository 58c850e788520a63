"""The scorer's silver reader (delta-rs, tables kept open) gives what the DuckDB readers give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from ml.data import (
    LakeSlice,
    SilverFeed,
    feature_batches,
    feature_windows_of_batches,
    hourly_observations,
    latest_feature_batch,
)
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError
from periscope.settings import Settings

WEATHER = get_contract("weather")
T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
STATIONS = ["a", "b", "c"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(_env_file=None, lake_root=str(tmp_path / "lake"))


def _append_batch(settings: Settings, batch: int, rng: np.random.Generator) -> None:
    """One silver batch: 40 readings over 2 hours of 3 stations, and 3 windows per station."""
    times = [T0 + timedelta(minutes=int(m)) for m in rng.integers(0, 120, 40)]
    observations = {
        "station_id": [STATIONS[i % 3] for i in range(40)],
        "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
        "silver_batch_id": [batch] * 40,
    }
    for measure in WEATHER.measure_names:
        values = rng.normal(10, 3, 40)
        values[rng.random(40) < 0.2] = np.nan  # missing readings
        observations[measure] = pa.array(values, from_pandas=True)
    write_deltalake(
        settings.lake_path(WEATHER.table("silver", "observations")),
        pa.table(observations),
        mode="append",
    )
    starts = [T0 + timedelta(minutes=3 * batch + w) for w in range(3)]  # keys are unique
    features = pa.table(
        {
            "station_id": [s for s in STATIONS for _ in starts],
            "window_start": pa.array(starts * 3, pa.timestamp("us", tz="UTC")),
            "window_end": pa.array(
                [s + timedelta(minutes=5) for s in starts] * 3, pa.timestamp("us", tz="UTC")
            ),
            "temperature_mean": rng.normal(10, 1, 9),
            "silver_batch_id": [batch] * 9,
        }
    )
    write_deltalake(
        settings.lake_path(WEATHER.table("silver", "features")), features, mode="append"
    )


def test_the_feed_reads_what_the_duckdb_readers_read_and_follows_new_commits(settings):
    rng = np.random.default_rng(7)
    feed = SilverFeed(settings, WEATHER)
    assert not feed.exists()
    with pytest.raises(PeriscopeError, match="silver run"):
        feed.batches(-1)
    for batch in range(3):
        _append_batch(settings, batch, rng)
        # The same feed after each commit: incremental updates see every new batch.
        assert feed.exists() and feed.latest_batch() == batch
        assert latest_feature_batch(settings, WEATHER) == batch
        pd.testing.assert_frame_equal(
            feed.batches(-1), feature_batches(settings, WEATHER, -1), check_dtype=False
        )
    pd.testing.assert_frame_equal(
        feed.batches(0), feature_batches(settings, WEATHER, 0), check_dtype=False
    )
    assert feed.batches(2).empty
    windows = feed.windows(0, 2)
    pd.testing.assert_frame_equal(
        windows, feature_windows_of_batches(settings, WEATHER, 0, 2), check_dtype=False
    )
    assert len(windows) == 18 and set(windows["silver_batch_id"]) == {1, 2}

    for lake_slice in (
        LakeSlice(),
        LakeSlice(stations=("a", "c")),
        LakeSlice(stations=("b",), since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=1)),
    ):
        ours, duckdb = feed.hourly(lake_slice), hourly_observations(settings, WEATHER, lake_slice)
        assert len(ours) > 0 and list(ours.columns) == list(duckdb.columns)
        pd.testing.assert_frame_equal(ours, duckdb, check_dtype=False, atol=1e-12, rtol=0)
