"""Read-through Redis cache for items.  Redis trouble never fails a read: it falls back to PostgreSQL."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import redis

from keelson_app.metrics import Metrics
from keelson_app.settings import Settings

log = logging.getLogger(__name__)
TTL_S = 300
SOCKET_TIMEOUT_S = 1.0


class RedisLike(Protocol):
    def get(self, name: str) -> Any: ...
    def set(self, name: str, value: str, ex: int | None = None) -> Any: ...
    def ping(self) -> Any: ...
    def close(self) -> None: ...


def make_redis(settings: Settings) -> redis.Redis:
    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=settings.redis_password,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
        decode_responses=True,
    )


class ItemCache:
    def __init__(self, client: RedisLike, metrics: Metrics, shape: str) -> None:
        self.client = client
        self.metrics = metrics
        # Releases that render items differently (v1 without note, v2 with) run side by side in blue/green:
        # the shape in the key keeps one from serving the other's cached form.
        self.prefix = f"keelson:item:{shape}:"

    def get(self, item_id: int) -> dict[str, Any] | None:
        try:
            raw = self.client.get(f"{self.prefix}{item_id}")
        except redis.RedisError as exc:
            self.metrics.cache_errors.inc()
            log.warning("cache read failed", extra={"error": type(exc).__name__})
            raw = None
        if raw is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        return json.loads(raw)

    def put(self, item: dict[str, Any]) -> None:
        try:
            self.client.set(f"{self.prefix}{item['id']}", json.dumps(item), ex=TTL_S)
        except redis.RedisError as exc:
            self.metrics.cache_errors.inc()
            log.warning("cache write failed", extra={"error": type(exc).__name__})
