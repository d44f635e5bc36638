"""Rolling upgrades on the lab, under load through the edge (docs/upgrades.md).

In order: bad input refused before any host is drained; draining a server
that is DOWN; v1 -> v2 with zero
failed requests (backup first, migrations once, the upgrade's id on every
host, the audit trail), a second run that changes nothing; a broken release
rolled back automatically; rollback.yml back to v1; an app host killed in the
middle of an upgrade, and the rerun that completes it; patch.yml on one app
host.  The load is bounded (rate, count and time fixed) and stays below the
lab's per-client rate limit (50 requests per 10 s)."""

from __future__ import annotations

import json
import threading
import time

import docker
import pytest

from tests.e2e import runbooks
from tests.e2e.conftest import LAB_INVENTORY, assert_refused_before_any_change, lab_playbook
from tests.e2e.probe import on_host
from tests.e2e.traffic import edge_command, edge_states, load, no_failures, serving, slot_versions

APP_HOSTS = ("lab-app1", "lab-app2")
V1, V2, BROKEN = "keelson-lab/app:v1", "keelson-lab/app:v2", "keelson-lab/app:broken"


@pytest.fixture(scope="module")
def fleet(lab, first_converge):
    assert first_converge.returncode == 0, first_converge.output[-15000:]
    return lab


def records(lab, host: str) -> list[dict]:
    out = on_host(lab, host, "sudo", "sh", "-c", "cat /opt/keelson/keelson-app-*/releases/*/release.json")
    assert out.returncode == 0, out.stderr
    decoder, text, found = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        record, end = decoder.raw_decode(text)
        found.append(record)
        text = text[end:].strip()
    return found


def upgrade(summaries, name: str, image: str, *extra: str, audit_hosts: bool = False):
    return lab_playbook(
        summaries, name, "playbooks/upgrade.yml", "-e", f"app_image={image}", *extra, audit_hosts=audit_hosts
    )


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-e", "app_image=keelson-lab/app:v9"], "app_image keelson-lab/app:v9 is unknown"),
        (["-e", f"app_image={V2}", "-e", "upgrade_serial=0"], "upgrade_serial must be"),
        # Refused by the preflight, on the controller, naming the variable.
        (
            ["-e", f"app_image={V2}", "-e", "keelson_lb_group=nowhere"],
            'keelson_lb_group = "nowhere": the inventory has no host in that group',
        ),
        # Pull delivery from a registry on the host's own loopback: nothing listens, nothing leaves the lab.
        (
            ["-e", "app_image=127.0.0.1:5999/keelson/app:v2", "-e", "keelson_image_delivery=pull"],
            "could not be delivered to lab-app1",
        ),
    ],
    ids=["unknown-release", "batch-0", "no-edge", "image-missing"],
)
def test_bad_upgrade_input_is_refused_before_any_host_is_drained(fleet, summaries, extra, message):
    def taken_out() -> dict[str, bool]:
        # Health checks move servers between UP and DOWN by themselves; drains do not.
        return {name: status.startswith(("MAINT", "DRAIN")) for name, status in edge_states(fleet).items()}

    before = taken_out()
    run = lab_playbook(summaries, f"upgrade-bad-{message[:10]}", "playbooks/upgrade.yml", *extra)
    assert_refused_before_any_change(run, message)
    assert taken_out() == before


DRAIN_DOWN_PLAYBOOK = """
- ansible.builtin.import_playbook: {connect}

- name: Drain one server of the edge
  hosts: lab-app1
  become: true
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: edge
        tasks_from: server
      vars:
        edge_server_name: {server}
        edge_server_state: drained
"""


