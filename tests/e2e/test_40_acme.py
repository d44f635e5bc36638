"""The edge in ACME mode against the lab's pebble server: a certificate is
issued over http-01 through HAProxy, certbot's forced renewal installs a new
one without a restart, and the edge goes back to the lab's internal CA."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time

import docker
import pytest

from keelson.lab import fleet as lab_fleet
from tests.e2e.conftest import lab_playbook
from tests.e2e.https import CA_CERT, DOMAIN, edge_address, tls_context
from tests.e2e.probe import on_host

PEBBLE_ADDRESS = "172.30.77.5"  # in the lab subnet, outside the hosts' addresses
PEBBLE_NAME = "pebble"  # the name pebble's own HTTPS certificate is for


@pytest.fixture(scope="module")
def pebble(lab, first_converge, tmp_path_factory):
    """Debian's pebble in a container on the lab network, labelled so `lab down` removes it."""
    client = docker.from_env()
    name = f"{lab.name}-pebble"
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True)
    container = client.containers.create(
        "keelson-lab/pebble:lab",
        name=name,
        labels={lab_fleet.LABEL_LAB: lab.name},
        environment={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        extra_hosts={DOMAIN: edge_address(lab)},  # http-01 validation goes to the edge
        network=lab.network_name,
    )
    client.networks.get(lab.network_name).disconnect(container)
    client.networks.get(lab.network_name).connect(container, ipv4_address=PEBBLE_ADDRESS)
    container.start()
    # The edge reaches pebble by the name its HTTPS certificate carries.
    hosts_line = f"{PEBBLE_ADDRESS} {PEBBLE_NAME}"
    on_host(
        lab, "lab-edge1", "sudo", "sh", "-c", f"grep -qx '{hosts_line}' /etc/hosts || echo '{hosts_line}' >> /etc/hosts"
    )
    # Pebble forgets everything when it restarts: certificates and the account certbot made
    # with an earlier pebble are void.
    on_host(
        lab,
        "lab-edge1",
        "sudo",
        "sh",
        "-c",
        f"certbot delete -n --cert-name {DOMAIN} 2>/dev/null; rm -rf /etc/letsencrypt/accounts/{PEBBLE_NAME}:14000",
    )
    minica = container.exec_run(["cat", "/test/certs/pebble.minica.pem"]).output.decode()
    assert "BEGIN CERTIFICATE" in minica
    ca_file = tmp_path_factory.mktemp("pebble") / "minica.pem"
    ca_file.write_text(minica)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((PEBBLE_ADDRESS, 14000), timeout=2).close()
            break
        except OSError:
            time.sleep(1)
    yield {"minica": minica, "minica_file": ca_file, "container": container}
    container.remove(force=True)


def _acme_root(pebble) -> str:
    """The root pebble issues under (it is new each time pebble starts)."""
    context = ssl.create_default_context(cafile=str(pebble["minica_file"]))
    context.check_hostname = False  # the management port's certificate is for "pebble"/localhost
    with (
        socket.create_connection((PEBBLE_ADDRESS, 15000), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=PEBBLE_NAME) as tls,
    ):
        tls.sendall(b"GET /roots/0 HTTP/1.0\r\nHost: pebble\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def _served_certificate(lab, root_file) -> dict:
    context = tls_context(root_file)
    with (
        socket.create_connection((edge_address(lab), 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        return tls.getpeercert()


def _edge(summaries, name, extra):
    return lab_playbook(summaries, name, "playbooks/stack.yml", "--tags", "edge", "-e", json.dumps(extra))


def test_acme_issues_and_a_forced_renewal_replaces_the_certificate(lab, pebble, summaries, tmp_path):
    acme = {
        "edge_tls_mode": "acme",
        "edge_acme_email": "ops@keelson.test",
        "edge_acme_directory": f"https://{PEBBLE_NAME}:14000/dir",
        "edge_acme_ca_bundle": pebble["minica"],
    }
    try:
        run = _edge(summaries, "acme-issue", acme)
        assert run.returncode == 0, run.output[-8000:]
        root = tmp_path / "pebble-root.pem"
        root.write_text(_acme_root(pebble))
        first = _served_certificate(lab, root)  # verified against pebble's root, for the lab's name
        assert ("DNS", DOMAIN) in first["subjectAltName"]

        # What certbot.timer runs, forced: certbot.service's environment (the role's drop-in
        # points requests at pebble's CA) plus --force-renewal.
        env = on_host(lab, "lab-edge1", "systemctl", "show", "certbot.service", "-p", "Environment").stdout
        assert "REQUESTS_CA_BUNDLE=/etc/keelson/edge/acme-ca-bundle.pem" in env, env
        renew = on_host(
            lab,
            "lab-edge1",
            "sudo",
            "env",
            env.strip().removeprefix("Environment="),
            "certbot",
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            timeout=300,
        )
        assert renew.returncode == 0, renew.stdout + renew.stderr
        deadline = time.monotonic() + 30
        second = first
        while second["serialNumber"] == first["serialNumber"] and time.monotonic() < deadline:
            time.sleep(1)
            second = _served_certificate(lab, root)
        assert second["serialNumber"] != first["serialNumber"], "the renewed certificate is served without a restart"

        again = _edge(summaries, "acme-rerun", acme)
        assert again.returncode == 0 and again.changed_tasks() == [], again.changed_tasks()
    finally:
        back = _edge(summaries, "acme-back-to-internal", {})
        assert back.returncode == 0, back.output[-8000:]
    # Back on the lab CA.
    assert ("DNS", DOMAIN) in _served_certificate(lab, CA_CERT)["subjectAltName"]
