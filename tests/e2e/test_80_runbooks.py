"""The runbooks (docs/runbooks/) executed against the lab, command by command, as written.

Runbooks whose commands are the heart of an earlier test run there instead (deploy in
test_10, restore in test_50, rollback in test_60, onboard in test_70); the last test here
checks that every command of every runbook ran in this session."""

from __future__ import annotations

import json
import secrets
import time

import docker
import pytest

from tests.e2e import https, runbooks
from tests.e2e.conftest import LAB_INVENTORY
from tests.e2e.probe import on_host
from tests.e2e.traffic import RATE, load

pytestmark = pytest.mark.usefixtures("first_converge")

STATUS = "keelson status"


def status_json() -> dict:
    """`keelson status --json` on the lab (the data behind the runbooks' `keelson status`)."""
    proc = runbooks.cli("status", "--json", inventory=LAB_INVENTORY, timeout=600)
    report = json.loads(proc.stdout)
    report["exit"] = proc.returncode
    return report


def host_row(report: dict, name: str) -> dict:
    return next(h for h in report["hosts"] if h["host"] == name)


def unhealthy(report: dict) -> str:
    """What keeps the fleet from healthy, in one line (for assertion messages)."""
    bad = {h["host"]: h["problems"] for h in report["hosts"] if not h["healthy"]}
    return (
        f"exit {report['exit']}; fleet alerts {report['fleet_alerts']}; hosts with problems {bad}; "
        f"prometheus {report['prometheus']}"
    )


