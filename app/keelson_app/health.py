"""Readiness checks with a deadline: a frozen PostgreSQL or Redis must yield 503, not a hung probe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 2.0  # answers inside a 3 s Docker healthcheck timeout


class ReadinessProbe:
    def __init__(self, checks: dict[str, Callable[[], object]], timeout: float = READY_TIMEOUT_S) -> None:
        self.checks = checks
        self.timeout = timeout
        # One thread per check, and a check still running from an earlier probe is waited on again rather than
        # started twice: a dependency stuck on a dead socket ties up one thread, however often Docker probes.
        self.pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
        self.running: dict[str, Future[object]] = {}
        self.lock = threading.Lock()

    def run(self) -> dict[str, str]:
        """``{"postgres": "ok", "redis": "error: ConnectionError", ...}``, within ``timeout`` seconds."""
        with self.lock:
            for name, check in self.checks.items():
                if name not in self.running or self.running[name].done():
                    self.running[name] = self.pool.submit(check)
            futures = dict(self.running)
        wait(futures.values(), timeout=self.timeout)  # one deadline for all checks, which run in parallel
        results: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                results[name] = "error: timeout"
            elif (exc := future.exception()) is not None:  # any failure means "not ready"; its class says which
                results[name] = f"error: {type(exc).__name__}"
            else:
                results[name] = "ok"
            if results[name] != "ok":
                log.warning("readiness check failed", extra={"check": name, "error": results[name]})
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