def test_draining_a_server_that_is_down_puts_it_in_maintenance(fleet, summaries, tmp_path):
    """HAProxy never shows DRAIN for a server whose check fails (a slot that lost Redis, a
    crashed one): the edge's drain sets MAINT at once instead of waiting for it, which had
    failed a slot switch.  The idle slot of lab-app1 (not running) is DOWN (out of MAINT if
    a switch left it there), then drained through the edge role, and put back as it was."""
    running = slot_versions(fleet, "lab-app1")
    idle = [s for s in ("blue", "green") if s not in running]
    assert len(idle) == 1, running
    server = f"lab-app1-{idle[0]}"
    was = edge_states(fleet)[server]
    assert was.startswith(("MAINT", "DOWN")), edge_states(fleet)
    edge_command(fleet, f"set server app/{server} state ready")
    try:
        deadline = time.monotonic() + 30
        while not edge_states(fleet)[server].startswith("DOWN"):
            assert time.monotonic() < deadline, edge_states(fleet)
            time.sleep(1)
        playbook = tmp_path / "drain-down.yml"
        playbook.write_text(
            DRAIN_DOWN_PLAYBOOK.format(connect=(LAB_INVENTORY.parents[1] / "playbooks" / "connect.yml"), server=server)
        )
        run = lab_playbook(summaries, "drain-down", str(playbook))
        assert run.returncode == 0, run.output[-5000:]
        assert edge_states(fleet)[server].startswith("MAINT"), edge_states(fleet)
    finally:
        edge_command(fleet, f"set server app/{server} state {'maint' if was.startswith('MAINT') else 'ready'}")


# --- v1 -> v2 ------------------------------------------------------------------------


def test_upgrade_to_v2_under_load_fails_no_request(fleet, summaries):
    for host in APP_HOSTS:
        assert serving(fleet, host) == {"v1"}
    with load(fleet) as generator:
        time.sleep(3)
        run = upgrade(summaries, "upgrade-v2", V2, audit_hosts=True)
        time.sleep(3)
    result = generator.result()
    assert run.returncode == 0, run.output[-8000:]
    no_failures(result)
    # Both releases answered during the run, and the switch went one way.
    assert result.tally.get("v1") and result.tally.get("v2"), result.tally
    assert result.tally_spans["v1"][0] < result.tally_spans["v2"][0]
    for host in APP_HOSTS:
        assert serving(fleet, host) == {"v2"}, slot_versions(fleet, host)
    # The migrations ran once: the schema is 0002 everywhere.
    assert {v["schema"] for h in APP_HOSTS for v in slot_versions(fleet, h).values()} == {"0002"}

    # One upgrade id on every host's new release.
    def new_active(host: str) -> list[dict]:
        return [r for r in records(fleet, host) if r.get("result") == "active" and r["images"][0]["ref"] == V2]

    active = {host: new_active(host) for host in APP_HOSTS}
    assert all(len(found) == 1 for found in active.values()), active
    assert len({found[0]["upgrade"] for found in active.values()}) == 1
    # The database was backed up first.
    backups = on_host(fleet, "lab-db1", "sudo", "keelson-backup", "snapshots", "--repository", "local")
    assert any("reason:pre-upgrade" in s.get("tags", []) for s in json.loads(backups.stdout)), backups.stdout[-2000:]
    # The audit trail: a line on the controller and the same on each host of the run.
    line = on_host(fleet, "lab-app1", "sudo", "tail", "-n", "1", "/var/log/keelson/audit.jsonl")
    audit = json.loads(line.stdout)
    assert audit["playbook"].endswith("upgrade.yml") and audit["result"] == "ok" and audit["release"] == V2, audit
    assert set(APP_HOSTS) <= set(audit["hosts"])
    # Only the new slots are in service at the edge.
    states = edge_states(fleet)
    for host in APP_HOSTS:
        new = next(iter(slot_versions(fleet, host)))
        assert states[f"{host}-{new}"].startswith("UP"), states


def test_a_second_upgrade_run_changes_nothing(fleet, summaries):
    run = upgrade(summaries, "upgrade-v2-again", V2, "-e", "upgrade_backup=false")
    assert run.returncode == 0, run.output[-8000:]
    assert run.changed_tasks() == [], run.changed_tasks()


# --- a broken release ----------------------------------------------------------------


def test_a_broken_release_is_rolled_back_automatically_under_load(fleet, summaries):
    with load(fleet) as generator:
        run = upgrade(summaries, "upgrade-broken", BROKEN, "-e", "upgrade_backup=false")
        time.sleep(3)
    result = generator.result()
    assert run.returncode != 0
    assert "the switch to broken" in run.output and "Rolled back" in run.output, run.output[-8000:]
    no_failures(result)
    assert set(result.tally) - {"<missing>"} == {"v2"}, result.tally
    for host in APP_HOSTS:
        assert serving(fleet, host) == {"v2"}, slot_versions(fleet, host)
    # The first host's broken release is marked failed; the second host was not touched.
    failed = [r for r in records(fleet, "lab-app1") if r["images"][0]["ref"] == BROKEN]
    assert failed and all(r["result"] == "failed" and "health gate" in r["error"] for r in failed), failed
    assert not [r for r in records(fleet, "lab-app2") if r["images"][0]["ref"] == BROKEN]


