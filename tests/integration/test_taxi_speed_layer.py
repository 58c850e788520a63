"""The taxi speed layer on real Kafka, Spark and Ray: every accepted trip scored once.

Three days of real January 2023 trips are replayed into Kafka and landed in bronze and silver
in several small silver batches; `score` first runs without a trip champion (windows scored,
trips wait), then a small trip regressor is trained on silver and registered as champion.
Then every silver observation must have exactly one row in gold/taxi_trip_predictions, a
rerun must add nothing, and a scorer SIGKILLed mid-run and started again must lose and
duplicate nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable

from ingest.replay import replay
from ml.gold import event_predictions_path, run_scoring, scored_events_through
from ml.gold.events import EventFeed
from ml.training.trips import train_trip_kind
from periscope.contracts import TAXI
from periscope.lake import read_delta
from periscope.time import naive_utc_columns
from periscope.topics import create_topics, records_written, topic_specs
from tests.integration.conftest import land

# In-process training and scoring join the session's Ray (conftest.ray_runtime).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_runtime")]

PERISCOPE = str(Path(sys.executable).parent / "periscope")
FIRST = datetime(2023, 1, 4, tzinfo=UTC)  # three days for training and the first scoring
LATER = datetime(2023, 1, 4, 12, tzinfo=UTC)  # half a day more for the SIGKILL drill


def _land(settings, *, small_batches: bool = False) -> None:
    """Bronze and silver; in several small silver batches when asked (rounds to die in)."""
    records, files = (100, 1) if small_batches else (None, None)
    land(settings, [TAXI], batch_records=records, files_per_batch=files)


@pytest.fixture(scope="module")
def lake(services, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("taxi_speed")
    settings = services.model_copy(
        update={"lake_root": str(root / "lake"), "local_dir": root, "mlflow_tracking_uri": ""}
    )
    create_topics(settings, topic_specs(settings, [TAXI]))
    replay(settings, TAXI.name, until=FIRST, progress=False)
    _land(settings)
    yield {"settings": settings, "root": root}


def _observations_path(settings) -> str:
    return settings.lake_path(TAXI.table("silver", "observations"))


def _observed(settings) -> list[str]:
    return sorted(read_delta(_observations_path(settings), ["trip_id"])["trip_id"].to_pylist())


def _gold(settings):
    return read_delta(event_predictions_path(settings, TAXI))


def test_without_a_trip_champion_windows_are_scored_and_trips_wait(lake, caplog):
    settings = lake["settings"]
    with caplog.at_level(logging.WARNING, logger="ml.gold.events"):
        reports = run_scoring(settings, [TAXI], available_now=True, actors=2, publish=False)
    assert sum(r.windows for r in reports) > 1_000
    assert "no champion taxi_trip" in caplog.text
    assert not DeltaTable.is_deltatable(event_predictions_path(settings, TAXI))


def test_every_accepted_trip_has_one_gold_row_and_a_rerun_adds_nothing(lake):
    settings = lake["settings"]
    # Every observed column: `read_silver_trips` leaves out fields the silver checks read.
    observed = naive_utc_columns(read_delta(_observations_path(settings)).to_pandas())
    outcome = train_trip_kind(
        settings, workers=2, test_days=1, validation_days=1, observed=observed
    )
    assert "champion" in outcome.decision
    run_scoring(settings, [TAXI], available_now=True, actors=2, publish=True)
    gold = _gold(settings)
    observed = _observed(settings)
    assert len(observed) > 4_000
    assert sorted(gold["trip_id"].to_pylist()) == observed  # each trip once, none missing
    for measure in TAXI.event_predictions:
        values = gold[f"predicted_{measure}"].to_pylist()
        assert None not in values and min(values) >= 0, measure
    assert set(gold["event_model"].to_pylist()) == {"taxi_trip"}
    assert set(gold["event_model_version"].to_pylist()) == {outcome.info.version}
    assert gold["kafka_timestamp"].null_count == 0
    latest = EventFeed(settings, TAXI).latest_batch()
    path = event_predictions_path(settings, TAXI)
    assert scored_events_through(path) == latest
    # Every prediction published (the windows were scored before, without publishing).
    assert records_written(settings, TAXI.topic("predictions")) == len(observed)

    version = DeltaTable(path).version()
    run_scoring(settings, [TAXI], available_now=True, actors=2, publish=True)
    assert DeltaTable(path).version() == version  # nothing new: not even a commit
    assert records_written(settings, TAXI.topic("predictions")) == len(observed)


def test_a_scorer_killed_mid_run_loses_and_duplicates_nothing(lake):
    settings = lake["settings"]
    path = event_predictions_path(settings, TAXI)
    before = scored_events_through(path)
    assert before is not None
    replay(settings, TAXI.name, since=FIRST, until=LATER, progress=False)
    _land(settings, small_batches=True)
    latest = EventFeed(settings, TAXI).latest_batch()
    assert latest is not None and latest >= before + 3  # several rounds to die in

    env = {
        **os.environ,
        "PERISCOPE_LAKE_ROOT": settings.lake_root,
        "PERISCOPE_LOCAL_DIR": str(lake["root"]),
        "PERISCOPE_SCORE_ROUND_ROWS": "1",  # one silver batch per round
    }
    scorer = subprocess.Popen(
        [PERISCOPE, "score", "--source", "taxi", "--no-publish", "--actors", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (scored_events_through(path) or -1) <= before:
            assert scorer.poll() is None, "the scorer exited"
            assert time.monotonic() < deadline, "the scorer committed nothing"
            time.sleep(0.2)
    finally:
        os.killpg(scorer.pid, signal.SIGKILL)  # the scorer and the Ray runtime it started
        scorer.wait()
    killed_at = scored_events_through(path)
    assert killed_at is not None and before < killed_at < latest  # died mid-run

    run_scoring(settings, [TAXI], available_now=True, actors=2, publish=False)
    gold = _gold(settings)
    assert sorted(gold["trip_id"].to_pylist()) == _observed(settings)
    assert scored_events_through(path) == latest
