"""The whole stack on one server, checked from inside it: every container healthy, the
edge serves the app over verified TLS, the app reaches PostgreSQL and Redis, secrets are
private, Prometheus scrapes the host it runs on.

The edge's certificate is checked against the internal CA converge made in the scenario's
ephemeral directory (never with -k): its certificate is copied into the host.
"""

import json
import os
import re
import time
import uuid

import pytest

DOMAIN = "stack.keelson.test"  # molecule.yml: edge_domains
CA_ON_HOST = "/root/molecule-stack-ca.crt"
EXPECTED = {
    "keelson-db": {"postgres", "postgres-exporter"},
    "keelson-redis": {"redis", "redis-exporter"},
    "keelson-app-blue": {"app"},
    "keelson-edge": {"haproxy"},
    "keelson-monitoring": {"prometheus", "alertmanager"},
}


@pytest.fixture(scope="module")
def ca(host):
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ca", "ca.crt")
    with open(path, encoding="ascii") as f:
        pem = f.read()
    host.check_output(f"cat > {CA_ON_HOST} <<'EOF'\n{pem}EOF")
    yield CA_ON_HOST
    host.run(f"rm -f {CA_ON_HOST}")


def host_address(host):
    """The host's address on Docker's default network (converge: keelson_address)."""
    out = host.check_output("ip -4 -o addr show dev eth0")
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def https(host, ca, method, path, body=None):
    """One request to the edge on 127.0.0.1:443 with SNI and Host DOMAIN, verified against the CA.
    Returns (status, headers as a lower-case dict, body)."""
    data = f"-H 'Content-Type: application/json' --data '{json.dumps(body)}'" if body is not None else ""
    out = host.check_output(
        f"curl -sS --max-time 10 --cacert {ca} --resolve {DOMAIN}:443:127.0.0.1 -X {method} {data} "
        f"-D - https://{DOMAIN}{path}"
    )
    head, _, payload = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, payload


# --- containers ------------------------------------------------------------------------


# Exporters have no healthcheck (upstream redis_exporter is a scratch image: nothing to
# run one with); Prometheus's `up` and the test below say whether they answer.
NO_HEALTHCHECK = {"postgres-exporter", "redis-exporter"}


def test_every_container_runs_and_is_healthy(host):
    out = host.check_output(
        'docker ps -a --format \'{{.Label "com.docker.compose.project"}} {{.Label "com.docker.compose.service"}} '
        "{{.State}} {{.Status}}'"
    )
    seen = {}
    for line in out.splitlines():
        project, service, state, status = line.split(" ", 3)
        assert state == "running", line
        assert ("(" not in status) if service in NO_HEALTHCHECK else ("(healthy)" in status), line
        seen.setdefault(project, set()).add(service)
    assert seen == EXPECTED


@pytest.mark.parametrize(("port", "metric"), [(9187, "pg_up 1"), (9121, "redis_up 1")])
def test_the_exporters_report_their_server_up(host, port, metric):
    out = host.check_output(f"curl -sS --max-time 10 http://127.0.0.1:{port}/metrics")
    assert metric in out.splitlines(), out[-2000:]


# --- the edge --------------------------------------------------------------------------


def test_https_verified_against_the_internal_ca_serves_the_version(host, ca):
    status, headers, body = https(host, ca, "GET", "/version")
    assert status == 200
    version = json.loads(body)
    assert version["version"] == "1.0.0"
    assert version["slot"] == "blue"


def test_hsts_header_is_set(host, ca):
    _, headers, _ = https(host, ca, "GET", "/version")
    hsts = headers.get("strict-transport-security", "")
    assert re.search(r"max-age=\d+", hsts), headers
    assert "includeSubDomains" in hsts


def test_http_redirects_to_https(host):
    out = host.check_output(
        f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}} %{{redirect_url}}' -H 'Host: {DOMAIN}' "
        "http://127.0.0.1/version"
    )
    code, location = out.split(" ", 1)
    assert code in {"301", "302", "307", "308"}, out
    assert location == f"https://{DOMAIN}/version", out


