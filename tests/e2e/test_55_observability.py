"""Observability on the lab: every scrape job answers, the blackbox probe reports the
certificate the edge really serves, a stopped container fires its alert within its
window, and every query of the shipped Grafana dashboards runs on the lab's Prometheus
(the lab has no Grafana image: the dashboards are checked against Prometheus's API)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from keelson import dashboards
from keelson.lab import fleet as lab_fleet
from tests.e2e import https, runbooks
from tests.e2e.conftest import LAB_INVENTORY
from tests.e2e.probe import on_host, wait_for_prometheus
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("first_converge")

DASHBOARDS = sorted((ROOT / "roles" / "monitoring" / "files" / "dashboards").glob("*.json"))
# Lab values (inventories/lab/group_vars/all/stack.yml, role defaults): the alert window
# of ContainerNotRunning, the collector's interval, scrape and rule evaluation intervals.
CONTAINER_ALERT_FOR = 30
COLLECTOR_INTERVAL = 15
SCRAPE_INTERVAL = 15
EVALUATION_INTERVAL = 15


def prometheus(lab: lab_fleet.Fleet, path: str, **params: str) -> dict:
    """GET the lab Prometheus's API (from lab-edge1 itself, as the tests always do)."""
    argv = ["curl", "-sS", "--max-time", "10", "-G", f"http://127.0.0.1:9090{path}"]
    for key, value in params.items():
        argv += ["--data-urlencode", f"{key}={value}"]
    out = on_host(lab, "lab-edge1", *argv)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def query(lab: lab_fleet.Fleet, expr: str) -> list[dict]:
    answer = prometheus(lab, "/api/v1/query", query=expr)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def firing(lab: lab_fleet.Fleet, alertname: str, **labels: str) -> list[dict]:
    alerts = prometheus(lab, "/api/v1/alerts")["data"]["alerts"]
    return [
        a
        for a in alerts
        if a["state"] == "firing"
        and a["labels"].get("alertname") == alertname
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def test_keelson_status_shows_every_host_healthy(lab):
    """docs/runbooks/deploy.md's last step: `keelson status` exits 0 — every host reachable,
    its containers healthy, no alert firing for it (alerts of earlier tests may still be
    resolving: retried for 3 min) — and the JSON behind it has the backup age and the
    certificate's days."""
    deadline = time.monotonic() + 180
    while True:
        run = runbooks.run("deploy", "keelson status", inventory=LAB_INVENTORY)
        if run.returncode == 0:
            break
        assert time.monotonic() < deadline, run.output[-5000:]
        time.sleep(15)
    assert "healthy" in run.output and "NOT healthy" not in run.output, run.output[-3000:]
    report = json.loads(runbooks.cli("status", "--json", inventory=LAB_INVENTORY, timeout=600).stdout)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {h.name for h in lab.hosts}
    assert all(h["reachable"] and h["healthy"] and not h["containers"]["bad"] for h in hosts.values()), hosts
    assert hosts["lab-app1"]["release"]["image"].startswith("keelson-lab/app:")
    assert hosts["lab-db1"]["containers"]["total"] >= 4
    assert isinstance(hosts["lab-db1"]["backup_age_seconds"], int), hosts["lab-db1"]
    assert 14 < hosts["lab-edge1"]["cert_days_left"] < 400, hosts["lab-edge1"]


def test_every_scrape_job_has_its_targets_up(lab):
    """node on every host, the app on each app host (one slot), postgres, redis and the
    blackbox probe on the db host and the edge, each with the inventory's host label."""
    for expr, hosts in [
        ('up{job="node"}', {h.name for h in lab.hosts}),
        ('max by (host) (up{job="app"})', {"lab-app1", "lab-app2"}),
        ('up{job="postgres"}', {"lab-db1"}),
        ('up{job="redis"}', {"lab-db1"}),
    ]:
        wait_for_prometheus(lab, f"min({expr})", "1", timeout=180)
        seen = {r["metric"].get("host") for r in query(lab, expr) if r["value"][1] == "1"}
        assert hosts <= seen, f"{expr}: up on {sorted(seen)}, expected {sorted(hosts)}"
    wait_for_prometheus(lab, 'probe_success{job="blackbox"}', "1", timeout=180)
    # The exporters do answer about their services, not only about themselves.
    assert query(lab, 'pg_up{host="lab-db1"}')[0]["value"][1] == "1"
    assert query(lab, 'redis_up{host="lab-db1"}')[0]["value"][1] == "1"
    running = query(lab, 'keelson_container_running{host="lab-db1", service="postgres"}')
    assert running and running[0]["value"][1] == "1", running


def test_blackbox_reports_the_served_certificate_expiry(lab):
    """probe_ssl_earliest_cert_expiry equals the notAfter of the certificate the edge serves."""
    wait_for_prometheus(lab, 'probe_success{job="blackbox"}', "1", timeout=180)
    sock = socket.create_connection((https.edge_address(lab), 443), timeout=10)
    with https.tls_context().wrap_socket(sock, server_hostname=https.DOMAIN) as tls:
        served = ssl.cert_time_to_seconds(tls.getpeercert()["notAfter"])
    result = query(lab, 'probe_ssl_earliest_cert_expiry{job="blackbox"}')
    assert result, "no certificate expiry from the blackbox probe"
    assert result[0]["metric"]["instance"] == f"https://{https.DOMAIN}/readyz"
    assert abs(float(result[0]["value"][1]) - served) < 1, (result, served)
    days = query(lab, '(probe_ssl_earliest_cert_expiry{job="blackbox"} - time()) / 86400')
    assert 14 < float(days[0]["value"][1]) < 400, days
    # The certificate is fine: its alerts are quiet.
    assert not firing(lab, "CertificateExpiringSoon")


def test_a_stopped_container_fires_its_alert_within_the_window(lab):
    """Stop postgres-exporter on lab-db1: ContainerNotRunning fires for it within its lab
    window (30 s) plus one collector, scrape and evaluation interval each, and resolves
    after it is started again."""
    container = "keelson-db-postgres-exporter-1"
    labels = {"host": "lab-db1", "container": container}
    wait_for_prometheus(lab, f'keelson_container_running{{container="{container}"}}', "1", timeout=120)
    assert not firing(lab, "ContainerNotRunning", **labels)
    bound = CONTAINER_ALERT_FOR + COLLECTOR_INTERVAL + SCRAPE_INTERVAL + 2 * EVALUATION_INTERVAL + 10
    stop = on_host(lab, "lab-db1", "sudo", "docker", "stop", container)
    assert stop.returncode == 0, stop.stderr
    stopped = time.monotonic()
    try:
        while not firing(lab, "ContainerNotRunning", **labels):
            assert time.monotonic() - stopped < bound, f"ContainerNotRunning did not fire within {bound} s"
            time.sleep(3)
        took = time.monotonic() - stopped
        print(f"ContainerNotRunning fired {took:.0f} s after the stop (bound {bound} s)")
        assert took >= CONTAINER_ALERT_FOR, "fired before its window: the `for:` is not applied"
    finally:
        start = on_host(lab, "lab-db1", "sudo", "docker", "start", container)
        assert start.returncode == 0, start.stderr
    deadline = time.monotonic() + 120
    while firing(lab, "ContainerNotRunning", **labels):
        assert time.monotonic() < deadline, "ContainerNotRunning still firing 2 min after the start"
        time.sleep(5)


@pytest.fixture(scope="module")
def user_traffic(lab):
    """Some user requests through the edge, and two scrapes after them, so the rate()
    panels have data (the probes' and scrapes' own requests are left out by the panels)."""
    for _ in range(30):
        assert https.request(lab, "GET", "/version").status == 200
        time.sleep(0.3)
    time.sleep(2 * SCRAPE_INTERVAL + 5)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: Path(p).stem)
