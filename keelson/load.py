"""A bounded HTTP(S) load generator: steady requests, counted failures and latencies.

End-to-end tests and benchmarks keep requests flowing through the HTTPS edge
while a rolling upgrade runs, then look at what failed and when the responses
changed (``tally_json_field="release"`` shows v1 turning into v2).

Every run is bounded twice: ``max_requests`` and ``max_seconds`` are both
required. At the time bound no new request starts; one in flight may finish
within ``timeout`` (each socket operation is bounded by it) and is aborted if it
is still running ``timeout + 1`` seconds after the bound, so a run never takes
longer than ``max_seconds + timeout + 1`` plus a moment to join the threads.

What counts:

- ``ok``: a response with a status in ``ok_statuses`` (default 200-399);
- ``failed``: a connection error, a timeout, any other exception, a 5xx
  response, or any status outside ``ok_statuses`` (so 4xx by default);
- ``reconnects``: with keep-alive, a reused connection the server had closed
  while idle (``RemoteDisconnected``, ``BrokenPipeError``, ``ConnectionResetError``
  or their TLS equivalents, before any response came back) is reopened and
  the request sent again, once, for idempotent methods: what every HTTP client
  does. That is counted here, not as a failure. A new connection that fails
  like that is a failure, and so is a second failure of the resent request.

Latency percentiles cover the requests that got a response (any status),
measured from the first byte sent (including a transparent resend) to the last
byte of the body. Timings and the timeline use the request's start, in seconds
since the run began.

Command line (``--json`` for the whole result), here to the lab edge (lab-edge1)::

    python -m keelson.load https://lab.keelson.test/ --requests 600 --seconds 30 \\
        --rate 20 --ca inventories/lab/.lab/ca/ca.crt --connect 172.30.77.11 --tally release
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

# Failures kept with their details; the counters stay exact beyond it.
MAX_FAILURE_RECORDS = 200
# Methods a client may send again when a kept-alive connection turns out stale.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# How a reused connection the server closed while it was idle shows up, before any response.
STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
# Tally keys for 200 responses that do not carry the field.
MISSING = "<missing>"
NOT_JSON = "<not json>"

Address = str | tuple[str, int]


@dataclass
class SecondBucket:
    """The requests that started in one second of the run."""

    second: int
    ok: int = 0
    failed: int = 0
    values: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadResult:
    sent: int
    ok: int
    failed: int
    # Stale kept-alive connections reopened and their request resent (not failures).
    reconnects: int
    # TCP (and TLS) connections opened, reconnects included.
    connections: int
    # The first MAX_FAILURE_RECORDS failures: offset_s, path, status (or None), error (or None), elapsed_ms.
    failures: list[dict]
    status_counts: dict[int, int]
    # Exceptions by class name (the requests that got no response).
    error_counts: dict[str, int]
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    duration_s: float
    requests_per_s: float
    # "max_requests", "max_seconds", "stop" (stop() was called) or "running".
    stopped_by: str
    # Values of tally_json_field in 200 responses, and when each was first and last seen (offset_s).
    tally: dict[str, int]
    tally_spans: dict[str, tuple[float, float]]
    timeline: list[SecondBucket]

    def summary(self) -> str:
        """A few lines for a person."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        lines = [
            f"sent {self.sent}, ok {self.ok}, failed {self.failed}, reconnects {self.reconnects}, "
            f"connections {self.connections} in {self.duration_s:.2f} s ({self.requests_per_s:.1f} req/s), "
            f"stopped by {self.stopped_by}",
            f"latency ms: p50 {ms(self.p50_ms)}, p90 {ms(self.p90_ms)}, p99 {ms(self.p99_ms)}, max {ms(self.max_ms)}",
        ]
        if self.status_counts:
            lines.append("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.status_counts.items())))
        if self.error_counts:
            lines.append("errors: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.error_counts.items())))
        for value, count in sorted(self.tally.items()):
            first, last = self.tally_spans[value]
            lines.append(f"{value}: {count} (from {first:.2f} s to {last:.2f} s)")
        for failure in self.failures[:10]:
            reason = failure["error"] or f"HTTP {failure['status']}"
            lines.append(f"failure at {failure['offset_s']:.2f} s {failure['path']}: {reason}")
        if self.failed > 10:
            lines.append(f"... {self.failed - 10} more failures")
        return "\n".join(lines)


def parse_address(text: str) -> Address:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address, as ``connect_address`` takes it."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest:
            return host
        if not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        return host, _port(rest[1:], text)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text)
    return text


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in address {whole!r}")
    return int(text)


def _percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def _positive(name: str, value: float | None, kind: type | tuple[type, ...]) -> None:
    if value is None:
        raise ValueError(f"{name} is required: a load run is always bounded")
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")


class _Connection(http.client.HTTPConnection):
    """HTTP or HTTPS to a fixed address, with SNI and certificate checks for ``server_hostname``."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext | None,
        server_hostname: str | None,
        on_connect: Callable[[], None],
    ) -> None:
        super().__init__(address, port, timeout=timeout)
        self._tls_context = context
        self._server_hostname = server_hostname
        self._on_connect = on_connect

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls_context is not None:
                sock = self._tls_context.wrap_socket(sock, server_hostname=self._server_hostname)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._on_connect()

    def abort(self) -> None:
        """From another thread: wake up a read or write in progress (it fails with EOF or an error)."""
        sock = self.sock
        if sock is not None:
            # The plain socket's shutdown: SSLSocket's would also drop its SSL object under the reader.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class LoadGenerator:
    """Requests from ``workers`` threads until ``max_requests`` were sent or ``max_seconds`` passed.

    ``rate`` caps the total requests per second (evenly spaced, no catching up
    after a slow patch); ``None`` sends as fast as the workers go.
    ``connect_address`` (host, or (host, port)) is where the connections go,
    while SNI, certificate checks and Host stay those of the URL (or
    ``server_hostname`` and ``host_header``). ``paths`` are requested in turn
    (default: the URL's path and query). One run per instance.
    """

    def __init__(
        self,
        url: str,
        *,
        workers: int = 4,
        rate: float | None = None,
        max_requests: int | None = None,
        max_seconds: float | None = None,
        timeout: float = 5.0,
        ca_file: str | None = None,
        host_header: str | None = None,
        server_hostname: str | None = None,
        connect_address: Address | None = None,
        keepalive: bool = True,
        paths: Iterable[str] | None = None,
        method: str = "GET",
        ok_statuses: Iterable[int] | None = None,
        tally_json_field: str | None = None,
    ) -> None:
        _positive("max_requests", max_requests, int)
        _positive("max_seconds", max_seconds, (int, float))
        _positive("workers", workers, int)
        _positive("timeout", timeout, (int, float))
        if rate is not None:
            _positive("rate", rate, (int, float))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        try:
            url_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}") from exc
        if ca_file is not None and parts.scheme != "https":
            raise ValueError("ca_file is for https:// URLs")
        default_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.paths = list(paths) if paths is not None else [default_path]
        if not self.paths or not all(isinstance(p, str) and p.startswith("/") for p in self.paths):
            raise ValueError(f"paths must be a non-empty list of paths starting with '/', not {self.paths!r}")
        if ok_statuses is None:
            self.ok_statuses = frozenset(range(200, 400))
        else:
            self.ok_statuses = frozenset(ok_statuses)
            if not self.ok_statuses or not all(isinstance(s, int) and 100 <= s < 500 for s in self.ok_statuses):
                raise ValueError(f"ok_statuses must be HTTP statuses below 500 (5xx always fail): {ok_statuses!r}")

        self.url = url
        self.method = method.upper()
        self.workers = min(workers, max_requests)
        self.rate = rate
        self.max_requests = max_requests
        self.max_seconds = float(max_seconds)
        self.timeout = float(timeout)
        self.keepalive = keepalive
        self.tally_json_field = tally_json_field
        if connect_address is None:
            self._address: tuple[str, int] = (parts.hostname, url_port)
        elif isinstance(connect_address, str):
            self._address = (connect_address, url_port)
        else:
            self._address = (connect_address[0], int(connect_address[1]))
        self._server_hostname = server_hostname or parts.hostname
        self._context = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self._headers = {"Host": host_header or parts.netloc.rpartition("@")[2], "User-Agent": "keelson-load"}
        if not keepalive:
            self._headers["Connection"] = "close"

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[_Connection] = []
        self._aborted = False
        self._stop_requested = False
        self._started: float | None = None
        self._deadline = 0.0
        self._ended: float | None = None
        self._next_slot = 0.0
        self._claimed = 0
        self._running = 0
        # What the result reports.
        self._sent = self._ok = self._failed = self._reconnects = self._connections = 0
        self._failures: list[dict] = []
        self._status_counts: dict[int, int] = {}
        self._error_counts: dict[str, int] = {}
        self._latencies: list[float] = []
        self._tally: dict[str, int] = {}
        self._spans: dict[str, tuple[float, float]] = {}
        self._buckets: dict[int, SecondBucket] = {}

    # The run.

    def start(self) -> LoadGenerator:
        """Start the workers in the background."""
        with self._lock:
            if self._started is not None:
                raise RuntimeError("a LoadGenerator runs once; make a new one")
            self._started = self._next_slot = time.monotonic()
            self._deadline = self._started + self.max_seconds
            self._running = self.workers
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"keelson-load-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def wait(self) -> None:
        """Until a bound is hit (or stop() was called elsewhere)."""
        if self._started is None:
            raise RuntimeError("not started")
        self._join(self._deadline + self.timeout + 1)

    def stop(self) -> None:
        """Start no new request, let those in flight finish (or abort them after timeout + 1 s), join."""
        if self._started is None:
            return
        with self._lock:
            self._stop_requested = self._stop_requested or self._running > 0
        self._stop.set()
        self._join(time.monotonic() + self.timeout + 1)

    def request_stop(self) -> None:
        """Ask the workers to stop without waiting for them (safe in a signal handler): wait() returns."""
        self._stop_requested = True
        self._stop.set()

    def run(self) -> LoadResult:
        """Blocking: start, wait for a bound, return the result."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()
        return self.result()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _join(self, until: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            with self._lock:
                self._aborted = True
                conns = list(self._conns)
            self._stop.set()
            for conn in conns:
                conn.abort()
            for thread in self._threads:
                thread.join(1.0)

    # The workers.

    def _claim(self) -> tuple[int, float] | None:
        """The next request's number and when to send it, or None when a bound is reached."""
        with self._lock:
            now = time.monotonic()
            if self._claimed >= self.max_requests or now >= self._deadline:
                return None
            slot = now
            if self.rate is not None:
                slot = max(now, self._next_slot)
                if slot >= self._deadline:
                    return None
                self._next_slot = slot + 1.0 / self.rate
            self._claimed += 1
            return self._claimed - 1, slot

    def _connected(self) -> None:
        with self._lock:
            self._connections += 1

    def _work(self) -> None:
        conn = _Connection(
            *self._address,
            timeout=self.timeout,
            context=self._context,
            server_hostname=self._server_hostname,
            on_connect=self._connected,
        )
        with self._lock:
            self._conns.append(conn)
        try:
            while not self._stop.is_set():
                claim = self._claim()
                if claim is None:
                    break
                number, slot = claim
                delay = slot - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self._request(conn, self.paths[number % len(self.paths)])
        finally:
            conn.close()
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._ended = time.monotonic()

    def _request(self, conn: _Connection, path: str) -> None:
        begun = time.monotonic()
        with self._lock:
            self._sent += 1
        try:
            status, body = self._exchange(conn, path)
        except Exception as exc:
            conn.close()
            error = f"{type(exc).__name__}: {exc}"
            if self._aborted:
                error = f"aborted, still in flight {self.timeout + 1:g} s after the bound: {error}"
            self._record(begun, path, status=None, error=error, kind=type(exc).__name__)
            return
        finally:
            if not self.keepalive:
                conn.close()
        self._record(begun, path, status=status, body=body)

    def _exchange(self, conn: _Connection, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            reused = conn.sock is not None
            try:
                conn.request(self.method, path, headers=self._headers)
                response = conn.getresponse()
            except STALE_CONNECTION_ERRORS:
                conn.close()
                if attempt == 1 and reused and self.method in IDEMPOTENT_METHODS and not self._aborted:
                    with self._lock:
                        self._reconnects += 1
                    continue
                raise
            return response.status, response.read()
        raise AssertionError("unreachable")

    def _record(
        self,
        begun: float,
        path: str,
        *,
        status: int | None,
        body: bytes = b"",
        error: str | None = None,
        kind: str = "",
    ) -> None:
        elapsed_ms = (time.monotonic() - begun) * 1000
        offset = round(begun - (self._started or begun), 3)
        ok = status is not None and status in self.ok_statuses
        value = self._field_value(body) if ok and status == 200 and self.tally_json_field else None
        with self._lock:
            bucket = self._buckets.setdefault(int(offset), SecondBucket(int(offset)))
            if status is not None:
                self._status_counts[status] = self._status_counts.get(status, 0) + 1
                self._latencies.append(elapsed_ms)
            else:
                self._error_counts[kind] = self._error_counts.get(kind, 0) + 1
            if ok:
                self._ok += 1
                bucket.ok += 1
            else:
                self._failed += 1
                bucket.failed += 1
                if len(self._failures) < MAX_FAILURE_RECORDS:
                    self._failures.append(
                        {
                            "offset_s": offset,
                            "path": path,
                            "status": status,
                            "error": error,
                            "elapsed_ms": round(elapsed_ms, 3),
                        }
                    )
            if value is not None:
                self._tally[value] = self._tally.get(value, 0) + 1
                bucket.values[value] = bucket.values.get(value, 0) + 1
                first, last = self._spans.get(value, (offset, offset))
                self._spans[value] = (min(first, offset), max(last, offset))

    def _field_value(self, body: bytes) -> str:
        try:
            document = json.loads(body)
        except ValueError:
            return NOT_JSON
        if not isinstance(document, dict) or self.tally_json_field not in document:
            return MISSING
        value = document[self.tally_json_field]
        return value if isinstance(value, str) else json.dumps(value)

    # The result.

    def result(self) -> LoadResult:
        """What happened so far (final once the run is over)."""
        with self._lock:
            now = time.monotonic()
            started = self._started if self._started is not None else now
            ended = self._ended if self._ended is not None else now
            duration = max(0.0, ended - started)
            if self._started is None or self._running > 0:
                stopped_by = "running"
            elif self._stop_requested:
                stopped_by = "stop"
            elif self._claimed >= self.max_requests:
                stopped_by = "max_requests"
            else:
                stopped_by = "max_seconds"
            ordered = sorted(self._latencies)
            timeline = []  # Every second up to the last, empty ones too: a gap in the load shows.
            for second in range(max(self._buckets, default=-1) + 1):
                bucket = self._buckets.get(second) or SecondBucket(second)
                timeline.append(SecondBucket(second, bucket.ok, bucket.failed, dict(sorted(bucket.values.items()))))
            return LoadResult(
                sent=self._sent,
                ok=self._ok,
                failed=self._failed,
                reconnects=self._reconnects,
                connections=self._connections,
                failures=[dict(f) for f in self._failures],
                status_counts=dict(sorted(self._status_counts.items())),
                error_counts=dict(sorted(self._error_counts.items())),
                p50_ms=_percentile(ordered, 50),
                p90_ms=_percentile(ordered, 90),
                p99_ms=_percentile(ordered, 99),
                max_ms=round(ordered[-1], 3) if ordered else None,
                duration_s=round(duration, 3),
                requests_per_s=round(self._sent / duration, 3) if duration > 0 else 0.0,
                stopped_by=stopped_by,
                tally=dict(sorted(self._tally.items())),
                tally_spans=dict(sorted(self._spans.items())),
                timeline=timeline,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keelson.load",
        description="Bounded HTTP(S) load: count failures and latencies. Exit 0 when the run completed "
        "(failures are in the output), 2 for bad arguments.",
    )
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, required=True, help="stop after this many requests")
    parser.add_argument("--seconds", type=float, required=True, help="stop after this many seconds")
    parser.add_argument("--rate", type=float, help="total requests per second (default: as fast as the workers go)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per connect or read")
    parser.add_argument("--ca", help="CA certificate file to verify the server against")
    parser.add_argument("--connect", metavar="ADDR", help="connect here (host, host:port or [v6]:port) instead")
    parser.add_argument("--path", action="append", dest="paths", help="path to request (repeat to rotate)")
    parser.add_argument("--tally", metavar="FIELD", help="count the values of this JSON field in 200 responses")
    parser.add_argument("--no-keepalive", action="store_true", help="a new connection per request")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    try:
        load = LoadGenerator(
            args.url,
            workers=args.workers,
            rate=args.rate,
            max_requests=args.requests,
            max_seconds=args.seconds,
            timeout=args.timeout,
            ca_file=args.ca,
            connect_address=parse_address(args.connect) if args.connect else None,
            paths=args.paths,
            keepalive=not args.no_keepalive,
            tally_json_field=args.tally,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    # SIGTERM or SIGINT ends the run early and still prints the result (a
    # background job started by a shell has SIGINT ignored: use SIGTERM).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: load.request_stop())
    result = load.run()
    print(json.dumps(asdict(result), indent=2) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
