#!/usr/bin/python3
"""Per-container metrics for node-exporter's textfile collector.

Installed by role docker as /usr/local/lib/keelson/container-metrics and run by
keelson-container-metrics.timer. Asks the Docker engine (HTTP over its unix socket)
for every container, running or not, inspects each, and writes one textfile:

    keelson_container_running{container,project,service,slot}        1 or 0
    keelson_container_healthy{...}          only containers with a healthcheck: 1 healthy, else 0
    keelson_container_restart_count{...}    restarts by the engine's restart policy
    keelson_container_oom_killed{...}       1 if the last exit was an OOM kill
    keelson_containers_last_update_timestamp_seconds                 when this file was written

The file is written to a temporary name in the same directory and renamed, so a scrape
never reads half a file. When the engine does not answer, the script exits 1 and leaves
the previous file alone: its timestamp then grows old, which is what to alert on.

Standard library only (it runs on the hosts' python3, 3.10 on Ubuntu 22.04).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass

DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_OUTPUT = "/var/lib/prometheus/node-exporter/keelson_containers.prom"
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_SLOT = "io.keelson.slot"

METRICS = (
    ("running", "1 if the container is running, 0 otherwise"),
    ("healthy", "1 if the container's healthcheck reports healthy, 0 otherwise (containers with a healthcheck only)"),
    ("restart_count", "times the engine restarted the container (restart policy) since it was created"),
    ("oom_killed", "1 if the container's last exit was caused by the kernel's OOM killer"),
)
TIMESTAMP = "keelson_containers_last_update_timestamp_seconds"


class EngineError(Exception):
    """The Docker engine could not be asked (no socket, refused, an error status)."""


class NotFound(EngineError):
    """The engine answered 404 (the container went away between list and inspect)."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the engine's API)."""

    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """The few read-only calls this script makes."""

    def __init__(self, socket_path: str, timeout: float = 10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def get(self, path: str):
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise EngineError(f"cannot reach the Docker engine at {self.socket_path}: {exc}") from exc
        finally:
            conn.close()
        if resp.status == 404:
            raise NotFound(path)
        if resp.status != 200:
            raise EngineError(f"GET {path}: HTTP {resp.status}: {body[:200].decode(errors='replace')}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EngineError(f"GET {path}: not JSON: {exc}") from exc

    def containers(self) -> list[dict]:
        """Inspect every container (all=true: exited ones too); gone ones are skipped."""
        found = []
        for summary in self.get("/containers/json?all=true"):
            try:
                found.append(self.get(f"/containers/{urllib.parse.quote(summary['Id'])}/json"))
            except NotFound:
                continue
        return found


@dataclass(frozen=True)
class Container:
    name: str
    project: str
    service: str
    slot: str
    running: bool
    healthy: bool | None  # None: no healthcheck
    restart_count: int
    oom_killed: bool

    @classmethod
    def from_inspect(cls, data: dict) -> Container:
        state = data.get("State") or {}
        labels = (data.get("Config") or {}).get("Labels") or {}
        health = state.get("Health")
        return cls(
            name=(data.get("Name") or "").lstrip("/"),
            project=labels.get(LABEL_PROJECT, ""),
            service=labels.get(LABEL_SERVICE, ""),
            slot=labels.get(LABEL_SLOT, ""),
            running=bool(state.get("Running")),
            healthy=None if not health else health.get("Status") == "healthy",
            restart_count=int(data.get("RestartCount") or 0),
            oom_killed=bool(state.get("OOMKilled")),
        )

    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("container", self.name), ("project", self.project), ("service", self.service), ("slot", self.slot))

    def values(self) -> dict[str, int | None]:
        return {
            "running": int(self.running),
            "healthy": None if self.healthy is None else int(self.healthy),
            "restart_count": self.restart_count,
            "oom_killed": int(self.oom_killed),
        }


def escape_label(value: str) -> str:
    """A label value in the text exposition format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(containers: list[Container], now: float) -> str:
    """The textfile: HELP and TYPE once per metric, one sample per container, sorted by name."""
    lines: list[str] = []
    ordered = sorted(containers, key=lambda c: c.name)
    for metric, text in METRICS:
        name = f"keelson_container_{metric}"
        samples = []
        for c in ordered:
            value = c.values()[metric]
            if value is None:
                continue
            labels = ",".join(f'{key}="{escape_label(val)}"' for key, val in c.labels())
            samples.append(f"{name}{{{labels}}} {value}")
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(samples)
    lines.append(f"# HELP {TIMESTAMP} when the container metrics were last written (unix time)")
    lines.append(f"# TYPE {TIMESTAMP} gauge")
    lines.append(f"{TIMESTAMP} {now:.3f}")
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Write to a temporary file beside path, then rename it over path (a scrape sees old or new)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keelson_containers.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write per-container metrics for node-exporter's textfile collector.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"Docker engine socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"textfile to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--stdout", action="store_true", help="print the metrics instead of writing the file")
    args = parser.parse_args(argv)

    if not args.stdout and not os.path.isdir(os.path.dirname(args.output) or "."):
        print(f"container-metrics: directory of {args.output} does not exist", file=sys.stderr)
        return 2
    try:
        containers = [Container.from_inspect(c) for c in Engine(args.socket).containers()]
    except EngineError as exc:
        print(f"container-metrics: {exc}; {args.output} left as it was", file=sys.stderr)
        return 1
    text = render(containers, time.time())
    if args.stdout:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
