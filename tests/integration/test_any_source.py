"""A source of another shape, declared here and nowhere else, runs through every stage.

The contract below has a string key (`dock`), an event id (`ride_id`: many rides leave a dock
in the same minute), a category, a count and a flag, windows that sum and count besides the
measure statistics, and an hourly ride count as its forecast target. Its reader is in this
file too. Nothing else in the project names it: replay -> Kafka -> bronze -> silver (windows
with counts) -> training -> gold -> warehouse load -> dbt build take it from the contract.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psycopg2
import pytest

from ingest.producer import encode_record
from ingest.replay import replay
from ml.data import feature_windows
from ml.gold import run_scoring
from ml.ray_session import ray_session
from ml.training import TrainConfig, run_training
from ml.windows import window_features
from periscope.audit import audit_source
from periscope.contracts import (
    CONTRACTS,
    Aggregation,
    Category,
    Count,
    Flag,
    ForecastTarget,
    Measure,
    SourceContract,
    Text,
    WindowSpec,
    register,
)
from periscope.lake import read_delta
from periscope.messages import Publisher
from periscope.services import PostgresServer
from periscope.topics import create_topics, topic_specs
from tests.integration.conftest import land
from warehouse.dbt import run_dbt
from warehouse.loader import load_tables
from warehouse.plan import table_specs

# In-process training and scoring join the session's Ray (conftest.ray_runtime).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_runtime")]

DOCKS = ("dock-central", "dock-harbour", "dock-old town")
DAYS = 16
START = datetime(2024, 5, 1, tzinfo=UTC)


class RidesReader:
    """Synthetic bike rides: a daily rhythm per dock, several rides per minute at the peaks."""

    def read(self, data_dir: Path, *, entities: Sequence[str] | None = None) -> pl.DataFrame:
        rng = np.random.default_rng(11)
        rows = []
        for hour in range(DAYS * 24):
            for d, dock in enumerate(DOCKS):
                if entities is not None and dock not in entities:
                    continue
                rate = 2.0 + d + 3.0 * (1 + math.sin((hour % 24 - 6) / 24 * 2 * math.pi))
                for _ in range(rng.poisson(rate)):
                    minute = int(rng.integers(0, 6)) * 10  # rides share minutes
                    rows.append(
                        {
                            "dock": dock,
                            "started_at": START + timedelta(hours=hour, minutes=minute),
                            "ride_id": f"r{len(rows):06d}",
                            "minutes": round(float(rng.gamma(2.0, 9.0)), 1),
                            "riders": int(rng.integers(1, 3)),
                            "bike": str(rng.choice(["classic", "electric", "cargo bike"])),
                            "member": bool(rng.random() < 0.6),
                        }
                    )
        frame = pl.DataFrame(rows).with_columns(pl.col("started_at").dt.cast_time_unit("us"))
        return frame.sort("started_at", "dock")

    def entities(self, data_dir: Path) -> list[str]:
        return list(DOCKS)


READER = RidesReader()

RIDES = SourceContract(
    name="toy_rides",
    description="Bike rides leaving docks (synthetic; declared in a test).",
    fields=(
        Text("dock", "the dock a ride starts from", required=True),
        Text("ride_id", "one ride", required=True),
        Measure("minutes", "min", 0.0, 600.0, "ride duration"),
        Count("riders", "people on the bike", valid_max=2),
        Category("bike", "bike type", levels=("classic", "electric", "cargo bike")),
        Flag("member", "rider is a member"),
    ),
    key_field="dock",
    event_time_field="started_at",
    event_id_field="ride_id",
    entity_label="dock",
    window=WindowSpec(
        "2 hours",
        "1 hour",
        "1 day",  # generous: the replay is in time order, nothing should be late
        aggregations=(
            Aggregation("minutes", "stats"),
            Aggregation("minutes", "sum"),
            Aggregation("riders", "sum"),
            Aggregation("member", "sum"),
            Aggregation("bike", "category_counts"),
            Aggregation("ride_id", "distinct_count"),
        ),
    ),
    forecast_targets=(ForecastTarget(None, "count"),),
    # A reference, not the object: Ray workers unpickle the contract without this module.
    reader="tests.integration.test_any_source:READER",
)

RESENT = 25  # rides sent twice: the second copy is a duplicate by event id


@pytest.fixture(scope="module")
def rides(services, tmp_path_factory) -> Iterator[dict]:
    """The toy source registered for this module only, replayed, landed, cleaned, scored."""
    root = tmp_path_factory.mktemp("any_source")
    settings = services.model_copy(
        update={
            "lake_root": str(root / "lake"),
            "local_dir": root,
            "mlflow_tracking_uri": "",
            "score_poll_interval_s": 1.0,
        }
    )
    register(RIDES)
    try:
        create_topics(settings, topic_specs(settings, [RIDES]))
        report = replay(settings, RIDES.name, bad_rate=0.02, seed=3, progress=False)
        history = RIDES.dataset_reader().read(settings.data_dir)
        again = history.head(RESENT).with_columns(
            pl.col("started_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        publisher = Publisher(settings, client_id="test-any-source")
        try:
            resent = publisher.publish(
                RIDES.topic("raw"),
                [(r["dock"].encode(), encode_record(r)) for r in again.iter_rows(named=True)],
            )
        finally:
            publisher.close()
        land(settings, [RIDES])
        config = TrainConfig(
            test_days=2, validation_days=2, max_train_days=None, anomaly_estimators=50
        )
        with ray_session(settings, workers=2):
            training = run_training(
                settings, RIDES.name, config=config, policy="if-none", workers=2
            )
            rounds = run_scoring(settings, [RIDES], available_now=True, actors=1, publish=True)
        yield {
            "settings": settings,
            # The warehouse is the services' own (its socket lives under their local dir).
            "warehouse": services.model_copy(update={"lake_root": settings.lake_root}),
            "report": report,
            "resent": resent,
            "history": history,
            "training": training,
            "rounds": rounds,
        }
    finally:
        CONTRACTS.pop(RIDES.name, None)


def _path(rides: dict, layer: str, entity: str) -> str:
    return rides["settings"].lake_path(RIDES.table(layer, entity))  # type: ignore[arg-type]


def test_every_record_is_accounted_for_and_repeated_event_ids_are_duplicates(rides):
    report, history = rides["report"], rides["history"]
    assert report.sent == len(history) + report.bad > len(history)
    audit = audit_source(rides["settings"], RIDES, require_caught_up=True)
    assert audit.problems == []
    assert audit.kafka == audit.bronze == report.sent + rides["resent"]
    assert audit.tables["observations"] == len(history)
    assert audit.tables["duplicates"] == RESENT
    assert audit.tables["quarantined"] == report.bad
    duplicates = read_delta(_path(rides, "silver", "duplicates"), ["ride_id"])
    assert sorted(duplicates["ride_id"].to_pylist()) == sorted(history["ride_id"][:RESENT])


def test_observations_keep_every_field_typed(rides):
    observations = read_delta(_path(rides, "silver", "observations"))
    schema = {f.name: str(f.type) for f in observations.schema}
    assert schema["dock"] == "string" and schema["ride_id"] == "string"
    assert schema["riders"] == "int64" and schema["member"] == "bool"
    assert schema["minutes"] == "double" and schema["bike"] == "string"
    assert set(observations["bike"].to_pylist()) == {"classic", "electric", "cargo bike"}


def test_windows_count_and_sum_exactly_what_a_from_scratch_computation_gives(rides):
    silver = feature_windows(rides["settings"], RIDES).sort_values(["dock", "window_start"])
    reference = window_features(
        rides["history"].rename({"started_at": "event_time"}).to_pandas(), RIDES
    )
    assert len(silver) == len(reference) > DAYS * 24
    for column in ("reading_count", "bike_cargo_bike_count", "ride_id_distinct_count"):
        assert silver[column].tolist() == reference[column].tolist(), column
    for column in ("minutes_sum", "riders_sum", "member_sum", "minutes_mean"):
        assert np.allclose(silver[column], reference[column], equal_nan=True), column
    # Many rides share a dock and an instant: all are counted, none deduplicated away.
    assert silver["reading_count"].sum() == 2 * len(rides["history"])  # 2 h windows, 1 h slide


def test_gold_scores_every_window_under_the_contracts_key_with_the_ride_count_forecast(rides):
    assert set(rides["training"].registered) == {"forecast", "anomaly"}
    gold = read_delta(_path(rides, "gold", "predictions"))
    assert "dock" in gold.column_names and "station_id" not in gold.column_names
    windows = read_delta(_path(rides, "silver", "features"), ["dock"])
    assert gold.num_rows == windows.num_rows == sum(r.windows for r in rides["rounds"])
    forecasts = [f for row in gold["forecasts"].to_pylist() for f in row]
    assert forecasts and {f["measure"] for f in forecasts} == {"event_count"}
    assert set(gold["dock"].to_pylist()) == set(DOCKS)


def test_the_warehouse_loads_it_and_dbt_models_it_from_the_contract_alone(
    rides, tmp_path, monkeypatch
):
    settings = rides["warehouse"]
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
        for schema in ("lake", "staging", "intermediate", "marts"):
            cur.execute(f"drop schema if exists {schema} cascade")
    PostgresServer(settings).bootstrap()
    results = load_tables(settings, table_specs([RIDES.name]))
    assert {r.status for r in results} == {"loaded"}
    assert run_dbt(settings, ["build"]) == 0

    def query(sql: str) -> list[tuple]:
        with psycopg2.connect(settings.postgres_dsn("owner")) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    history = rides["history"]
    assert query(f"select count(*) from lake.{RIDES.name}_observations") == [(len(history),)]
    docks = query(
        f"select entity_id, entity_label from marts.dim_entity where source = '{RIDES.name}' "
        "order by 1"
    )
    assert docks == [(dock, "dock") for dock in sorted(DOCKS)]
    windows = read_delta(_path(rides, "silver", "features"), ["dock"]).num_rows
    assert query(
        f"select count(*) from marts.fct_feature_window where source = '{RIDES.name}'"
    ) == [(windows,)]
    # Every window's ride count, as silver counted it, sums to two per ride (2 h windows).
    assert query(
        "select sum(value)::bigint from marts.fct_feature_value "
        f"where source = '{RIDES.name}' and feature = 'ride_id_distinct_count'"
    ) == [(2 * len(history),)]
    judged = query(
        "select count(*) from marts.fct_forecast_accuracy a join marts.dim_measure m "
        f"using (measure_key) where a.source = '{RIDES.name}' and m.measure = 'event_count'"
    )
    assert judged[0][0] > 0
