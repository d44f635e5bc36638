"""Run every Molecule scenario (check, converge, idempotence, verify)."""

from __future__ import annotations

import os
import subprocess

import docker
import pytest

from keelson.lab import images, services
from tests.helpers import BIN, ROOT, tool_env

pytestmark = pytest.mark.molecule

SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


@pytest.fixture(scope="session")
def host_images():
    """Molecule uses the lab's host images by their stable alias."""
    client = docker.from_env()
    for release in images.HOST_IMAGES:
        images.build_host_image(client, images.host_image(release))
    # The stack scenario delivers the lab's service images by archive.
    services.build_all(docker.from_env(timeout=1800))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, host_images):
    env = tool_env()
    env.pop("ANSIBLE_CONFIG", None)  # Molecule writes its own; ours is read via MOLECULE_PROJECT_DIRECTORY
    env["MOLECULE_NO_LOG"] = "false"
    proc = subprocess.run(
        [str(BIN / "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=int(os.environ.get("KEELSON_MOLECULE_TIMEOUT", "1500")),
        check=False,
    )
    assert proc.returncode == 0, f"molecule test -s {scenario} failed:\n{proc.stdout[-12000:]}\n{proc.stderr[-6000:]}"
