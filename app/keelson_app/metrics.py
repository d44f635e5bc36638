"""Prometheus metrics and the ASGI middleware that counts, times and logs every request."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("keelson_app.access")
UNMATCHED = "<unmatched>"  # path label for requests no route matched: keeps label cardinality bounded


class Metrics:
    """Every metric the app exports, in its own registry (no module-level state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.info = Info("keelson_app", "Version, variant, release and slot of this process", registry=self.registry)
        self.requests = Counter(
            "keelson_http_requests_total",
            "HTTP requests by method, path template and status",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keelson_http_request_duration_seconds",
            "HTTP request latency by method and path template",
            ["method", "path"],
            registry=self.registry,
        )
        self.cache_hits = Counter("keelson_cache_hits_total", "Item reads served from Redis", registry=self.registry)
        self.cache_misses = Counter("keelson_cache_misses_total", "Item reads not in Redis", registry=self.registry)
        self.cache_errors = Counter(
            "keelson_cache_errors_total",
            "Redis errors on the item cache (the read falls back to PostgreSQL)",
            registry=self.registry,
        )


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class RequestMetricsMiddleware:
    """Pure ASGI middleware: one counter increment, one histogram sample and one JSON log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        method, path = scope["method"], route_template(scope)
        self.metrics.requests.labels(method, path, str(status)).inc()
        self.metrics.latency.labels(method, path).observe(elapsed)
        fields: dict[str, Any] = {
            "method": method,
            "path": scope["path"],
            "route": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        access_log.info("request", extra=fields)
