"""Behaviour of role docker on a converged host: the daemon runs as configured, runs
containers and Compose v2 projects, sends their logs to the journal with the Compose
labels as fields, writes per-container metrics for node-exporter, and the docker group
holds whom it should.

No registry is reachable: a tiny image is made inside the host from a few of its own
binaries (``docker import``). Everything the tests start is removed again.
"""

import ipaddress
import json
import re
import time
import uuid

import pytest

IMAGE = "molecule/tiny:1"
POOL = ipaddress.ip_network("10.213.0.0/16")  # converge.yml: docker_address_pools
PROJECT = "molecule-compose"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # the role's default (node_exporter_textfile_dir's)
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
    # journald (the default): tag and labels only; max-size/max-file are refused by this driver.
    assert conf["log-driver"] == "journald"
    assert conf["log-opts"] == {
        "tag": "{{.Name}}",
        "labels": "com.docker.compose.project,com.docker.compose.service,io.keelson.slot",
    }
    assert conf["live-restore"] is True
    assert conf["no-new-privileges"] is True
    assert conf["userland-proxy"] is False
    assert conf["default-address-pools"] == [{"base": "10.213.0.0/16", "size": 24}]
    assert "iptables" not in conf and "icc" not in conf
    assert host.run("dockerd --validate --config-file /etc/docker/daemon.json").rc == 0


def test_daemon_json_values_are_effective(host):
    assert info(host, ".LoggingDriver") == "journald"
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


def test_containers_get_no_new_privileges(host, image):
    status = host.check_output(f"docker run --rm {image} /usr/bin/cat /proc/self/status")
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status


def test_container_logs_go_to_the_journal_with_compose_fields(host, image):
    # What the CLI and the central store rely on: CONTAINER_NAME, the tag, and the Compose
    # labels as fields (COM_DOCKER_COMPOSE_SERVICE), and "docker logs" still works.
    name = "molecule-logcheck"
    marker = f"journald-line-{uuid.uuid4().hex}"
    host.run(f"docker rm -f {name}")
    labels = "--label com.docker.compose.project=molecule --label com.docker.compose.service=web"
    host.check_output(
        f"docker run -d --name {name} {labels} --label io.keelson.slot=blue {image} /usr/bin/echo {marker}"
    )
    try:
        host.run(f"docker wait {name}")
        log_config = json.loads(
            host.check_output(f"docker inspect --format '{{{{json .HostConfig.LogConfig}}}}' {name}")
        )
        assert log_config["Type"] == "journald"
        assert host.check_output(f"docker logs {name}") == marker
        host.run("journalctl --sync")
        query = f"CONTAINER_NAME={name} COM_DOCKER_COMPOSE_PROJECT=molecule COM_DOCKER_COMPOSE_SERVICE=web"
        entry = json.loads(host.check_output(f"journalctl -n 1 -o json --no-pager {query} IO_KEELSON_SLOT=blue"))
        assert entry["MESSAGE"] == marker
        assert entry["SYSLOG_IDENTIFIER"] == name
        assert (
            host.run(f"journalctl -o cat --no-pager COM_DOCKER_COMPOSE_SERVICE=other CONTAINER_NAME={name}").stdout
            == ""
        )
    finally:
        host.run(f"docker rm -f {name}")


# --- container metrics ------------------------------------------------------------------


def read_metrics(host):
    return host.file(f"{TEXTFILE_DIR}/keelson_containers.prom").content_string


def wait_for_metric(host, line, present=True, timeout=45):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if host.file(f"{TEXTFILE_DIR}/keelson_containers.prom").exists:
            text = read_metrics(host)
            if (line in text) == present:
                return text
        time.sleep(1)
    raise AssertionError(f"{line!r} {'not ' if present else ''}in the textfile after {timeout}s:\n{text}")


def test_metrics_timer_runs_and_the_textfile_dir_was_made(host):
    # No node_exporter role in this scenario: the docker role made the directory itself.
    directory = host.file(TEXTFILE_DIR)
    assert directory.is_directory and (directory.user, directory.mode) == ("root", 0o755)
    timer = host.service("keelson-container-metrics.timer")
    assert timer.is_enabled and timer.is_running
    assert host.file("/usr/local/lib/keelson/container-metrics").mode == 0o755


def test_metrics_follow_a_container_through_its_life(host, image):
    name = "molecule-metrics"
    labels = 'container="molecule-metrics",project="molecule",service="web",slot="green"'
    host.run(f"docker rm -f {name}")
    host.check_output(
        f"docker run -d --name {name} --label com.docker.compose.project=molecule "
        f"--label com.docker.compose.service=web --label io.keelson.slot=green {image} /usr/bin/sleep 300"
    )
    try:
        text = wait_for_metric(host, f"keelson_container_running{{{labels}}} 1")
        assert f"keelson_container_restart_count{{{labels}}} 0" in text
        assert f"keelson_container_oom_killed{{{labels}}} 0" in text
        assert f'keelson_container_healthy{{container="{name}"' not in text  # no healthcheck
        assert "# TYPE keelson_container_running gauge" in text
        stamp = float(re.search(r"^keelson_containers_last_update_timestamp_seconds (\S+)$", text, re.M).group(1))
        assert abs(float(host.check_output("date +%s")) - stamp) < 60
        host.check_output(f"docker stop -t 1 {name}")
        wait_for_metric(host, f"keelson_container_running{{{labels}}} 0")
    finally:
        host.run(f"docker rm -f {name}")
    wait_for_metric(host, f'container="{name}"', present=False)
    # Written by rename: no temporary files left behind.
    assert host.check_output(f"ls -A {TEXTFILE_DIR}") == "keelson_containers.prom"


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
