"""Prometheus metrics of the API: requests by route and status, their latency, and the lag of
the project's Kafka consumer groups.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which adds a task per request).
Each app has its own registry, so several apps (tests) never collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from periscope.metrics import ConsumerGroupLag
from periscope.settings import Settings

__all__ = ["BackgroundGroupLag", "RequestMetrics"]


class BackgroundGroupLag(ConsumerGroupLag):
    """`periscope_consumer_group_lag` as last asked: Kafka is asked in a background thread at
    most every `every_s`, so a scrape of the API never waits on the broker (its admin client
    takes seconds to give up when Kafka is down). Empty until the first answer."""

    def __init__(self, settings: Settings, groups: Iterable[str], *, every_s: float = 5.0) -> None:
        super().__init__(settings, groups)
        self.every_s = every_s
        self._known: dict[str, dict[str, int]] = {}
        self._asked_at = float("-inf")
        self._lock = threading.Lock()

    def lags(self) -> dict[str, dict[str, int]]:
        if time.monotonic() - self._asked_at >= self.every_s and not self._lock.locked():
            self._asked_at = time.monotonic()
            threading.Thread(target=self.ask, name="group-lag", daemon=True).start()
        return self._known

    def ask(self) -> dict[str, dict[str, int]]:
        """Ask Kafka now (blocking); the next scrapes show the answer."""
        with self._lock:
            self._known = ConsumerGroupLag.lags(self)
            self._asked_at = time.monotonic()
            return self._known


# Milliseconds matter here: the latency targets are 50 ms and 200 ms at p95.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class RequestMetrics:
    """Counts each request and observes its duration, labelled by route template."""

    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "periscope_api_requests",
            "HTTP requests served by the API.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "periscope_api_request_duration_seconds",
            "Time from request to the end of the response.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            # The template (/predictions/{source}/{entity_id}), not the path: bounded labels.
            name = getattr(route, "path", "other")  # /docs, /openapi.json, unknown paths
            self.requests.labels(scope["method"], name, str(status)).inc()
            self.latency.labels(scope["method"], name).observe(time.perf_counter() - started)
