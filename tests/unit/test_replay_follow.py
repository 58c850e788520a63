"""`replay --follow-clock`: the slice and offset per run, its state file, the CLI (no Kafka)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

import ingest.replay as replay_module
from ingest.cli import app as ingest_app
from ingest.producer import DeliveryReport, ProduceError
from ingest.replay import (
    FollowState,
    FollowStateError,
    describe_follow,
    follow_state_path,
    load_follow_state,
    plan_follow,
    rebase,
    replay_follow,
    save_follow_state,
)
from periscope.contracts import AIR_QUALITY, WEATHER
from periscope.settings import Settings

START = datetime(2020, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 6, 1, 12, 30, 15, 987_654, tzinfo=UTC)
NOW_S = NOW.replace(microsecond=0)


def _weather(hours: int, stations: tuple[str, ...] = ("portland", "seattle")) -> pl.DataFrame:
    """Hourly rows for each station, shuffled (plan_follow must order them itself)."""
    rows = [
        (station, START + timedelta(hours=h), float(h))
        for h in range(hours)
        for station in stations
    ]
    frame = pl.DataFrame(
        {
            "station_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            **{m: [r[2] for r in rows] for m in WEATHER.measure_names},
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=3)


def _keys(frame: pl.DataFrame, offset: timedelta) -> set[tuple[str, datetime]]:
    """(station, original event time) of rebased rows."""
    return {(s, t - offset) for s, t in frame.select("station_id", "timestamp").iter_rows()}


# --- plan_follow: first run ------------------------------------------------------------------


def test_first_run_sends_the_first_days_ending_now():
    history = _weather(24 * 5)
    plan = plan_follow(history, WEATHER, None, now=NOW, days=2, stations=["seattle", "portland"])
    sent = plan.frame
    assert sent.height == 2 * 24 * 2  # two stations, 48 hours
    assert sent["timestamp"].max() == NOW_S  # the last record lands at now (to the second)
    assert plan.state.offset == NOW_S - (START + timedelta(hours=47))
    assert plan.state.replayed_through == START + timedelta(hours=47)
    assert plan.state.stations == ("portland", "seattle")  # sorted
    assert plan.state.days == 2 and plan.state.source == "weather"
    assert plan.first_run and plan.since is None
    assert plan.next_due == NOW_S + timedelta(hours=1)
    # One constant offset: the same frame as `--rebase-now` would send, in event-time order.
    ordered = history.sort("timestamp", "station_id")
    assert sent.equals(rebase(ordered.filter(pl.col("timestamp") < START + timedelta(days=2)), NOW))
    assert _keys(sent, plan.state.offset) == {
        (s, START + timedelta(hours=h)) for h in range(48) for s in ("portland", "seattle")
    }


def test_first_run_needs_days_and_records():
    with pytest.raises(FollowStateError, match="needs --days"):
        plan_follow(_weather(3), WEATHER, None, now=NOW)
    with pytest.raises(ValueError, match="days must be a finite number > 0"):
        plan_follow(_weather(3), WEATHER, None, now=NOW, days=0)
    with pytest.raises(ValueError, match="no weather records"):
        plan_follow(_weather(0), WEATHER, None, now=NOW, days=1)


def test_more_days_than_history_sends_it_all_and_then_it_is_exhausted():
    plan = plan_follow(_weather(10), WEATHER, None, now=NOW, days=30)
    assert plan.frame.height == 20 and plan.next_due is None
    later = plan_follow(_weather(10), WEATHER, plan.state, now=NOW + timedelta(days=9))
    assert later.frame.is_empty() and later.next_due is None and later.state == plan.state


def test_limit_caps_the_first_slice_at_a_whole_timestamp():
    history = _weather(48)
    plan = plan_follow(history, WEATHER, None, now=NOW, days=1, limit=7)
    # 7 rows would split hour 3 between the stations: hour 3 goes whole to the next run.
    assert plan.frame.height == 6
    assert plan.state.replayed_through == START + timedelta(hours=2)
    assert plan.frame["timestamp"].max() == NOW_S
    assert plan_follow(history, WEATHER, None, now=NOW, days=1, limit=8).frame.height == 8
    assert plan_follow(history, WEATHER, None, now=NOW, days=1, limit=999).frame.height == 48
    nxt = plan_follow(history, WEATHER, plan.state, now=NOW + timedelta(hours=1), limit=7)
    assert _keys(nxt.frame, plan.state.offset) == {
        ("portland", START + timedelta(hours=3)),
        ("seattle", START + timedelta(hours=3)),
    }  # later runs ignore the limit
    with pytest.raises(ValueError, match="limit 1 is smaller than the 2 records"):
        plan_follow(history, WEATHER, None, now=NOW, days=1, limit=1)


# --- plan_follow: later runs -----------------------------------------------------------------


def test_a_later_run_sends_exactly_what_arrived_in_the_elapsed_time():
    history = _weather(24 * 5)
    first = plan_follow(history, WEATHER, None, now=NOW, days=1)
    # 3 h 20 min later: hours 24, 25 and 26 of the history have "arrived".
    later = plan_follow(history, WEATHER, first.state, now=NOW + timedelta(hours=3, minutes=20))
    assert later.state.offset == first.state.offset  # the same constant, never recomputed
    assert _keys(later.frame, first.state.offset) == {
        (s, START + timedelta(hours=h)) for h in (24, 25, 26) for s in ("portland", "seattle")
    }
    assert later.frame["timestamp"].min() == NOW_S + timedelta(hours=1)
    assert later.frame["timestamp"].max() == NOW_S + timedelta(hours=3)
    assert later.state.replayed_through == START + timedelta(hours=26)
    assert not later.first_run and later.since == NOW_S
    assert later.next_due == NOW_S + timedelta(hours=4)
    times = later.frame["timestamp"].to_list()
    assert times == sorted(times)


def test_a_record_due_exactly_now_is_sent_and_never_twice():
    history = _weather(48)
    first = plan_follow(history, WEATHER, None, now=NOW, days=1)
    on_time = plan_follow(history, WEATHER, first.state, now=NOW + timedelta(hours=1))
    assert on_time.frame["timestamp"].to_list() == [NOW_S + timedelta(hours=1)] * 2
    again = plan_follow(history, WEATHER, on_time.state, now=NOW + timedelta(hours=1, seconds=1))
    assert again.frame.is_empty()


def test_runs_at_any_times_send_every_record_once():
    history = _weather(24 * 4)
    plan = plan_follow(history, WEATHER, None, now=NOW, days=1.5)
    seen = _keys(plan.frame, plan.state.offset)
    total = plan.frame.height
    state = plan.state
    for minutes in (0, 7, 59, 61, 180, 181, 600, 601, 24 * 60 * 10):  # the last runs it dry
        nxt = plan_follow(history, WEATHER, state, now=NOW + timedelta(minutes=minutes))
        assert nxt.state.offset == plan.state.offset
        got = _keys(nxt.frame, state.offset)
        assert not got & seen  # nothing sent twice
        seen |= got
        total += nxt.frame.height
        state = nxt.state
    assert total == len(seen) == history.height  # and nothing left out
    assert state.replayed_through == START + timedelta(hours=24 * 4 - 1)


def test_nothing_new_is_an_empty_plan_with_the_next_due_time():
    history = _weather(48)
    first = plan_follow(history, WEATHER, None, now=NOW, days=1)
    soon = plan_follow(history, WEATHER, first.state, now=NOW + timedelta(minutes=5))
    assert soon.frame.is_empty() and soon.frame.schema == history.schema
    assert soon.state == first.state
    assert (soon.since, soon.next_due) == (NOW_S, NOW_S + timedelta(hours=1))
    # A clock set back does not resend either.
    assert plan_follow(history, WEATHER, first.state, now=NOW - timedelta(days=3)).frame.is_empty()


def test_other_stations_than_the_state_are_an_error_naming_the_file(tmp_path):
    first = plan_follow(_weather(48), WEATHER, None, now=NOW, days=1, stations=["portland"])
    path = tmp_path / "weather.json"
    with pytest.raises(FollowStateError, match=rf"stations portland, not all stations.*{path}"):
        plan_follow(_weather(48), WEATHER, first.state, now=NOW, state_path=path)
    with pytest.raises(FollowStateError, match="not stations portland,seattle"):
        plan_follow(_weather(48), WEATHER, first.state, now=NOW, stations=["seattle", "portland"])
    same = ["portland", "portland"]
    assert plan_follow(_weather(48), WEATHER, first.state, now=NOW, stations=same).frame.is_empty()


# --- the state file --------------------------------------------------------------------------


def test_state_round_trips_through_its_file(tmp_path):
    path = tmp_path / "replay" / "weather.json"
    assert load_follow_state(path, "weather") is None  # no file: a first run
    state = FollowState(
        "weather", timedelta(seconds=123_456_789), START, ("denver", "portland"), 2.5
    )
    save_follow_state(path, state)
    assert load_follow_state(path, "weather") == state
    body = json.loads(path.read_text())
    assert body == {
        "version": 1,
        "source": "weather",
        "offset_seconds": 123_456_789,
        "replayed_through": "2020-01-01T00:00:00+00:00",
        "stations": ["denver", "portland"],
        "days": 2.5,
    }
    every = FollowState("air_quality", timedelta(seconds=-1.5), START, None, 7)
    save_follow_state(path, every)  # replaced, no temporary file left beside it
    assert load_follow_state(path, "air_quality") == every
    assert [p.name for p in path.parent.iterdir()] == ["weather.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "Expecting property name"),
        ('{"version": 9}', "version 9, expected 1"),
        ('{"version": 1, "source": "air_quality"}', "for source 'air_quality', not 'weather'"),
        ('{"version": 1, "source": "weather"}', "missing field 'replayed_through'"),
    ],
)
def test_an_unreadable_state_file_is_an_error_not_a_fresh_start(tmp_path, text, message):
    path = tmp_path / "weather.json"
    path.write_text(text)
    with pytest.raises(FollowStateError, match=rf"{path}: .*{message}.*delete it"):
        load_follow_state(path, "weather")


def test_the_state_lives_under_local_dir(tmp_path):
    settings = Settings(local_dir=tmp_path)
    assert follow_state_path(settings, "air_quality") == tmp_path / "replay" / "air_quality.json"


# --- replay_follow, with a fake Kafka ---------------------------------------------------------


class _FakeKafka:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, bytes]] = []
        self.fail = False

    def __call__(self, settings, topic, messages, *, total, description, progress):
        pairs = list(messages)
        if self.fail:
            raise ProduceError(f"{topic}: 0 of {len(pairs)} records acknowledged")
        self.received += pairs
        return DeliveryReport(sent=len(pairs))


@pytest.fixture
def kafka(monkeypatch):
    fake = _FakeKafka()
    monkeypatch.setattr(replay_module, "send_with_progress", fake)
    monkeypatch.setattr(
        replay_module, "read_source", lambda name, data_dir, stations=None: _weather(24 * 3)
    )
    return fake


def test_replay_follow_sends_saves_and_resumes(tmp_path, kafka):
    settings = Settings(local_dir=tmp_path)
    path = tmp_path / "replay" / "weather.json"
    first = replay_follow(settings, "weather", days=1, now=NOW, progress=False, bad_rate=0.1)
    assert (first.replay.good, first.replay.bad, first.state_path) == (48, 5, path)
    assert first.replay.last_event == NOW_S
    assert load_follow_state(path, "weather") == first.state
    line = describe_follow(first)
    assert line == (
        "replayed 53 records into weather-raw (first run: 48 good, 5 malformed); "
        f"events 2030-05-31T13:30:15Z .. 2030-06-01T12:30:15Z; state {path}"
    )

    quiet = replay_follow(settings, "weather", days=1, now=NOW + timedelta(minutes=5))
    assert quiet.replay.sent == 0 and len(kafka.received) == 53
    assert describe_follow(quiet) == (
        "weather-raw: nothing new since 2030-06-01T12:30:15Z; "
        f"next record due at 2030-06-01T13:30:15Z (state {path})"
    )

    later = replay_follow(settings, "weather", days=3, now=NOW + timedelta(hours=2), progress=False)
    assert later.replay.good == 4 and later.replay.last_event == NOW_S + timedelta(hours=2)
    assert later.notes and "--days 3 ignored" in later.notes[0]
    assert load_follow_state(path, "weather") == later.state
    sent = [json.loads(value) for _, value in kafka.received[53:]]
    assert [r["timestamp"] for r in sent] == ["2030-06-01T13:30:15Z"] * 2 + [
        "2030-06-01T14:30:15Z"
    ] * 2

    done = replay_follow(settings, "weather", now=NOW + timedelta(days=30), progress=False)
    assert "history now exhausted" in describe_follow(done)
    dry = replay_follow(settings, "weather", now=NOW + timedelta(days=31), progress=False)
    assert describe_follow(dry).startswith("weather-raw: history exhausted, nothing new since")
    assert str(path) in describe_follow(dry)


def test_replay_follow_saves_no_state_unless_kafka_acked(tmp_path, kafka):
    settings = Settings(local_dir=tmp_path)
    kafka.fail = True
    with pytest.raises(ProduceError):
        replay_follow(settings, "weather", days=1, now=NOW, progress=False)
    assert not (tmp_path / "replay" / "weather.json").exists()
    kafka.fail = False
    first = replay_follow(settings, "weather", days=1, now=NOW, progress=False)
    kafka.fail = True
    with pytest.raises(ProduceError):
        replay_follow(settings, "weather", now=NOW + timedelta(hours=5), progress=False)
    assert load_follow_state(first.state_path, "weather") == first.state  # unchanged


def test_replay_follow_checks_stations_before_reading_history(tmp_path, kafka, monkeypatch):
    settings = Settings(local_dir=tmp_path)
    replay_follow(settings, "weather", days=1, now=NOW, stations=["seattle"], progress=False)

    def no_read(*args, **kwargs):
        raise AssertionError("read the history")

    monkeypatch.setattr(replay_module, "read_source", no_read)
    with pytest.raises(FollowStateError, match="delete .*weather.json"):
        replay_follow(settings, "weather", now=NOW, stations=["portland"], progress=False)


def test_replay_follow_works_on_the_real_air_quality_history(tmp_path, monkeypatch):
    fake = _FakeKafka()
    monkeypatch.setattr(replay_module, "send_with_progress", fake)
    settings = Settings(local_dir=tmp_path)
    first = replay_follow(settings, "air_quality", days=2, now=NOW, progress=False)
    assert first.replay.good == 48 and first.replay.last_event == NOW_S  # 2004-03-10 18:00 on
    later = replay_follow(settings, "air_quality", now=NOW + timedelta(hours=1), progress=False)
    assert later.replay.good == 1 and later.replay.first_event == NOW_S + timedelta(hours=1)
    assert first.state.offset == later.state.offset
    assert AIR_QUALITY.topic("raw") == later.replay.topic


# --- the CLI ---------------------------------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow-clock", "--days", "1", "--rebase-now"], "cannot be combined with --rebase-now"),
        (["--follow-clock", "--days", "1", "--speedup", "60"], "cannot be combined with --speedup"),
        (["--days", "3"], "--days only applies with --follow-clock"),
        (["--follow-clock", "--days", "0"], "must be > 0"),
    ],
)
def test_cli_rejects_option_clashes(args, message):
    result = runner.invoke(ingest_app, ["replay", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_cli_help_documents_follow_clock():
    result = runner.invoke(ingest_app, ["replay", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--follow-clock" in result.output and "--days" in result.output
