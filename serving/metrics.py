"""Prometheus metrics of the API: requests by route and status, and their latency.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which adds a task per request).
Each app has its own registry, so several apps (tests) never collide.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["RequestMetrics"]

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
