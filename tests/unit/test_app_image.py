"""The reference app's image (app/): built for real, run the way compose runs it, probed from inside.

Needs a Docker engine (skipped without one, a failure in CI); the lab's Debian 13 base image is built when missing.
Images are tagged by a hash of their build context, base image and build args, so they are built once and
reused until app/ changes.  No PostgreSQL or Redis here: the container runs without a network, which
proves the "not ready" paths; the lab's end-to-end tests cover the ready ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from keelson.lab import images
from tests import lab_images
from tests.helpers import ROOT

APP_DIR = ROOT / "app"
BASE = images.host_image("13").alias
TEST_REPO = "keelson-test/app"
NAME_PREFIX = os.environ.get("KEELSON_TEST_CONTAINER_PREFIX", "keelson-apptest-")
VARIANTS = {"v1": ("1.0.0", "0001"), "v2": ("2.0.0", "0002"), "broken": ("3.0.0-broken", "0001")}
HARDENED: dict[str, Any] = {  # how the compose stack runs the app
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=16m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "network_mode": "none",
}
# Runs inside the container: GET each path on the app, print status, X-Cache and body as JSON.
PROBE = """
import json, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = {}
for path in sys.argv[1:]:
    try:
        r = opener.open("http://127.0.0.1:8000" + path, timeout=10)
    except urllib.error.HTTPError as e:
        r = e
    out[path] = {"status": r.status, "body": r.read().decode()}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    assert lab_images.host_image("13") == BASE
    return lab_images.engine()


def build(client: docker.DockerClient, context: Path, name: str, buildargs: dict[str, str]) -> str:
    """Build ``context`` unless an image of the same content exists; drop older builds of ``name``."""
    base_id = client.images.get(buildargs.get("BASE") or buildargs["APP_IMAGE"]).id
    tag = f"{TEST_REPO}:{name}-{images.context_hash(context, base_id, buildargs)}"
    if not images.image_exists(client, tag):
        client.images.build(path=str(context), tag=tag, buildargs=buildargs, pull=False, rm=True, forcerm=True)
    for image in client.images.list(name=TEST_REPO):
        for old in image.tags:
            if old.rpartition("-")[0] == f"{TEST_REPO}:{name}" and old != tag:
                with contextlib.suppress(docker.errors.APIError):  # still used by a container
                    client.images.remove(old)
    return tag


@pytest.fixture(scope="session")
def app_images(client: docker.DockerClient) -> dict[str, str]:
    return {v: build(client, APP_DIR, v, {"BASE": BASE, "APP_VARIANT": v}) for v in VARIANTS}


@pytest.fixture(scope="session")
def run(client: docker.DockerClient) -> Iterator[Any]:
    started: list[Container] = []

    def start(image: str, command: list[str] | None = None, **kwargs: Any) -> Container:
        name = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        container = client.containers.run(image, command, name=name, detach=True, **HARDENED, **kwargs)
        started.append(container)
        return container

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def probe(container: Container, *paths: str) -> dict[str, dict[str, Any]]:
    code, output = container.exec_run(["python3", "-c", PROBE, *paths])
    assert code == 0, output.decode()
    return json.loads(output)


def wait_for_healthz(container: Container, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        assert container.status == "running", container.logs().decode()
        code, _ = container.exec_run(["python3", "-c", PROBE, "/healthz"])
        if code == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"/healthz never answered:\n{container.logs().decode()}")


def test_the_apps_own_tests_pass_inside_the_image(client, app_images, run):
    """app/tests/test_app.py, with starlette's TestClient (python3-httpx added on top of the v2 image)."""
    test_image = build(client, APP_DIR / "tests", "tests-v2", {"APP_IMAGE": app_images["v2"]})
    container = run(test_image, user="10001:10001")
    result = container.wait(timeout=120)
    output = container.logs().decode()
    assert result["StatusCode"] == 0, output
    assert "skipped" not in output, output
    assert "\nOK" in output, output


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_carries_its_version_and_migrations(client, app_images, run, variant):
    version, head = VARIANTS[variant]
    image = client.images.get(app_images[variant])
    assert image.labels["org.opencontainers.image.version"] == version
    assert image.attrs["Config"]["User"] == "10001:10001"
    container = run(app_images[variant], ["keelson-app", "info"])
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert json.loads(container.logs()) == {"variant": variant, "version": version, "schema_head": head}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hardened_container_serves_without_its_dependencies(client, app_images, run, variant):
    """Read-only root, tmpfs /tmp, uid 10001, no capabilities, no network: live, not ready, and honest about it."""
    version, _ = VARIANTS[variant]
    container = run(app_images[variant], environment={"APP_RELEASE": "r1", "APP_SLOT": "blue"})
    wait_for_healthz(container)
    answers = probe(container, "/healthz", "/readyz", "/version", "/api/items/1", "/metrics")

    assert answers["/healthz"]["status"] == 200
    assert answers["/readyz"]["status"] == 503
    assert json.loads(answers["/version"]["body"]) == {
        "version": version,
        "release": "r1",
        "slot": "blue",
        "schema": None,
    }
    assert answers["/api/items/1"]["status"] == 503  # cache miss, then no database: a clean 503, not a 500
    metrics = answers["/metrics"]["body"]
    assert 'keelson_http_requests_total{method="GET",path="/readyz",status="503"} 1.0' in metrics
    assert "keelson_cache_misses_total 1.0" in metrics
    assert container.exec_run(["keelson-app", "healthcheck"]).exit_code == 1

    container.stop(timeout=10)  # SIGTERM: uvicorn drains and exits 0
    assert container.wait(timeout=15)["StatusCode"] == 0
    lines = [json.loads(line) for line in container.logs(stderr=False).decode().splitlines()]
    requests = [entry for entry in lines if entry["msg"] == "request"]
    assert {"ts", "level", "method", "path", "status", "duration_ms"} <= set(requests[0])
    assert any(entry["msg"] == "Application shutdown complete." for entry in lines)
