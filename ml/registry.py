"""The model registry: MLflow tracking + registered models, with a `champion` alias per model.

Each source has two registered models, `<source>_forecast` (every Prophet series of the source
in one bundle) and `<source>_anomaly` (one IsolationForest); the taxi source has a third,
`taxi_trip` (the trip regressor, `ml.trips.TripModel`, scored per event rather than per window). A training run logs its parameters,
metrics, data range, code version and the model directory; the directory becomes a new model
version. `champion` names the version that serves. Every champion change is appended to the
registered model's `champion_history` tag, so `rollback` can move the alias back.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from periscope.errors import PeriscopeError
from periscope.settings import PROJECT_DIR, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "CHAMPION",
    "MODEL_KINDS",
    "ModelInfo",
    "EVENT_KINDS",
    "ModelKind",
    "Registry",
    "code_version",
    "model_name",
    "source_kinds",
]

ModelKind = Literal["forecast", "anomaly", "trip"]
# The kinds every source has, which gold's window scoring loads.
MODEL_KINDS: tuple[ModelKind, ...] = ("forecast", "anomaly")
# Per-event models, and the sources that have one.
EVENT_KINDS: dict[ModelKind, tuple[str, ...]] = {"trip": ("taxi",)}
CHAMPION = "champion"
_HISTORY_TAG = "champion_history"

log = logging.getLogger(__name__)


def source_kinds(source: str) -> tuple[ModelKind, ...]:
    """The model kinds a source has: forecast and anomaly, plus its per-event kinds.

    >>> source_kinds("taxi")
    ('forecast', 'anomaly', 'trip')
    """
    return MODEL_KINDS + tuple(k for k, sources in EVENT_KINDS.items() if source in sources)


def model_name(source: str, kind: str) -> str:
    """The registered model name, e.g. `weather_forecast`."""
    known = (*MODEL_KINDS, *EVENT_KINDS)
    if kind not in known:
        raise PeriscopeError(f"unknown model kind {kind!r}: expected one of {', '.join(known)}")
    return f"{source}_{kind}"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT_DIR), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def code_version() -> str:
    """The git commit of the checkout (with `-dirty` for uncommitted changes), or `unknown`."""
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


@dataclass
class ModelInfo:
    """One registered model version and what its run recorded."""

    name: str
    version: int
    run_id: str
    created: datetime
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases


class Registry:
    """MLflow tracking and registry at `settings.mlflow_uri` (SQLite under .local by default)."""

    def __init__(self, settings: Settings) -> None:
        import mlflow
        from mlflow import MlflowClient

        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # Periscope shows its own progress; MLflow's per-download bars would clutter the CLI.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.settings = settings
        self.uri = settings.mlflow_uri
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client: MlflowClient = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # --- logging a trained model ---------------------------------------------------------------
    def _experiment_id(self, source: str) -> str:
        name = f"periscope-{source}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        return str(
            self.client.create_experiment(
                name, artifact_location=f"{self.settings.mlflow_artifact_root}/{source}"
            )
        )

    def log_model(
        self,
        *,
        source: str,
        kind: ModelKind,
        directory: Path,
        params: dict[str, object],
        metrics: dict[str, float],
        tags: dict[str, str],
        extra_files: dict[str, str] | None = None,
    ) -> ModelInfo:
        """Log one training run (params, metrics, tags, files) and register its model version."""
        name = model_name(source, kind)
        run = self.client.create_run(
            self._experiment_id(source),
            run_name=f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            tags={"kind": kind, "source": source, "code_version": code_version(), **tags},
        )
        run_id = run.info.run_id
        try:
            for key, value in params.items():
                self.client.log_param(run_id, key, str(value)[:6000])
            for key, value in metrics.items():
                if value == value:  # MLflow rejects NaN metrics only on some stores: skip them
                    self.client.log_metric(run_id, key, float(value))
            self.client.log_artifacts(run_id, str(directory), "model")
            for file_name, text in (extra_files or {}).items():
                self.client.log_text(run_id, text, file_name)
            self.client.set_terminated(run_id, "FINISHED")
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self._ensure_registered(name)
        version = self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags
        )
        return self._info(name, int(version.version))

    def _ensure_registered(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)

    # --- reading ---------------------------------------------------------------------------
    def _info(self, name: str, version: int) -> ModelInfo:
        mv = self.client.get_model_version(name, str(version))
        run_id = str(mv.run_id)  # every version here is created from a run
        run = self.client.get_run(run_id)
        return ModelInfo(
            name=name,
            version=int(mv.version),
            run_id=run_id,
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
            aliases=list(mv.aliases),
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        )

    def versions(self, name: str) -> list[ModelInfo]:
        """Every version of one registered model, newest first."""
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(name, int(mv.version)) for mv in found), key=lambda i: -i.version)

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def resolve(self, source: str, kind: ModelKind, ref: str = CHAMPION) -> ModelInfo | None:
        """A version by number or alias; None when the alias is not set (no champion yet)."""
        from mlflow.exceptions import MlflowException

        name = model_name(source, kind)
        try:
            if ref.isdigit():
                return self._info(name, int(ref))
            mv = self.client.get_model_version_by_alias(name, ref)
        except MlflowException:
            if ref.isdigit():
                raise PeriscopeError(f"{name} has no version {ref}") from None
            return None
        return self._info(name, int(mv.version))

    def champion_version(self, source: str, kind: str) -> int | None:
        """The champion's version number only: one cheap lookup, polled by running scorers."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(model_name(source, kind), CHAMPION)
        except MlflowException:
            return None
        return int(mv.version)

    def download(self, info: ModelInfo, destination: Path | None = None) -> Path:
        """The model directory of a version, fetched from the artifact store."""
        import mlflow

        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{info.name}/{info.version}",
            dst_path=None if destination is None else str(destination),
        )
        return Path(path)

    def download_file(self, info: ModelInfo, name: str, destination: Path) -> Path:
        """One file of a version's model directory into `destination` (a manifest without the
        models it lists)."""
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        repository = ModelsArtifactRepository(f"models:/{info.name}/{info.version}")
        destination.mkdir(parents=True, exist_ok=True)
        return Path(repository.download_artifacts(name, dst_path=str(destination)))

    def stale_forecast_champion(self, source: str) -> bool:
        """Whether the source's forecast champion was saved in a format this code cannot load
        (the Prophet-only bundles before the candidates): it cannot serve, so it counts as none.
        Reads the champion's manifest only, not its models."""
        import tempfile

        from ml.forecast import ForecastBundle

        info = self.resolve(source, "forecast")
        if info is None:
            return False
        with tempfile.TemporaryDirectory(prefix="periscope-manifest-") as folder:
            manifest = self.download_file(info, "manifest.json", Path(folder))
            return not ForecastBundle.is_current(manifest.parent)

    def load(self, info: ModelInfo) -> Any:
        """A version's model in memory: a ForecastBundle, an AnomalyModel or a TripModel."""
        from ml.anomaly import AnomalyModel
        from ml.forecast import ForecastBundle
        from ml.trips import TripModel

        directory = self.download(info)
        if info.name.endswith("_forecast"):
            return ForecastBundle.load(directory)
        if info.name.endswith("_trip"):
            return TripModel.load(directory)
        return AnomalyModel.load(directory)

    # --- the champion alias ----------------------------------------------------------------
    def history(self, name: str) -> list[int]:
        tags = self.client.get_registered_model(name).tags
        return [int(v) for v in json.loads(tags.get(_HISTORY_TAG, "[]"))]

    def set_champion(self, source: str, kind: ModelKind, version: int) -> int | None:
        """Point `champion` at a version; returns the previous champion's version."""
        name = model_name(source, kind)
        self._info(name, version)  # a clear error for a version that does not exist
        previous = self.resolve(source, kind)
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        history = self.history(name)
        if not history or history[-1] != version:
            history.append(version)
        self.client.set_registered_model_tag(name, _HISTORY_TAG, json.dumps(history))
        log.info(
            "%s: champion is now version %s (was %s)",
            name,
            version,
            previous.version if previous else "none",
        )
        return previous.version if previous else None

    def rollback(self, source: str, kind: ModelKind) -> tuple[int, int]:
        """Move `champion` back to the version that held it before; returns (from, to)."""
        name = model_name(source, kind)
        history = self.history(name)
        if len(history) < 2:
            raise PeriscopeError(
                f"{name} has no earlier champion to roll back to (champion history: {history or 'empty'})"
            )
        current, previous = history[-1], history[-2]
        self.client.set_registered_model_alias(name, CHAMPION, str(previous))
        self.client.set_registered_model_tag(name, _HISTORY_TAG, json.dumps(history[:-1]))
        log.info("%s: rolled champion back from version %s to %s", name, current, previous)
        return current, previous
