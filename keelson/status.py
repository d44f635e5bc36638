"""Fleet status: what ``playbooks/status.yml`` found on each host, plus Prometheus.

Shared by ``keelson status`` and ``keelson tui``.  The playbook writes one JSON
file per reachable host into ``keelson_status_dir`` (contract below); a host
without a file did not answer.  Prometheus, on the first host of the
``monitoring`` group, adds firing alerts, certificate days left and the age of
the last good backup.  If Prometheus does not answer, those columns are
"unknown" and the fleet is not reported healthy.

Per-host file ``<inventory_hostname>.json``::

    {"host": "...", "groups": [...],
     "releases": [{"project", "slot", "release", "image", "state"}],
     "containers": [{"name", "project", "service", "state", "health", "restart_count"}]}
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from keelson import runner
from keelson.environment import Inventory, InventoryError, tool_env

UNKNOWN = "unknown"
APP_PROJECT_PREFIX = "keelson-app"
# One-shot services: a stopped container of theirs is their normal end.
JOB_SERVICES = frozenset({"migrate"})
GOOD_HEALTH = frozenset({"", "healthy", "none"})
PROM_QUERIES = {
    "cert_days": "(probe_ssl_earliest_cert_expiry - time()) / 86400",
    "backup_age": 'time() - max by (host) (keelson_backup_last_success_timestamp_seconds{task="backup"})',
}


@dataclass
class Container:
    name: str
    project: str = ""
    service: str = ""
    state: str = ""
    health: str = ""
    restart_count: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"

    def problem(self) -> str | None:
        if not self.running:
            return f"{self.name} {self.state or 'not running'}"
        if (self.health or "") not in GOOD_HEALTH:
            return f"{self.name} {self.health}"
        return None


DB_GROUP = "db"
NEVER = "never"


@dataclass
class HostStatus:
    host: str
    groups: list[str]
    reachable: bool
    release: dict | None = None  # {"release", "slot", "image"} of the active app slot
    containers_total: int = 0
    containers_bad: list[str] = field(default_factory=list)
    backup_age_seconds: float | None | str = None  # None: no backup metric for this host
    cert_days_left: float | None | str = None
    alerts: list[str] | str = field(default_factory=list)

    @property
    def containers_healthy(self) -> int:
        return self.containers_total - len(self.containers_bad)

    def problems(self) -> list[str]:
        found = []
        if not self.reachable:
            return ["unreachable"]
        found += [f"container {c}" for c in self.containers_bad]
        if self.alerts == UNKNOWN:
            found.append("alerts unknown (Prometheus did not answer)")
        else:
            found += [f"alert {a}" for a in self.alerts]
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()


@dataclass
class FleetStatus:
    inventory: str
    prometheus_url: str | None
    prometheus_error: str | None
    hosts: list[HostStatus]
    # Firing alerts that name no host (the public certificate, a blackbox probe,
    # fleet-wide backup rules): the fleet's, not any one host's.
    fleet_alerts: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(h.healthy for h in self.hosts) and not self.fleet_alerts

    def to_dict(self) -> dict:
        hosts = []
        for h in self.hosts:
            row = asdict(h)
            row["containers"] = {
                "healthy": h.containers_healthy,
                "total": h.containers_total,
                "bad": row.pop("containers_bad"),
            }
            row.pop("containers_total")
            row["healthy"] = h.healthy
            row["problems"] = h.problems()
            hosts.append(row)
        return {
            "inventory": self.inventory,
            "healthy": self.healthy,
            "fleet_alerts": self.fleet_alerts,
            "prometheus": {
                "url": self.prometheus_url,
                "reachable": self.prometheus_error is None and self.prometheus_url is not None,
                "error": self.prometheus_error,
            },
            "hosts": hosts,
        }


# --- what the hosts said -----------------------------------------------------


def read_host_files(directory: Path, hosts: list[str]) -> dict[str, dict | None]:
    """host → its status document, or None when it wrote none (unreachable)."""
    found: dict[str, dict | None] = {}
    for host in hosts:
        path = directory / f"{host}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = None
        except (OSError, json.JSONDecodeError) as exc:
            raise InventoryError(f"status of {host}: {path} is not JSON ({exc})") from None
        found[host] = data
    return found


def _active_slot(releases: list[dict], containers: list[Container]) -> dict | None:
    """The app release that serves: a slot release marked active (the one whose
    containers run, if several are), else the slot that has running containers."""
    slots = [r for r in releases if r.get("slot") and str(r.get("project", "")).startswith(APP_PROJECT_PREFIX)]
    running_projects = {c.project for c in containers if c.running}
    active = [r for r in slots if r.get("state") == "active"]
    for group in (
        [r for r in active if r.get("project") in running_projects],
        active,
        [r for r in slots if r.get("project") in running_projects],
    ):
        if group:
            return group[0]
    return None


def host_status(host: str, groups: list[str], data: dict | None) -> HostStatus:
    """One host's row from its status document (None: unreachable)."""
    if data is None:
        return HostStatus(host=host, groups=groups, reachable=False)
    releases = [r for r in data.get("releases") or [] if isinstance(r, dict)]
    containers = [
        Container(
            name=str(c.get("name", "?")),
            project=str(c.get("project") or ""),
            service=str(c.get("service") or ""),
            state=str(c.get("state") or ""),
            health=str(c.get("health") or ""),
            restart_count=int(c.get("restart_count") or 0),
        )
        for c in data.get("containers") or []
        if isinstance(c, dict)
    ]
    active = _active_slot(releases, containers)
    slot_projects = {r.get("project") for r in releases if r.get("slot")}
    counted = []
    for c in containers:
        if c.service in JOB_SERVICES and not c.running:
            continue
        # The idle slot of the app is stopped on purpose.
        if c.project in slot_projects and active is not None and c.project != active.get("project") and not c.running:
            continue
        counted.append(c)
    release = None
    if active is not None:
        release = {"release": active.get("release"), "slot": active.get("slot"), "image": active.get("image")}
    return HostStatus(
        host=host,
        groups=list(data.get("groups") or groups),
        reachable=True,
        release=release,
        containers_total=len(counted),
        containers_bad=[p for c in counted if (p := c.problem())],
    )


