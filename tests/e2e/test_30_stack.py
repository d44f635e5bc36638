"""The application stack on the lab after site.yml: HTTPS through the edge to
the app, PostgreSQL and Redis behind it, healthy containers, secrets kept
secret, the edge's headers and limits, and bad stack input refused before
any change.  Runs after test_10_site (first converge) on the same lab."""

from __future__ import annotations

import json
import ssl
import time
import uuid

import pytest

from tests.e2e.conftest import LAB_INVENTORY, assert_refused_before_any_change, lab_playbook
from tests.e2e.https import DOMAIN, plain_http, request
from tests.e2e.probe import on_host

DOCKER_HOSTS = ["lab-edge1", "lab-app1", "lab-app2", "lab-db1"]


@pytest.fixture(scope="module")
def stack(lab, first_converge):
    assert first_converge.returncode == 0, first_converge.output[-15000:]
    return lab


def test_a_record_is_written_to_postgres_and_read_back_through_the_cache(stack):
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    created = request(stack, "POST", "/api/items", {"name": name})
    assert created.status == 201, created.body
    item_id = created.json()["id"]
    first = request(stack, "GET", f"/api/items/{item_id}")
    second = request(stack, "GET", f"/api/items/{item_id}")
    assert first.status == 200 and first.json()["name"] == name
    assert first.headers["x-cache"] == "MISS"
    assert second.status == 200 and second.json()["name"] == name
    assert second.headers["x-cache"] == "HIT"
    # The row is really in PostgreSQL on the db host.
    rows = on_host(
        stack,
        "lab-db1",
        "sudo",
        "docker",
        "exec",
        "keelson-db-postgres-1",
        "psql",
        "-U",
        "postgres",
        "-d",
        "app",
        "-Atc",
        f"SELECT name FROM items WHERE id = {int(item_id)}",
    )
    assert rows.stdout.strip() == name, rows.stderr


def test_the_app_reports_ready_and_its_version(stack):
    ready = request(stack, "GET", "/readyz")
    version = request(stack, "GET", "/version")
    assert ready.status == 200, ready.body
    assert version.status == 200
    assert version.json()["version"] == "1.0.0"
    assert version.json()["slot"] == "blue"


def test_the_certificate_is_refused_without_the_lab_ca(stack):
    with pytest.raises(ssl.SSLCertVerificationError):
        request(stack, "GET", "/healthz", context=ssl.create_default_context())


def test_http_redirects_to_https(stack):
    resp = plain_http(stack, "/api/items/1")
    assert resp.status in (301, 302, 308)
    assert resp.headers["location"] == f"https://{DOMAIN}/api/items/1"


def test_responses_carry_hsts_and_the_security_headers(stack):
    headers = request(stack, "GET", "/healthz").headers
    assert "max-age=" in headers["strict-transport-security"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "referrer-policy" in headers
    assert "content-security-policy" in headers
    assert "server" not in headers


def test_a_body_over_the_limit_is_refused(stack):
    resp = request(stack, "POST", "/api/items", b"x" * (2 * 1024 * 1024))
    assert resp.status == 413


def test_every_container_is_healthy(stack):
    for host in DOCKER_HOSTS:
        result = on_host(stack, host, "sudo", "docker", "ps", "--format", "{{.Names}} {{.Status}}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert lines, f"{host}: no containers: {result.stderr}"
        # The exporters have no healthcheck (scratch upstream images); test_55 checks they answer.
        no_check = ("-postgres-exporter-", "-redis-exporter-")
        unhealthy = [
            line for line in lines if ("(" in line if any(n in line for n in no_check) else "(healthy)" not in line)
        ]
        assert not unhealthy, f"{host}: {unhealthy}"


def test_secrets_files_are_0400_and_never_in_the_play_output(stack, first_converge):
    result = on_host(
        stack,
        "lab-db1",
        "sudo",
        "sh",
        "-c",
        "stat -c '%a %n' /opt/keelson/*/secrets/*",
    )
    modes = dict(reversed(line.split(" ", 1)) for line in result.stdout.splitlines())
    assert modes and set(modes.values()) == {"400"}, result.stdout + result.stderr
    secrets_dir = LAB_INVENTORY / ".lab" / "secrets"
    values = [p.read_text().split()[0] for p in secrets_dir.iterdir()]
    assert len(values) >= 3
    for value in values:
        assert value not in first_converge.output


def test_the_rate_limit_answers_429_past_its_threshold(stack):
    statuses = []
    deadline = time.monotonic() + 20
    for _ in range(120):  # bounded: 120 requests, 20 s at most
        if time.monotonic() > deadline:
            break
        statuses.append(request(stack, "GET", "/healthz").status)
        if statuses[-1] == 429:
            break
    assert 429 in statuses, statuses[-10:]
    assert statuses[0] == 200


def _stack_only(summaries, name, extra):
    return lab_playbook(summaries, name, "playbooks/stack.yml", "-e", json.dumps(extra))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"postgres_superuser_password": ""}, "postgres_superuser_password"),
        ({"app_image": "Keelson Lab/app:v1"}, "app_image"),
        ({"app_slots": [{"name": "blue", "port": 8001}, {"name": "green", "port": 8001}]}, "port 8001 is claimed"),
        ({"keelson_app_group": "nowhere"}, "keelson_app_group"),
    ],
    ids=["missing-secret", "bad-image", "port-clash", "no-host-group"],
)
def test_bad_stack_input_fails_before_any_change(stack, summaries, extra, message):
    assert_refused_before_any_change(_stack_only(summaries, f"bad-{message[:12]}", extra), message)
