"""site.yml on the lab fleet, over real SSH: converge, idempotence, check
mode, behaviour of the result, and bad input refused before any change.

The tests run in file order against one lab (see conftest.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from keelson.lab import fleet as lab_fleet
from tests.e2e import runbooks
from tests.e2e.conftest import DEPLOY_USER, LAB_INVENTORY, assert_refused_before_any_change, lab_playbook


def _recap(run) -> str:
    return json.dumps(run.summary.get("hosts", {}), indent=1)


def test_site_converges_every_lab_host(lab, first_converge):
    assert first_converge.returncode == 0, first_converge.output[-15000:]
    hosts = first_converge.summary["hosts"]
    assert sorted(hosts) == sorted(h.name for h in lab.hosts)
    assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in hosts.values()), _recap(first_converge)
    assert all(s["changed"] > 0 for s in hosts.values()), "a fresh host must need changes"


# The second run and the check-mode run are docs/runbooks/deploy.md's commands
# (`keelson up`, `keelson up --check`: site.yml through the keelson CLI).


def test_second_run_changes_nothing(lab, first_converge, summaries):
    check = runbooks.run(
        "deploy", "keelson environment validate <environment>", inventory=LAB_INVENTORY, environment="lab"
    )
    assert check.returncode == 0, check.output[-3000:]
    # --full: every task of every role runs (no converge stamp lets a role skip), so this
    # proves that no task reports a change on a converged fleet.
    run = runbooks.run("deploy", "keelson up --full", inventory=LAB_INVENTORY, summary_file=summaries / "second.json")
    assert run.returncode == 0, run.output[-15000:]
    assert "site.yml" in run.output
    assert all(s["changed"] == 0 for s in run.summary["hosts"].values()), run.changed_tasks()
    assert "roles/ssh/tasks/converge.yml" in run.output, "a --full run must go through every role"


def test_check_and_diff_on_a_converged_fleet_report_no_change(lab, first_converge, summaries):
    run = runbooks.run(
        "deploy", "keelson up --check --full", inventory=LAB_INVENTORY, summary_file=summaries / "check.json"
    )
    assert run.returncode == 0, run.output[-15000:]
    assert all(s["changed"] == 0 for s in run.summary["hosts"].values()), run.changed_tasks()


def _converged(output: str, role: str) -> set[str]:
    """Hosts on which `role` did its work (included its converge.yml) in a run's output."""
    hosts: set[str] = set()
    for line in output.splitlines():
        if line.startswith("included: ") and line.split(" for ")[0].endswith(f"/roles/{role}/tasks/converge.yml"):
            hosts.update(h.strip() for h in line.split(" for ", 1)[1].split(","))
    return hosts


def test_a_plain_run_skips_what_did_not_change_and_puts_drift_right(lab, first_converge, summaries, testinfra_hosts):
    # Drift on one host, in a file the base role owns: only base on that host may do its work.
    name = sorted(testinfra_hosts)[0]
    host = testinfra_hosts[name]
    dropin = "/etc/systemd/journald.conf.d/keelson.conf"
    before = host.file(dropin).content_string
    host.run_test(f"sh -c 'echo \"# edited by hand\" >> {dropin}'")
    everyone = {h.name for h in lab.hosts}

    check = runbooks.run(
        "deploy", "keelson up --check", inventory=LAB_INVENTORY, summary_file=summaries / "fast-check.json"
    )
    assert check.returncode == 0, check.output[-15000:]
    assert {h for h, s in check.summary["hosts"].items() if s["changed"]} == {name}, check.changed_tasks()
    assert host.file(dropin).content_string != before, "check mode must not put the drift right"

    run = runbooks.run("deploy", "keelson up", inventory=LAB_INVENTORY, summary_file=summaries / "fast.json")
    assert run.returncode == 0, run.output[-15000:]
    assert {h for h, s in run.summary["hosts"].items() if s["changed"]} == {name}, run.changed_tasks()
    assert host.file(dropin).content_string == before
    assert _converged(run.output, "base") == {name}, "base must converge where its file drifted, only there"
    for role in ("ssh", "firewall", "fail2ban", "logs", "docker", "postgres", "app", "edge", "monitoring", "backup"):
        assert not _converged(run.output, role), f"{role} converged though nothing it owns changed"
    assert sorted(run.summary["hosts"]) == sorted(everyone)


def test_deploy_user_logs_in_with_the_key_and_has_sudo(lab, first_converge):
    for host in lab.hosts:
        argv = [*lab_fleet.ssh_command(lab, host, user=DEPLOY_USER), "sudo", "-n", "id", "-u"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == "0", f"{host.name}: {proc.stderr}"


def test_unknown_key_is_refused(lab, first_converge, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    host = lab.hosts[0]
    argv = lab_fleet.ssh_command(lab, host, user=DEPLOY_USER)
    argv[argv.index("-i") + 1] = str(stranger)
    proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 255 and "Permission denied" in proc.stderr


def test_baseline_behaves_on_every_host(lab, testinfra_hosts):
    for name, host in testinfra_hosts.items():
        facts = json.loads(host.file("/etc/ansible/facts.d/keelson.fact").content_string)
        assert facts["managed"] is True, name
        assert sorted(facts["groups"]) == sorted(lab.host(name).groups), name
        assert host.check_output("timedatectl show -p Timezone --value") == "Etc/UTC", name
        # Security updates only, and the tool agrees with its own config.
        assert host.run("unattended-upgrade --dry-run").rc == 0, name
        # journald runs with the caps (effective configuration, not a file).
        journald = host.check_output("systemd-analyze cat-config systemd/journald.conf")
        assert "SystemMaxUse=" in journald, name
        # Network sysctls are namespaced, so the lab can apply and read them.
        assert host.check_output("sysctl -n net.ipv4.tcp_syncookies") == "1", name
        assert host.check_output("sysctl -n net.ipv4.conf.all.accept_redirects") == "0", name


@pytest.mark.parametrize(
    ("extra_vars", "variable"),
    [
        ('{"base_sysctl_extra": "not-a-dict"}', "base_sysctl_extra"),
        ('{"base_unattended_automatic_reboot": "sometimes"}', "base_unattended_automatic_reboot"),
        ('{"base_journald_system_max_use": "lots"}', "base_journald_system_max_use"),
    ],
)
def test_bad_base_input_fails_before_any_change(lab, first_converge, summaries, extra_vars, variable):
    assert_refused_before_any_change(lab_playbook(summaries, f"bad-{variable}", "site.yml", "-e", extra_vars), variable)
