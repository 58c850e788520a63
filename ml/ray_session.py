"""The Ray runtime of the ml stage: one place that calls `ray.init`, shared by training and gold.

`ray_session` connects to the configured cluster (`PERISCOPE_RAY_ADDRESS`) or starts a local
Ray with explicit resources, its servers on loopback unless `PERISCOPE_RAY_HOST` says otherwise;
`worker_runtime_env` is how a long-lived actor's worker process is started. Gold imports this
module rather than `ml.training`, so the always-on scoring stage does not load the training code
(Prophet fitting, promotion, MLflow logging).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from periscope.settings import Settings

__all__ = ["local_ray_node", "ray_session", "worker_runtime_env"]

log = logging.getLogger(__name__)


_LOOPBACK = "loopback"
# Ray's switch for machines that never join a cluster (default off on Linux): the node address
# is then loopback. It changes nothing else (`ray start` refuses to add nodes to such a head).
_RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_node(host: str) -> str | None:
    """How a local Ray runtime is addressed for the `ray_host` setting: "loopback" (servers on
    127.0.0.1 only), None (Ray picks the machine's address) or the node address to use.

    >>> local_ray_node("127.0.0.1"), local_ray_node("localhost"), local_ray_node("0.0.0.0")
    ('loopback', 'loopback', None)
    >>> local_ray_node("10.0.0.5")
    '10.0.0.5'
    """
    if host in ("", "0.0.0.0", "::"):
        return None
    if host == "localhost":
        return _LOOPBACK
    try:
        return _LOOPBACK if ipaddress.ip_address(host).is_loopback else host
    except ValueError:  # a host name: Ray resolves it
        return host


@contextmanager
def ray_session(settings: Settings, workers: int | None = None) -> Iterator[None]:
    """A Ray runtime for the duration: the configured cluster, or a local one with `workers` CPUs."""
    node_ip = None if settings.ray_address else local_ray_node(settings.ray_host)
    if node_ip == _LOOPBACK:
        # Ray gives its servers the node's address, and `ray.init` turns a loopback
        # `_node_ip_address` into the machine's outward one; with this variable unset Ray takes
        # the loopback address as the node's (as it does on macOS), and then its GCS, raylet,
        # workers and agents listen on 127.0.0.1 only. Ray's processes inherit it.
        os.environ[_RAY_SINGLE_MACHINE] = "0"
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:  # Ray read the variable when imported: tell it too
            constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    import ray

    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    else:
        # Ray gives a new local node 30 s (not configurable) to register with its GCS; on two
        # busy cores that can pass, and a second start then succeeds: try up to three times.
        def start_again(_: RetryCallState) -> None:
            log.warning("Ray's local node did not start within its 30 s; starting it again")
            ray.shutdown()

        for attempt in Retrying(
            stop=stop_after_attempt(3),
            retry=retry_if_exception(lambda e: "timed out during startup" in str(e)),
            before_sleep=start_again,
            reraise=True,
        ):
            with attempt:
                ray.init(
                    num_cpus=workers or settings.train_workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    _node_ip_address=None if node_ip == _LOOPBACK else node_ip,
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
