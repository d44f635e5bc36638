"""Behaviour of role docker on a converged host: the daemon runs as configured, runs
containers and Compose v2 projects, and the docker group holds whom it should.

No registry is reachable: a tiny image is made inside the host from a few of its own
binaries (``docker import``). Everything the tests start is removed again.
"""

import ipaddress
import json
import re

import pytest

IMAGE = "molecule/tiny:1"
POOL = ipaddress.ip_network("10.213.0.0/16")  # converge.yml: docker_address_pools
PROJECT = "molecule-compose"
COMPOSE_DIR = "/root/molecule-compose"
COMPOSE = f"""\
services:
  sleeper:
    image: {IMAGE}
    pull_policy: never
    command: ["/usr/bin/sleep", "300"]
    ports: ["18080:8080"]
"""


def info(host, field):
    return host.check_output(f"docker info --format '{{{{{field}}}}}'")


@pytest.fixture(scope="module")
def image(host):
    """A few of the host's own binaries and their libraries as an image (no registry)."""
    files = "usr/bin/sleep usr/bin/echo usr/bin/cat"
    libs = host.check_output(f"cd / && ldd {files} | grep -o '/[^ ]*\\.so[^ ]*' | sort -u | sed 's|^/||'").split()
    host.check_output(f"cd / && tar -ch {files} {' '.join(libs)} | docker import - {IMAGE}")
    yield IMAGE
    host.run(f"docker image rm -f {IMAGE}")


# --- the daemon --------------------------------------------------------------------


def test_docker_enabled_and_running(host):
    svc = host.service("docker")
    assert svc.is_enabled
    assert svc.is_running


def test_daemon_json_is_the_role_s_and_valid(host):
    conf = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert conf["log-driver"] == "local"
    assert conf["log-opts"] == {"max-size": "5m", "max-file": "3"}
    assert conf["live-restore"] is True
    assert conf["no-new-privileges"] is True
    assert conf["userland-proxy"] is False
    assert conf["default-address-pools"] == [{"base": "10.213.0.0/16", "size": 24}]
    assert "iptables" not in conf and "icc" not in conf
    assert host.run("dockerd --validate --config-file /etc/docker/daemon.json").rc == 0


def test_daemon_json_values_are_effective(host):
    assert info(host, ".LoggingDriver") == "local"
    assert info(host, ".LiveRestoreEnabled") == "true"
    assert "name=no-new-privileges" in info(host, ".SecurityOptions")
    assert info(host, ".Driver") == "overlay2"  # the /var/lib/docker volume of molecule.yml


def test_compose_v2_is_new_enough(host):
    version = host.check_output("docker compose version --short")
    major, minor = (int(x) for x in re.match(r"v?(\d+)\.(\d+)", version).groups())
    assert (major, minor) >= (2, 18), version


def test_python_docker_sdk_for_ansible_modules(host):
    assert host.run("python3 -c 'import docker'").rc == 0


# --- containers ----------------------------------------------------------------------


def test_a_container_runs(host, image):
    assert host.check_output(f"docker run --rm {image} /usr/bin/echo hello-from-molecule") == "hello-from-molecule"


def test_containers_get_no_new_privileges_and_the_log_limits(host, image):
    status = host.check_output(f"docker run --rm {image} /usr/bin/cat /proc/self/status")
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    host.run("docker rm -f molecule-logcheck")
    host.check_output(f"docker run -d --name molecule-logcheck {image} /usr/bin/sleep 60")
    try:
        inspect = "docker inspect --format '{{json .HostConfig.LogConfig}}' molecule-logcheck"
        log_config = json.loads(host.check_output(inspect))
        assert log_config == {"Type": "local", "Config": {"max-file": "3", "max-size": "5m"}}
    finally:
        host.run("docker rm -f molecule-logcheck")


@pytest.fixture
def compose_project(host, image):
    host.check_output(f"mkdir -p {COMPOSE_DIR}")
    host.check_output(f"cat > {COMPOSE_DIR}/compose.yaml <<'EOF'\n{COMPOSE}EOF")
    yield PROJECT
    host.run(f"cd {COMPOSE_DIR} && docker compose -p {PROJECT} down --timeout 1")
    host.run(f"rm -rf {COMPOSE_DIR}")


def test_compose_v2_project_runs_on_a_pool_network_without_docker_proxy(host, compose_project):
    up = host.run(f"cd {COMPOSE_DIR} && timeout 60 docker compose -p {compose_project} up -d --wait")
    assert up.rc == 0, up.stdout + up.stderr
    state = host.check_output(f"docker compose -p {compose_project} ps --format '{{{{.State}}}}'")
    assert state == "running"
    subnet = host.check_output(
        f"docker network inspect {compose_project}_default --format '{{{{(index .IPAM.Config 0).Subnet}}}}'"
    )
    assert ipaddress.ip_network(subnet).subnet_of(POOL), subnet
    assert ipaddress.ip_network(subnet).prefixlen == 24
    # A published port, but no docker-proxy process: userland-proxy is off, iptables does it.
    assert host.run("pgrep -x docker-proxy").rc == 1
    assert "18080" in host.check_output("iptables-save -t nat")


# --- the docker group ------------------------------------------------------------------


def test_docker_group_holds_the_listed_users_and_no_one_the_role_dropped(host):
    members = set(filter(None, host.check_output("getent group docker").split(":")[3].split(",")))
    # alice and bob: docker_users. carol: added by the role before, no longer listed -> removed.
    # dave: added by someone else; kept (docker_users_exclusive is false), with a warning.
    assert members == {"alice", "bob", "dave"}
    record = host.file("/etc/docker/keelson-docker-users").content_string
    assert [line for line in record.splitlines() if line and not line.startswith("#")] == ["alice", "bob"]


def test_listed_user_can_talk_to_docker(host, image):
    assert host.run("su - alice -c 'docker version --format {{.Server.Version}}'").rc == 0
    assert host.run("su - carol -c 'docker version --format {{.Server.Version}}'").rc != 0