# --- rollback on demand --------------------------------------------------------------


def test_rollback_returns_the_fleet_to_v1_under_load(fleet, summaries):
    with load(fleet) as generator:
        # As docs/runbooks/rollback.md says, through the keelson CLI.
        run = runbooks.run(
            "rollback", "keelson rollback", inventory=LAB_INVENTORY, summary_file=summaries / "rollback.json"
        )
        time.sleep(3)
    result = generator.result()
    assert run.returncode == 0, run.output[-8000:]
    no_failures(result)
    for host in APP_HOSTS:
        assert serving(fleet, host) == {"v1"}, slot_versions(fleet, host)
        left = [r for r in records(fleet, host) if r["images"][0]["ref"] == V2]
        assert left and any(r["result"] == "failed" and "rolled back" in r["error"] for r in left), left
    status = runbooks.run("rollback", "keelson status", inventory=LAB_INVENTORY)
    assert "keelson-lab/app:v1" in status.output, status.output[-5000:]


# --- a host lost in the middle of an upgrade -----------------------------------------


def test_a_host_killed_mid_upgrade_leaves_the_rest_serving_and_a_rerun_completes(fleet, summaries):
    client = docker.from_env()
    app2 = client.containers.get(fleet.host("lab-app2").container_name(fleet.name))
    killed = threading.Event()
    killed_at: list[float] = []

    def kill_when_app2_switches() -> None:
        # app1 goes first (serial 1); app2 is killed as soon as its new slot's
        # container runs next to the old one, before its health gate passes.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            both = on_host(fleet, "lab-app2", "sudo", "docker", "ps", "-q", "--filter", "label=io.keelson.slot")
            if len(both.stdout.split()) == 2:
                app2.kill()
                killed_at.append(time.monotonic())
                killed.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_when_app2_switches, daemon=True)
    with load(fleet) as generator:
        # The timeline's seconds count from here (stopping the load may wait for a
        # request stuck on the dead host, so its end is no reference).
        load_started = time.monotonic()
        watcher.start()
        run = upgrade(summaries, "upgrade-killed", V2, "-e", "upgrade_backup=false")
        watcher.join(timeout=60)
        # Whenever the play noticed, the load goes on 20 s past the kill.
        if killed_at:
            time.sleep(max(0.0, killed_at[0] + 20 - time.monotonic()))
    result = generator.result()
    try:
        assert killed.is_set(), run.output[-8000:]
        assert run.returncode != 0
        # The rest kept serving: every second from 10 to 18 s after the kill had answers ...
        offset = killed_at[0] - load_started
        late = [b for b in result.timeline if offset + 10 <= b.second <= offset + 18]
        seen = [(b.second, b.ok, b.failed) for b in result.timeline[-25:]]
        assert late and all(b.ok > 0 for b in late), f"kill at {offset:.1f} s; last seconds {seen}"
        # ... and only requests that were in flight on app2 when it died may have failed.
        assert result.failed <= 4, result.failures
    finally:
        # app2 comes back (its containers restart with it), also for the tests after this one.
        app2.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and on_host(fleet, "lab-app2", "true").returncode != 0:
        time.sleep(3)
    with load(fleet) as generator:
        rerun = upgrade(summaries, "upgrade-rerun", V2, "-e", "upgrade_backup=false")
    assert rerun.returncode == 0, rerun.output[-8000:]
    no_failures(generator.result())
    for host in APP_HOSTS:
        assert serving(fleet, host) == {"v2"}, slot_versions(fleet, host)


# --- OS patches ----------------------------------------------------------------------


def test_patching_an_app_host_drains_it_and_puts_it_back_under_load(fleet, summaries):
    with load(fleet, seconds=600) as generator:
        run = lab_playbook(summaries, "patch", "playbooks/patch.yml", "-l", "lab-app2")
    result = generator.result()
    assert run.returncode == 0, run.output[-8000:]
    no_failures(result)
    states = edge_states(fleet)
    new = next(iter(slot_versions(fleet, "lab-app2")))
    assert states[f"lab-app2-{new}"].startswith("UP"), states