def test_every_dashboard_query_runs_on_the_lab_prometheus(lab, path, user_traffic):
    """Each expression of the dashboard (Grafana variables made concrete) is accepted by
    Prometheus; the ones that return no series are listed, and most must return data."""
    board = dashboards.load(path)
    empty, errors = [], []
    exprs = dashboards.expressions(board)
    assert exprs, f"{path.name} has no queries"
    for title, expr in exprs:
        answer = prometheus(lab, "/api/v1/query", query=dashboards.concrete(expr))
        if answer.get("status") != "success":
            errors.append(f"{title}: {expr}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            empty.append(title)
    assert not errors, "\n".join(errors)
    print(f"{path.name}: {len(exprs)} queries, {len(empty)} without data: {empty}")
    assert len(empty) <= len(exprs) // 2, f"{path.name}: most queries return nothing: {empty}"


def test_container_logs_reach_the_monitoring_host_by_service_and_host(lab):
    """The app's JSON lines from lab-app1 are in the central journal on lab-edge1, found by
    service and host — through `keelson logs` and with journalctl's own fields."""
    deadline = time.monotonic() + 60
    while True:
        proc = runbooks.cli("logs", "app", "--host", "lab-app1", "-n", "500", inventory=LAB_INVENTORY, timeout=120)
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        if any(entry.get("msg") == "ready to serve" for entry in lines):
            break
        assert time.monotonic() < deadline, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        time.sleep(5)
    out = on_host(
        lab,
        "lab-edge1",
        "sudo",
        "journalctl",
        "-D",
        "/var/log/journal/remote",
        "-o",
        "json",
        "-n",
        "200",
        "COM_DOCKER_COMPOSE_SERVICE=postgres",
    )
    entries = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert entries, out.stderr
    assert {e.get("_HOSTNAME") for e in entries} == {"lab-db1"}
    assert {e.get("COM_DOCKER_COMPOSE_PROJECT") for e in entries} == {"keelson-db"}
    # An unknown service is refused before anything runs.
    proc = runbooks.cli("logs", "nosuchservice", inventory=LAB_INVENTORY, timeout=60)
    assert proc.returncode == 2 and "unknown service" in proc.stdout + proc.stderr