# --- Prometheus ----------------------------------------------------------------


class PrometheusError(Exception):
    pass


@dataclass
class Prometheus:
    url: str
    timeout: float = 5.0

    def _get(self, path: str, params: dict | None = None) -> object:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"{self.url}: {getattr(exc, 'reason', exc)}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusError(f"{self.url}{path}: {body.get('error') if isinstance(body, dict) else body}")
        return body.get("data")

    def query(self, expr: str) -> list[dict]:
        data = self._get("/api/v1/query", {"query": expr})
        return data.get("result", []) if isinstance(data, dict) else []

    def firing_alerts(self) -> list[dict]:
        data = self._get("/api/v1/alerts")
        alerts = data.get("alerts", []) if isinstance(data, dict) else []
        return [a for a in alerts if a.get("state") == "firing"]


def prometheus_url(inventory: Inventory, group: str = "monitoring") -> str | None:
    hosts = inventory.group(group)
    if not hosts:
        return None
    host = hosts[0]
    address = inventory.var(host, "ansible_host") or host
    port = inventory.var(host, "monitoring_prometheus_port", 9090)
    if ":" in str(address):
        address = f"[{address}]"
    return f"http://{address}:{port}"


def add_prometheus(
    hosts: list[HostStatus], prom: Prometheus | None, lb_hosts: list[str]
) -> tuple[str | None, list[str]]:
    """Fill the Prometheus columns in place; returns the error, if Prometheus did not
    answer, and the firing alerts that name no host."""
    try:
        if prom is None:
            raise PrometheusError("the inventory has no monitoring host")
        alerts = prom.firing_alerts()
        certs = prom.query(PROM_QUERIES["cert_days"])
        backups = prom.query(PROM_QUERIES["backup_age"])
    except PrometheusError as exc:
        for h in hosts:
            h.alerts = UNKNOWN
            h.cert_days_left = UNKNOWN
            h.backup_age_seconds = UNKNOWN
        return str(exc), []
    by_host: dict[str, list[str]] = {}
    fleet_wide = []
    for alert in alerts:
        labels = alert.get("labels", {})
        name = labels.get("alertname", "?")
        if labels.get("host"):
            by_host.setdefault(labels["host"], []).append(name)
        else:
            fleet_wide.append(name)
    cert_days: dict[str, float] = {}
    for series in certs:
        # A probe names the host it checks (label host); without one it probes the
        # public name, which the edge hosts serve.
        owner = series.get("metric", {}).get("host")
        value = float(series["value"][1])
        for host in [owner] if owner else lb_hosts:
            cert_days[host] = min(value, cert_days.get(host, value))
    backup_age = {s.get("metric", {}).get("host"): float(s["value"][1]) for s in backups}
    for h in hosts:
        h.alerts = sorted(by_host.get(h.host, []))
        h.cert_days_left = round(cert_days[h.host], 1) if h.host in cert_days else None
        if h.host in backup_age:
            h.backup_age_seconds = round(backup_age[h.host])
        elif DB_GROUP in h.groups:
            # A database host without the metric has never finished a backup (or its
            # timer never ran): say so rather than "not applicable".
            h.backup_age_seconds = NEVER
    return None, sorted(fleet_wide)


