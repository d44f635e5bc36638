"""Hardening tried from the outside, on the converged lab: port probes from other
lab hosts, refused logins, ssh-audit, fail2ban bans that really drop traffic,
a firewall change that cuts SSH and rolls itself back, and a container's
published port that obeys the same policy.

Runs after test_10_site.py (the same lab, converged once)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keelson.lab import fleet as lab_fleet
from tests.e2e.conftest import DEPLOY_USER, assert_refused_before_any_change, lab_playbook
from tests.e2e.probe import on_host, probe

# (source, target, port, expected) for the lab inventory: lb=edge1 (also
# monitoring), app=app1+app2, db=db1, backup=backup1.  "allowed" means the
# firewall let the SYN through (something answered, or nothing listens and
# the kernel refused); "filtered" means it was dropped.
MATRIX = [
    ("lab-app1", "lab-db1", 5432, "allowed"),  # postgres: from app
    ("lab-backup1", "lab-db1", 5432, "filtered"),  # ... not from backup
    ("lab-edge1", "lab-db1", 6379, "filtered"),  # redis: not from lb
    ("lab-edge1", "lab-app2", 8002, "allowed"),  # app slots: from lb (and monitoring)
    ("lab-db1", "lab-app2", 8002, "filtered"),  # ... not from db
    ("lab-app1", "lab-edge1", 443, "allowed"),  # https: from anywhere
    ("lab-edge1", "lab-app1", 9100, "allowed"),  # node-exporter: from monitoring
    ("lab-app2", "lab-app1", 9100, "filtered"),  # ... not from another app host
    ("lab-db1", "lab-backup1", 22, "allowed"),  # offsite backup: SSH from db
    ("lab-app1", "lab-backup1", 22, "filtered"),  # ... not from app
    ("lab-app1", "lab-db1", 22, "filtered"),  # SSH: admin allowlist only
    ("lab-backup1", "lab-app2", 3306, "filtered"),  # anything else: dropped
]


@pytest.mark.parametrize(("source", "target", "port", "expected"), MATRIX, ids=str)
def test_only_the_ports_the_stack_needs_are_reachable(lab, first_converge, source, target, port, expected):
    seen = probe(lab, source, target, port)
    assert ("allowed" if seen in ("open", "refused") else seen) == expected, seen


def _ssh(lab, host, user, *options: str) -> subprocess.CompletedProcess:
    argv = lab_fleet.ssh_command(lab, lab.host(host), user=user)
    return subprocess.run(
        [*argv[:1], *options, *argv[1:], "true"], capture_output=True, text=True, timeout=60, check=False
    )


def test_password_logins_are_not_even_offered(lab, first_converge):
    result = _ssh(
        lab, "lab-db1", DEPLOY_USER, "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_root_cannot_log_in_even_with_the_right_key(lab, first_converge):
    result = _ssh(lab, "lab-db1", "root")
    assert result.returncode == 255 and "Permission denied" in result.stderr


@pytest.mark.parametrize("host", ["lab-edge1", "lab-backup1"], ids=["debian13", "debian12"])
def test_ssh_audit_finds_no_failure_and_no_warning(lab, first_converge, host):
    tool = Path(sys.executable).parent / "ssh-audit"
    result = subprocess.run(
        [str(tool), "-j", lab.host(host).address], capture_output=True, text=True, timeout=120, check=False
    )
    report = json.loads(result.stdout)
    problems = {
        kind: [
            a["algorithm"]
            for a in report.get(kind, [])
            if a.get("notes", {}).get("fail") or a.get("notes", {}).get("warn")
        ]
        for kind in ("kex", "key", "enc", "mac")
    }
    assert all(not found for found in problems.values()), problems
    if host == "lab-edge1":
        assert "mlkem768x25519-sha256" in [k["algorithm"] for k in report["kex"]], "post-quantum KEX must stay"


def _f2b(lab, host, *args) -> subprocess.CompletedProcess:
    return on_host(lab, host, "sudo", "fail2ban-client", *args)


def test_repeated_failures_get_the_source_dropped_not_just_listed(lab, first_converge):
    """lab-db1 may reach lab-backup1's SSH (offsite backups); after enough
    failed logins its next connection must be dropped by the ban."""
    attacker, target = "lab-db1", "lab-backup1"
    address = lab.host(attacker).address
    assert probe(lab, attacker, target, 22) == "open"
    try:
        banned = False
        for attempt in range(10):
            # `timeout` bounds an attempt that the ban catches mid-handshake.
            on_host(
                lab,
                attacker,
                "timeout",
                "15",
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                f"nobody-{attempt}@{lab.host(target).address}",
                "true",
                timeout=60,
            )
            status = _f2b(lab, target, "status", "sshd").stdout
            if address in status:
                banned = True
                break
        assert banned, status
        assert probe(lab, attacker, target, 22) == "filtered", "the ban is listed but traffic still passes"
    finally:
        _f2b(lab, target, "set", "sshd", "unbanip", address)
    assert probe(lab, attacker, target, 22) == "open"


def test_the_allowlisted_controller_is_never_banned(lab, first_converge):
    for attempt in range(8):
        _ssh(lab, "lab-backup1", f"nobody{attempt}", "-o", "BatchMode=yes")
    status = _f2b(lab, "lab-backup1", "status", "sshd").stdout
    assert "172.30.77.1" not in status
    assert _ssh(lab, "lab-backup1", DEPLOY_USER).returncode == 0


def _firewall_only(summaries, name: str, extra: dict, limit: str | None = None):
    """Run only the firewall role of harden.yml with extra variables."""
    args = ["--tags", "firewall", "-e", json.dumps(extra)]
    return lab_playbook(summaries, name, "playbooks/harden.yml", *args, *(["--limit", limit] if limit else []))


def _configured_firewall(lab, host) -> str:
    """The admin allowlist and the input rules (not the run-time rate state)."""
    parts = []
    for what in (["set", "inet", "keelson", "admin_v4"], ["chain", "inet", "keelson", "input"]):
        result = on_host(lab, host, "sudo", "nft", "list", *what)
        assert result.returncode == 0, result.stderr
        parts.append(result.stdout)
    return "".join(parts)


def test_a_ruleset_that_cuts_ssh_rolls_itself_back(lab, first_converge, summaries):
    before = _configured_firewall(lab, "lab-backup1")
    assert "172.30.77.1" in before
    extra = {"firewall_admin_sources": ["192.0.2.1/32"], "firewall_check_current_connection": False}
    run = _firewall_only(summaries, "cut", {**extra, "firewall_commit_timeout": 20}, limit="lab-backup1")
    assert run.returncode != 0
    assert "rolled it back" in run.output, run.output[-4000:]
    # Reachable again, with the table that was there before.
    assert _configured_firewall(lab, "lab-backup1") == before
    assert on_host(lab, "lab-backup1", "test", "!", "-e", "/var/lib/keelson/nft/pending.json").returncode == 0


def test_refuses_an_allowlist_without_the_current_connection_before_any_change(lab, first_converge, summaries):
    run = _firewall_only(summaries, "refused", {"firewall_admin_sources": ["192.0.2.1/32"]}, limit="lab-backup1")
    assert_refused_before_any_change(run, "would lock the controller out")


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ('{"firewall_admin_sources": ["10.0.0.0/33"]}', "firewall_admin_sources"),
        ('{"firewall_admin_sources": []}', "firewall_admin_sources"),
        ('{"firewall_ssh_port": 70000}', "firewall_ssh_port"),
    ],
)
def test_bad_firewall_input_fails_before_any_change(lab, first_converge, summaries, extra, variable):
    assert_refused_before_any_change(_firewall_only(summaries, f"bad-{variable}", json.loads(extra)), variable)


PUBLISHED_PORT = 8002  # the idle app slot's port: allowed from lb and monitoring only


@pytest.fixture(scope="module")
def published_container(lab, first_converge):
    """A container on lab-app2 publishing the app port, with Docker from Debian."""
    host = "lab-app2"
    steps = [
        ["sudo", "apt-get", "install", "-y", "-q", "docker.io", "busybox-static"],
        [
            "sudo",
            "sh",
            "-c",
            "docker image inspect keelson-probe >/dev/null 2>&1 || "
            "tar -C / -c bin/busybox | docker import -c 'CMD [\"/bin/busybox\"]' - keelson-probe",
        ],
        ["sudo", "docker", "rm", "-f", "keelson-probe"],
        [
            "sudo",
            "docker",
            "run",
            "-d",
            "--name",
            "keelson-probe",
            "-p",
            f"{PUBLISHED_PORT}:8080",
            "keelson-probe",
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/",
        ],
    ]
    for step in steps:
        result = on_host(lab, host, *step, timeout=600)
        assert result.returncode == 0, f"{step}: {result.stderr}"
    yield host
    on_host(lab, host, "sudo", "docker", "rm", "-f", "keelson-probe")


def test_a_published_container_port_obeys_the_policy(lab, published_container):
    host = published_container
    assert probe(lab, "lab-edge1", host, PUBLISHED_PORT) == "open"
    assert probe(lab, "lab-db1", host, PUBLISHED_PORT) == "filtered"
    assert probe(lab, "lab-backup1", host, PUBLISHED_PORT) == "filtered"


def test_the_policy_survives_a_docker_restart(lab, published_container):
    host = published_container
    assert on_host(lab, host, "sudo", "systemctl", "restart", "docker").returncode == 0
    on_host(lab, host, "sudo", "docker", "start", "keelson-probe")
    assert probe(lab, "lab-edge1", host, PUBLISHED_PORT) == "open"
    assert probe(lab, "lab-db1", host, PUBLISHED_PORT) == "filtered"
    assert "policy drop" in on_host(lab, host, "sudo", "nft", "list", "chain", "inet", "keelson", "input").stdout


def test_lynis_hardening_index_is_reported(lab, first_converge, capsys):
    host = "lab-db1"
    assert on_host(lab, host, "sudo", "apt-get", "install", "-y", "-q", "lynis", timeout=600).returncode == 0
    result = on_host(lab, host, "sudo", "lynis", "audit", "system", "--quick", "--no-colors", timeout=900)
    found = re.search(r"Hardening index : (\d+)", result.stdout)
    assert found, result.stdout[-3000:]
    with capsys.disabled():
        print(f"\nLynis hardening index on {host} (container): {found.group(1)}")
