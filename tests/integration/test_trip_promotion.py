"""`periscope models promote taxi trip <version>` on a real MLflow registry (SQLite under a
temporary folder) and a real silver Delta table: the rule `retrain` applies to the trip
regressor (duration MAE on the challenger's own test window, the same trips for both; strictly
lower promotes, otherwise the champion stays). No Kafka, Spark or Postgres: it lives here because
MLflow's registry set-up costs tens of seconds on the shared machine, too much for the unit tier."""

from __future__ import annotations

import tempfile
from pathlib import Path

from deltalake import write_deltalake

from ml.registry import Registry
from ml.training import promote_version
from ml.trips import TripModel
from periscope.settings import Settings
from tests.unit.test_trip_promotion import DATA_UNTIL, SPLIT, _model, _silver_trips


def _register(registry: Registry, model: TripModel) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp))
        info = registry.log_model(
            source="taxi",
            kind="trip",
            directory=Path(tmp),
            params={**SPLIT.to_dict()},
            metrics={},
            tags={"data_until": str(DATA_UNTIL)},
        )
    return info.version


def test_models_promote_trip_compares_duration_mae_on_the_challengers_test_window(tmp_path):
    settings = Settings(
        _env_file=None,
        local_dir=tmp_path / "local",
        lake_root=str(tmp_path),
        postgres_owner_password="unused",
        postgres_bi_password="unused",
    )
    write_deltalake(settings.lake_path("silver/taxi_observations"), _silver_trips())
    registry = Registry(settings)
    first = _register(registry, _model(4.0))  # 1 min per mile too long
    better = _register(registry, _model(3.0))  # exact
    worse = _register(registry, _model(2.0))  # as far off as the first, the other way
    assert promote_version(settings, "taxi", "trip", first).startswith("promoted version")
    decision = promote_version(settings, "taxi", "trip", better)
    assert decision.startswith("promoted: duration MAE: challenger v2 0.0000 vs champion v1")
    assert registry.champion_version("taxi", "trip") == better
    decision = promote_version(settings, "taxi", "trip", worse)
    assert decision.startswith("kept the champion: duration MAE: challenger v3")
    assert registry.champion_version("taxi", "trip") == better
