"""The model registry (MLflow on SQLite under the test's folder) as training's checks use it."""

from __future__ import annotations

import json
from pathlib import Path

from ml.forecast.bundle import BUNDLE_FORMAT
from ml.registry import Registry
from periscope.settings import Settings


def _register_forecast(registry: Registry, folder: Path, manifest: dict) -> int:
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    info = registry.log_model(
        source="weather", kind="forecast", directory=folder, params={}, metrics={}, tags={}
    )
    return info.version


def test_a_forecast_champion_of_an_older_format_is_stale_read_from_its_manifest_alone(tmp_path):
    settings = Settings(
        _env_file=None,
        local_dir=tmp_path / "local",
        lake_root=str(tmp_path),
        postgres_owner_password="unused",
        postgres_bi_password="unused",
    )
    registry = Registry(settings)
    assert not registry.stale_forecast_champion("weather")  # no champion: nothing stale

    old = _register_forecast(registry, tmp_path / "old", {"source": "weather", "format": 3})
    registry.set_champion("weather", "forecast", old)
    assert registry.stale_forecast_champion("weather")  # `train --missing-only` retrains it

    manifest = {"source": "weather", "format": BUNDLE_FORMAT, "series": []}
    current = _register_forecast(registry, tmp_path / "current", manifest)
    registry.set_champion("weather", "forecast", current)
    assert not registry.stale_forecast_champion("weather")
    info = registry.resolve("weather", "forecast")
    assert info is not None
    fetched = registry.download_file(info, "manifest.json", tmp_path / "fetched")
    assert fetched == tmp_path / "fetched" / "manifest.json"  # where it was asked to go
    assert json.loads(fetched.read_text())["format"] == BUNDLE_FORMAT