def wait_healthy(timeout: float = 420) -> dict:
    """Until `keelson status --json` says the fleet is healthy. Alerts resolve on their own
    time: the rate-based ones (5xx, p99) look 5 minutes back, so an earlier test's load or
    restart can keep one firing for minutes after the fleet is fine again."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        report = status_json()
        if report["exit"] == 0:
            return report
        seen.append(f"{time.strftime('%H:%M:%S')} {unhealthy(report)}")
        assert time.monotonic() < deadline, "\n".join(seen[:3] + ["..."] + seen[-3:])
        time.sleep(10)


def status_ok(name: str) -> dict:
    """The runbook's `keelson status` once the fleet has settled: exit 0. Returns the
    healthy `--json` report the wait ended with."""
    report = wait_healthy()
    run = runbooks.run(name, STATUS, inventory=LAB_INVENTORY)
    assert run.returncode == 0, run.output[-5000:]
    return report


def test_every_runbook_names_keelson_commands():
    assert set(runbooks.NAMES) >= {
        "deploy",
        "rollback",
        "restore",
        "onboard",
        "rotate-secret",
        "certificates",
        "disk-full",
        "host-lost",
    }
    for name in runbooks.NAMES:
        cmds = runbooks.commands(name)
        assert cmds, f"{name}.md names no command"
        assert all(c.startswith("keelson ") for c in cmds), cmds


def test_certificates_runbook(lab, summaries):
    """Look at the certificate, renew through the edge role, look again."""
    before = host_row(status_ok("certificates"), "lab-edge1")
    run = runbooks.run(
        "certificates",
        "keelson deploy -- --tags edge",
        inventory=LAB_INVENTORY,
        summary_file=summaries / "rb-cert.json",
    )
    assert run.returncode == 0, run.output[-10000:]
    assert all(s["failures"] == 0 for s in run.summary["hosts"].values())
    after = host_row(status_ok("certificates"), "lab-edge1")
    # A certificate far from renewal is kept: the probe sees the same expiry.
    assert isinstance(before["cert_days_left"], float | int), before
    assert isinstance(after["cert_days_left"], float | int), after
    assert 14 < after["cert_days_left"] < 400
    assert abs(before["cert_days_left"] - after["cert_days_left"]) < 1


def redis_ping(lab, password: str) -> str:
    """What Redis on lab-db1 answers PING with ``password``."""
    out = on_host(
        lab,
        "lab-db1",
        "sudo",
        "docker",
        "exec",
        "keelson-redis-redis-1",
        "sh",
        "-c",
        f"REDISCLI_AUTH={password} redis-cli --no-auth-warning ping",
    )
    return out.stdout + out.stderr


def test_rotate_secret_runbook(lab, summaries):
    """The Redis password in the runbook's two deploys, through the lab's secret store: during
    the first, Redis accepts the old and the new password while the app hosts move to the new
    one, under load through the edge; after the second, the old one is refused."""
    store = LAB_INVENTORY / ".lab" / "secrets"
    old = (store / "redis").read_text().split()[0]
    new = secrets.token_hex(16)
    (store / "redis-previous").write_text(old + "\n")
    (store / "redis").write_text(new + "\n")
    with load(lab, seconds=900) as generator:
        run = runbooks.run(
            "rotate-secret",
            "keelson deploy -- --tags redis,app",
            inventory=LAB_INVENTORY,
            summary_file=summaries / "rb-rotate.json",
        )
        time.sleep(2)
    result = generator.result()
    assert run.returncode == 0, run.output[-10000:]
    print(f"load during the rotation: {result.summary()}")
    # The app kept answering through the edge: /version never failed; /readyz only while
    # Redis itself restarted (it checks Redis), for a few seconds at most.
    assert result.sent >= 20, result.summary()
    failed_paths = {f["path"] for f in result.failures}
    assert failed_paths <= {"/readyz"}, f"{result.summary()}\n{result.failures[:20]}"
    assert result.failed <= 3 * RATE, f"{result.summary()}\n{result.failures[:20]}"
    assert "PONG" in redis_ping(lab, new)
    assert "PONG" in redis_ping(lab, old), "the old password must work until the second deploy"
    # Redis restarted with both passwords: alerts raised while it was away resolve first.
    status_ok("rotate-secret")

    (store / "redis-previous").unlink()
    run = runbooks.run(
        "rotate-secret",
        "keelson deploy -- --tags redis",
        inventory=LAB_INVENTORY,
        summary_file=summaries / "rb-rotate-2.json",
    )
    assert run.returncode == 0, run.output[-10000:]
    assert "PONG" in redis_ping(lab, new)
    assert "WRONGPASS" in redis_ping(lab, old)
    deadline = time.monotonic() + 60
    while https.request(lab, "GET", "/readyz").status != 200:
        assert time.monotonic() < deadline, "the app is not ready after the rotation"
        time.sleep(2)
    runbooks.run("rotate-secret", STATUS, inventory=LAB_INVENTORY)
    wait_healthy()


def test_disk_full_runbook(lab, summaries):
    """Look, see what prune would remove (nothing removed), prune, look again."""

    def releases() -> str:
        out = on_host(lab, "lab-app1", "sudo", "sh", "-c", "ls -d /opt/keelson/*/releases/* | sort")
        return out.stdout

    status_ok("disk-full")
    before = releases()
    run = runbooks.run(
        "disk-full", "keelson prune --dry-run", inventory=LAB_INVENTORY, summary_file=summaries / "rb-prune-dry.json"
    )
    assert run.returncode == 0, run.output[-10000:]
    assert releases() == before, "a dry run removed releases"
    run = runbooks.run(
        "disk-full", "keelson prune --yes", inventory=LAB_INVENTORY, summary_file=summaries / "rb-prune.json"
    )
    assert run.returncode == 0, run.output[-10000:]
    after = releases()
    assert set(after.split()) <= set(before.split())
    status_ok("disk-full")


def test_host_lost_runbook(lab, summaries):
    """lab-app2 goes away: status says so (exit 1) while the app still answers; it comes
    back, the runbook converges it, status is healthy again."""
    client = docker.from_env()
    container = client.containers.get(lab.host("lab-app2").container_name(lab.name))
    container.stop(timeout=10)
    try:
        run = runbooks.run("host-lost", STATUS, inventory=LAB_INVENTORY)
        assert run.returncode == 1, run.output[-5000:]
        report = status_json()
        assert host_row(report, "lab-app2")["reachable"] is False, report
        assert host_row(report, "lab-app1")["reachable"] is True
        assert https.request(lab, "GET", "/readyz").status == 200
    finally:
        container.start()
    deadline = time.monotonic() + 120
    while on_host(lab, "lab-app2", "true", timeout=15).returncode != 0:
        assert time.monotonic() < deadline, "lab-app2 does not answer SSH after its start"
        time.sleep(3)
    run = runbooks.run(
        "host-lost",
        "keelson up -- --limit <host>",
        inventory=LAB_INVENTORY,
        summary_file=summaries / "rb-host-back.json",
        host="lab-app2",
    )
    assert run.returncode == 0, run.output[-10000:]
    wait_healthy()


def test_every_runbook_command_ran(request):
    """Every command of every runbook ran in this session (here or in the test named in the
    module docstring) — only meaningful when the whole e2e suite ran."""
    needed = {"test_10_site.py", "test_50_backup.py", "test_60_upgrade.py", "test_70_onboard.py"}
    collected = {item.path.name for item in request.session.items}
    if not needed <= collected:
        pytest.skip(f"not the whole e2e suite: {sorted(needed - collected)} did not run")
    missing = [(n, c) for n in runbooks.NAMES for c in runbooks.commands(n) if (n, c) not in runbooks.RAN]
    assert not missing, f"runbook commands no test ran: {missing}"
