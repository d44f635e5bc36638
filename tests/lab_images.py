"""The lab images that unit tests run things in, built when they are missing.

A test that needs an image asks for it here instead of skipping when it is absent:
the image is built the way `keelson lab images` builds it (cached by a hash of its
definition, one build at a time on the machine, so the end-to-end stream building
the same images beside us only makes us wait). What cannot be provided (no Docker
engine answers) is a skip on a laptop and a failure when ``CI`` is set: see
``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest

from keelson.lab import images, services
from tests.helpers import ROOT

# Where the tests keep a Docker CLI configuration of their own (the compose v2 plugin).
DOCKER_CLI_DIR = ROOT / ".cache" / "docker-cli"


def _log(message: str) -> None:
    print(f"lab image: {message}")


def engine() -> docker.DockerClient:
    """A client of a Docker engine that answers (skip without one; conftest fails that skip in CI)."""
    try:
        client = docker.from_env(timeout=1800)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc}); scripts/prereqs.sh starts one")
    return client


def host_image(release: str = "13") -> str:
    """The lab's Debian host image for ``release``, built if missing; returns its stable alias."""
    image = images.host_image(release)
    images.build_host_image(engine(), image, log=_log)
    return image.alias


def service_image(name: str) -> str:
    """A lab service image (``prometheus``, ``postgres:16``…), built if missing; returns its alias tag."""
    image = services.service_image(name)
    services.build_service(engine(), image, log=_log)
    return image.alias_tag


def promtool(*readable: Path) -> list[str]:
    """The promtool command line: the binary on PATH, else the one in the lab's Prometheus image.

    In the image it runs with no network and a read-only root, as the calling user (so it
    reads exactly what the caller can: pytest's 0700 temporary directories included), with
    each path of ``readable`` mounted read-only at the same place; stdin is passed through.
    """
    local = shutil.which("promtool")
    if local:
        return [local]
    image = service_image("prometheus")
    mounts = [f"--volume={path}:{path}:ro" for path in dict.fromkeys(readable)]
    return [
        "docker",
        "run",
        "--rm",
        "-i",
        "--network=none",
        "--read-only",
        "--tmpfs=/tmp",  # promtool test rules writes a scratch TSDB there
        f"--user={os.getuid()}:{os.getgid()}",
        *mounts,
        "--entrypoint=promtool",
        image,
    ]


def compose_v2_env() -> dict[str, str]:
    """Environment entries that give the docker CLI a compose v2 plugin.

    The engine's own `docker compose` is used when there is one. Debian 12, the
    controller's system, packages only compose v1, so otherwise the plugin is taken from
    Debian 13's docker-compose package (the one the lab's hosts run), installed in a
    throwaway container of the lab's Debian 13 image, and kept under ``.cache/docker-cli``
    as a CLI plugin; ``DOCKER_CONFIG`` points the CLI there.
    """
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return {}
    plugin = DOCKER_CLI_DIR / "cli-plugins" / "docker-compose"
    if not plugin.exists():
        base = host_image("13")
        plugin.parent.mkdir(parents=True, exist_ok=True)
        script = (
            "set -e; apt-get update -qq; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; "
            "cp /usr/libexec/docker/cli-plugins/docker-compose /out/docker-compose.new"
        )
        with images.build_lock():
            proc = subprocess.run(
                ["docker", "run", "--rm", f"--volume={plugin.parent}:/out", "--entrypoint=/bin/sh", base, "-c", script],
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
            )
        assert proc.returncode == 0, f"installing Debian 13's docker-compose failed:\n{proc.stdout}\n{proc.stderr}"
        (plugin.parent / "docker-compose.new").rename(plugin)
    env = {"DOCKER_CONFIG": str(DOCKER_CLI_DIR)}
    check = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False, env={**os.environ, **env}
    )
    assert check.returncode == 0, f"the compose plugin in {plugin} does not run here: {check.stderr}"
    return env