def build(
    inventory: Inventory, host_files: dict[str, dict | None], prom: Prometheus | None, prom_url: str | None
) -> FleetStatus:
    hosts = [host_status(h, inventory.host_groups(h), host_files.get(h)) for h in inventory.hosts]
    error, fleet_alerts = add_prometheus(hosts, prom, inventory.group("lb"))
    return FleetStatus(
        inventory=str(inventory.path),
        prometheus_url=prom_url,
        prometheus_error=error,
        hosts=hosts,
        fleet_alerts=fleet_alerts,
    )


def status_command(inventory: Inventory, directory: Path, passthrough: tuple[str, ...] = ()) -> list[str]:
    return runner.playbook_command(
        "status", inventory.path, {"keelson_status_dir": str(directory)}, passthrough=passthrough
    )


# ansible-playbook's exit codes that still mean "the hosts that answered wrote their file".
PLAYBOOK_OK = (0, 2, 4)


def collect(
    inventory: Inventory,
    on_line: Callable[[str, runner.Progress], None] | None = None,
    passthrough: tuple[str, ...] = (),
    prom_timeout: float = 5.0,
) -> FleetStatus:
    """Run playbooks/status.yml, read its files, ask Prometheus."""
    with tempfile.TemporaryDirectory(prefix="keelson-status-") as tmp:
        output: list[str] = []

        def keep(line: str, progress: runner.Progress) -> None:
            output.append(line)
            if on_line:
                on_line(line, progress)

        code, _ = runner.run(status_command(inventory, Path(tmp), passthrough), keep, env=tool_env())
        if code not in PLAYBOOK_OK:
            tail = "\n".join(output[-15:])
            raise InventoryError(f"playbooks/status.yml failed (exit {code}):\n{tail}")
        files = read_host_files(Path(tmp), inventory.hosts)
    url = prometheus_url(inventory)
    prom = Prometheus(url, timeout=prom_timeout) if url else None
    return build(inventory, files, prom, url)


# --- presentation ----------------------------------------------------------------


def age_text(seconds: float | None | str) -> str:
    if seconds is None:
        return "-"
    if isinstance(seconds, str):
        return seconds
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def row(h: HostStatus) -> dict[str, str]:
    """The cells of one host, as text (table and TUI)."""
    release = "-"
    if h.release:
        # The image names the release for people (the release id is in --json).
        image = str(h.release.get("image") or h.release.get("release") or "?").split(",")[0].split("@")[0]
        release = f"{image} ({h.release.get('slot')})"
    if not h.reachable:
        containers = "-"
    else:
        containers = f"{h.containers_healthy}/{h.containers_total}"
        if h.containers_bad:
            containers += " bad: " + ", ".join(h.containers_bad)
    certs = (
        h.cert_days_left
        if isinstance(h.cert_days_left, str)
        else ("-" if h.cert_days_left is None else f"{h.cert_days_left:g}")
    )
    alerts = h.alerts if isinstance(h.alerts, str) else (", ".join(h.alerts) or "none")
    return {
        "host": h.host,
        "reachable": "yes" if h.reachable else "NO",
        "release": release,
        "containers": containers,
        "backup age": age_text(h.backup_age_seconds),
        "cert days": certs,
        "alerts": alerts,
    }


COLUMNS = ("host", "reachable", "release", "containers", "backup age", "cert days", "alerts")