def test_items_are_stored_and_then_served_from_the_cache(host, ca):
    name = f"molecule-{uuid.uuid4().hex[:8]}"
    status, _, body = https(host, ca, "POST", "/api/items", {"name": name})
    assert status == 201, body
    item = json.loads(body)
    assert item["name"] == name
    status, first, body = https(host, ca, "GET", f"/api/items/{item['id']}")
    assert status == 200 and json.loads(body)["name"] == name
    assert first.get("x-cache") == "MISS", first
    status, second, _ = https(host, ca, "GET", f"/api/items/{item['id']}")
    assert status == 200
    assert second.get("x-cache") == "HIT", second


# --- the app's backends ----------------------------------------------------------------


def test_postgres_reachable_from_the_app_container(host):
    # The app connects to keelson_address:5432 (this host's address): from its own
    # network, through the port PostgreSQL publishes on the host.
    probe = (
        "import os, socket; "
        "socket.create_connection((os.environ['APP_DB_HOST'], int(os.environ['APP_DB_PORT'])), 5).close(); "
        "print(os.environ['APP_DB_HOST'])"
    )
    out = host.check_output(f'docker exec keelson-app-blue-app-1 python3 -c "{probe}"')
    assert out == host_address(host)
    ready = host.run(
        'docker exec keelson-app-blue-app-1 python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:8000/readyz', timeout=5).status)\""
    )
    assert ready.rc == 0 and ready.stdout.strip() == "200", ready.stdout + ready.stderr


# --- secrets ---------------------------------------------------------------------------


def test_secrets_are_files_of_mode_0400(host):
    files = host.check_output("find /opt/keelson/*/secrets -mindepth 1").splitlines()
    assert files, "no secrets found"
    for path in files:
        f = host.file(path)
        assert f.is_file, path
        assert f.mode == 0o400, f"{path}: {oct(f.mode)}"


# --- monitoring ------------------------------------------------------------------------


def test_prometheus_scrapes_the_node_exporter_of_its_own_host(host):
    deadline = time.monotonic() + 60
    while True:
        targets = json.loads(host.check_output("curl -fsS --max-time 5 http://127.0.0.1:9090/api/v1/targets"))
        node = [t for t in targets["data"]["activeTargets"] if t["labels"].get("job") == "node"]
        if node and all(t["health"] == "up" for t in node) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert len(node) == 1, node
    assert node[0]["health"] == "up", node[0]
    assert node[0]["labels"]["host"] == "stack-deb13"
    assert node[0]["scrapeUrl"] == f"http://{host_address(host)}:9100/metrics"


# --- backups (role backup, local repository only) ---------------------------------------


def test_backup_timers_are_enabled_and_scheduled(host):
    for job in ("backup", "wal", "prune", "check", "restore-test"):
        timer = host.service(f"keelson-backup-{job}.timer")
        assert timer.is_enabled, job
        assert timer.is_running, job
    persistent = host.check_output("systemctl show -p Persistent --value keelson-backup-backup.timer")
    assert persistent == "yes"


def test_repository_password_is_private(host):
    f = host.file("/etc/keelson/backup/local.pass")
    assert f.user == "root"
    assert f.mode == 0o400


def test_a_backup_then_a_restore_test_succeed_and_are_exported(host):
    # The items test above wrote rows; the backup dumps them, the restore test
    # restores the dump into a scratch PostgreSQL and checks the canary.
    host.check_output("systemctl start keelson-backup-backup.service")
    host.check_output("systemctl start keelson-backup-restore-test.service")
    snaps = json.loads(host.check_output("keelson-backup snapshots"))
    kinds = {t for s in snaps for t in s["tags"] if t.startswith("kind:")}
    assert {"kind:pgdump", "kind:basebackup", "kind:files"} <= kinds
    assert all("complete" in s["tags"] for s in snaps)
    metrics = host.file("/var/lib/prometheus/node-exporter/keelson_backup_restore_test.prom").content_string
    assert 'keelson_backup_last_run_success{task="restore_test",repository="local"} 1' in metrics
    # No scratch container is left behind.
    assert host.check_output("docker ps -aq --filter label=io.keelson.restore-test=1") == ""
    # node-exporter serves the results (Prometheus scrapes it).
    served = host.check_output("curl -sS --max-time 5 http://127.0.0.1:9100/metrics")
    assert 'keelson_backup_last_run_success{repository="local",task="backup"} 1' in served
