"""`replay --since/--until`: the event-time span a replay sends (pure parts and the CLI, no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from ingest.replay import prepare_frame, replay
from periscope.contracts import WEATHER
from periscope.settings import Settings

START = datetime(2017, 1, 1, tzinfo=UTC)


def _weather(days: int) -> pl.DataFrame:
    """Hourly rows of two stations over `days` days, shuffled (prepare_frame orders them)."""
    rows = [
        (station, START + timedelta(hours=h), float(h))
        for h in range(days * 24)
        for station in ("portland", "seattle")
    ]
    frame = pl.DataFrame(
        {
            "station_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            **{m: [r[2] for r in rows] for m in WEATHER.measure_names},
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=5)


def test_the_span_is_half_open_and_naive_times_are_utc():
    frame = _weather(10)
    chosen = prepare_frame(
        frame, WEATHER, since=datetime(2017, 1, 3), until=datetime(2017, 1, 5, 12)
    )
    times = chosen["timestamp"]
    assert times.min() == datetime(2017, 1, 3, tzinfo=UTC)
    assert times.max() == datetime(2017, 1, 5, 11, tzinfo=UTC)  # until is excluded
    assert chosen.height == 2 * (2 * 24 + 12)
    assert times.is_sorted()
    # The same instants given with a zone other than UTC choose the same rows.
    since = datetime(2017, 1, 3, 1, tzinfo=ZoneInfo("Europe/Berlin"))  # 00:00 UTC
    assert prepare_frame(
        frame, WEATHER, since=since, until=datetime(2017, 1, 5, 12, tzinfo=UTC)
    ).equals(chosen)


def test_one_side_of_the_span_is_open():
    frame = _weather(4)
    later = prepare_frame(frame, WEATHER, since=datetime(2017, 1, 3))
    assert later["timestamp"].min() == datetime(2017, 1, 3, tzinfo=UTC)
    assert later.height == 2 * 48
    earlier = prepare_frame(frame, WEATHER, until=datetime(2017, 1, 2))
    assert earlier["timestamp"].max() == datetime(2017, 1, 1, 23, tzinfo=UTC)
    assert earlier.height == 2 * 24
    assert prepare_frame(frame, WEATHER, since=datetime(2018, 1, 1)).is_empty()


def test_limit_counts_from_the_start_of_the_span_and_rebase_follows_it():
    frame = _weather(6)
    first = prepare_frame(frame, WEATHER, since=datetime(2017, 1, 4), limit=5)
    assert first["timestamp"].to_list()[0] == datetime(2017, 1, 4, tzinfo=UTC)
    assert first.height == 5
    now = datetime(2030, 1, 1, tzinfo=UTC)
    rebased = prepare_frame(
        frame, WEATHER, since=datetime(2017, 1, 2), until=datetime(2017, 1, 3), now=now
    )
    assert rebased["timestamp"].max() == now
    assert rebased["timestamp"].min() == now - timedelta(hours=23)


def test_an_empty_or_reversed_span_is_refused_before_reading():
    with pytest.raises(ValueError, match="must be before until"):
        prepare_frame(_weather(1), WEATHER, since=datetime(2017, 3, 1), until=datetime(2017, 1, 1))
    with pytest.raises(ValueError, match="must be before until"):
        # No Kafka and no dataset are touched: the span is checked first.
        replay(
            Settings(),
            "weather",
            since=datetime(2017, 1, 1),
            until=datetime(2017, 1, 1),
            progress=False,
        )


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2017-03-01", "--until", "2017-01-01"], "must be after --since"),
        (["--follow-clock", "--since", "2017-01-01"], "cannot be combined with --since/--until"),
        (["--since", "yesterday"], "Invalid value for '--since'"),
    ],
)
def test_cli_rejects_bad_spans(args, message):
    result = runner.invoke(ingest_app, ["replay", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_cli_help_documents_the_span():
    result = runner.invoke(ingest_app, ["replay", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--since" in result.output and "--until" in result.output
