"""The Ray runtime of the ml stage: one place that calls `ray.init`, shared by training and gold.

`ray_session` connects to the configured cluster (`PERISCOPE_RAY_ADDRESS`) or starts a local
Ray with explicit resources; `worker_runtime_env` is how a long-lived actor's worker process
is started. Gold imports this module rather than `ml.training`, so the always-on scoring stage
does not load the training code (Prophet fitting, promotion, MLflow logging).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from periscope.settings import Settings

__all__ = ["ray_session", "worker_runtime_env"]


@contextmanager
def ray_session(settings: Settings, workers: int | None = None) -> Iterator[None]:
    """A Ray runtime for the duration: the configured cluster, or a local one with `workers` CPUs."""
    import ray

    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=workers or settings.train_workers,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def worker_runtime_env(*, niceness: int) -> dict[str, Any]:
    """The `runtime_env` of an actor whose worker runs at `niceness`.

    Ray runs its workers at niceness 15 by default; latency-bound work (scoring) that shares
    the machine with Spark and Kafka asks for the configured niceness instead.
    """
    return {"env_vars": {"RAY_worker_niceness": str(niceness)}}
