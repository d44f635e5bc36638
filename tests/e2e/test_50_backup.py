"""Backups on the lab, proven by restores: rows written through the app are
backed up, destroyed and restored with equal checksums; a point-in-time
restore lands between two writes; a killed dump, a wrong password and an
unreachable offsite host fail loudly and delete nothing; the DR drill
rebuilds the database from offsite only.  Runs after the stack tests on the
same lab, in this order."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest

from tests.e2e import runbooks
from tests.e2e.conftest import LAB_INVENTORY, assert_refused_before_any_change, lab_playbook
from tests.e2e.https import request
from tests.e2e.probe import on_host, wait_for_prometheus

DB = "lab-db1"
BACKUP = "lab-backup1"
PSQL = ["sudo", "docker", "exec", "-i", "keelson-db-postgres-1", "psql", "-U", "postgres", "-d", "app", "-XAt"]
ITEMS_CHECKSUM = "SELECT count(*) || ':' || md5(coalesce(string_agg(i::text, ',' ORDER BY i.id), '')) FROM items i"


@pytest.fixture(scope="module")
def fleet(lab, first_converge):
    assert first_converge.returncode == 0, first_converge.output[-15000:]
    return lab


def sql(lab, query: str) -> str:
    result = on_host(lab, DB, *PSQL, "-v", "ON_ERROR_STOP=1", "-c", query)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def on_db(lab, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return on_host(lab, DB, "sudo", *argv, timeout=timeout)


def snapshots(lab, repository: str = "local", everything: bool = False) -> list[dict]:
    argv = ["keelson-backup", "snapshots", "--repository", repository] + (["--all"] if everything else [])
    result = on_db(lab, *argv)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def metric(lab, task: str, repository: str) -> float:
    text = on_db(lab, "cat", f"/var/lib/prometheus/node-exporter/keelson_backup_{task}.prom").stdout
    m = re.search(rf'keelson_backup_last_run_success{{task="{task}",repository="{repository}"}} (\S+)', text)
    assert m, text
    return float(m.group(1))


def write_items(lab, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    for name in names:
        created = request(lab, "POST", "/api/items", {"name": name})
        assert created.status == 201, created.body
    return names


def backup_job(summaries, name: str, job: str = "backup", *extra: str):
    return lab_playbook(summaries, name, "playbooks/backup.yml", "-e", f"backup_job={job}", *extra)


def wait_until_served(lab, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if request(lab, "GET", "/readyz").status == 200:
            return
        time.sleep(2)
    pytest.fail("the app did not serve again through the edge")


# --- set-up ----------------------------------------------------------------------------


def test_timers_are_scheduled_and_the_offsite_account_is_sftp_only(fleet):
    timers = on_db(fleet, "systemctl", "list-timers", "--all", "--no-pager", "keelson-backup-*")
    for job in ("backup", "wal", "prune", "check", "restore-test"):
        assert f"keelson-backup-{job}.timer" in timers.stdout, timers.stdout
    # The db host's key works for SFTP (restic's snapshots listing goes through it) ...
    assert isinstance(snapshots(fleet, "offsite", everything=True), list)
    # ... and for nothing else: no shell, and the key list is root's.
    shell = on_db(
        fleet,
        "ssh",
        "-i",
        "/etc/keelson/backup/offsite_ed25519",
        "-o",
        "UserKnownHostsFile=/etc/keelson/backup/known_hosts",
        "-o",
        "BatchMode=yes",
        f"kb-{DB}@{fleet.host(BACKUP).address}",
        "id",
    )
    assert "uid=" not in shell.stdout, shell.stdout
    keys = on_host(fleet, BACKUP, "sudo", "stat", "-c", "%U %a", f"/srv/keelson-backup/kb-{DB}/.ssh/authorized_keys")
    assert keys.stdout.split() == ["root", "644"], keys.stdout
    # A host that is not a db host cannot use the key (from= restriction) — the
    # firewall already drops SSH to backup hosts from anywhere else.


# --- backup, destroy, restore ----------------------------------------------------------


def test_rows_written_through_the_app_survive_backup_destroy_and_restore(fleet, summaries):
    write_items(fleet, "restore", 20)
    before = sql(fleet, ITEMS_CHECKSUM)
    run = backup_job(summaries, "backup-1")
    assert run.returncode == 0, run.output[-5000:]
    assert metric(fleet, "backup", "local") == 1 and metric(fleet, "backup", "offsite") == 1
    local = snapshots(fleet, "local")
    assert {"kind:pgdump", "kind:basebackup", "kind:files"} <= {t for s in local for t in s["tags"]}

    # Every complete local snapshot reached offsite (a copy has its own id, the
    # same time, paths and tags).
    def key(snap):
        return (snap["time"], tuple(snap["paths"]), tuple(sorted(snap["tags"])))

    assert sorted(map(key, snapshots(fleet, "offsite"))) == sorted(map(key, local))

    # The disaster: every row gone.
    sql(fleet, "DELETE FROM items")
    assert sql(fleet, "SELECT count(*) FROM items") == "0"

    # As docs/runbooks/restore.md says, through the keelson CLI: look, check the
    # repository, restore, look again.
    look = runbooks.run("restore", "keelson status", inventory=LAB_INVENTORY)
    assert look.returncode in (0, 1) and "lab-db1" in look.output, look.output[-5000:]
    check = runbooks.run("restore", "keelson backup --job check", inventory=LAB_INVENTORY)
    assert check.returncode == 0, check.output[-5000:]
    run = runbooks.run(
        "restore", "keelson restore --yes", inventory=LAB_INVENTORY, summary_file=summaries / "restore-1.json"
    )
    assert run.returncode == 0, run.output[-8000:]
    assert sql(fleet, ITEMS_CHECKSUM) == before
    # The emptied database was kept aside, not dropped.
    kept = sql(fleet, "SELECT datname FROM pg_database WHERE datname LIKE 'app_before_%'")
    assert kept, "the replaced database must be kept"
    wait_until_served(fleet)
    look = runbooks.run("restore", "keelson status", inventory=LAB_INVENTORY)
    assert look.returncode in (0, 1) and "lab-db1" in look.output, look.output[-5000:]


def test_the_scheduled_restore_test_passes_and_is_exported(fleet, summaries):
    run = backup_job(summaries, "restore-test", "restore-test")
    assert run.returncode == 0, run.output[-5000:]
    assert "canary ok" in run.output
    assert metric(fleet, "restore_test", "local") == 1
    left = on_db(fleet, "docker", "ps", "-aq", "--filter", "label=io.keelson.restore-test=1")
    assert left.stdout.strip() == ""


def test_restore_without_confirmation_or_with_an_unknown_snapshot_changes_nothing(fleet, summaries):
    run = lab_playbook(summaries, "restore-unconfirmed", "playbooks/restore.yml")
    assert_refused_before_any_change(run, "restore_confirm")
    run = lab_playbook(
        summaries,
        "restore-unknown",
        "playbooks/restore.yml",
        "-e",
        "restore_confirm=yes",
        "-e",
        "backup_restore_snapshot=deadbeef",
    )
    assert_refused_before_any_change(run, "no complete dump snapshot")
    assert "deadbeef" in run.output
    run = lab_playbook(
        summaries,
        "restore-before-any-base",
        "playbooks/restore.yml",
        "-e",
        "restore_confirm=yes",
        "-e",
        "backup_restore_target_time=2020-01-01T00:00:00Z",
    )
    assert_refused_before_any_change(run, "no base backup")
    assert request(fleet, "GET", "/readyz").status == 200


def test_point_in_time_recovery_lands_between_two_writes(fleet, summaries):
    first = write_items(fleet, "pitr-first", 3)
    time.sleep(2)
    target = sql(fleet, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    time.sleep(2)
    second = write_items(fleet, "pitr-second", 3)
    # Close the WAL segment holding both writes and ship it (the timer would within 5 min).
    segment = sql(fleet, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while sql(fleet, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < deadline, f"WAL segment {segment} was not archived"
        time.sleep(2)
    run = backup_job(summaries, "wal-ship", "wal")
    assert run.returncode == 0, run.output[-5000:]

    run = lab_playbook(
        summaries,
        "restore-pitr",
        "playbooks/restore.yml",
        "-e",
        "restore_confirm=yes",
        "-e",
        f"backup_restore_target_time={target}",
    )
    assert run.returncode == 0, run.output[-8000:]
    names = set(sql(fleet, "SELECT name FROM items WHERE name LIKE 'pitr-%'").splitlines())
    assert set(first) <= names, "writes before the target must be there"
    assert not set(second) & names, "writes after the target must not be there"
    wait_until_served(fleet)


# --- failures are loud and delete nothing ----------------------------------------------


def test_a_killed_dump_leaves_no_snapshot_that_looks_good(fleet):
    # Enough data that pg_dump runs for a few seconds.
    sql(
        fleet,
        "DROP TABLE IF EXISTS e2e_bulk; CREATE TABLE e2e_bulk AS "
        "SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v FROM generate_series(1, 1500000) g",
    )
    before = snapshots(fleet, "local", everything=True)
    started = on_db(fleet, "systemctl", "start", "--no-block", "keelson-backup-backup.service")
    assert started.returncode == 0, started.stderr
    killed = on_db(
        fleet,
        "sh",
        "-c",
        "for i in $(seq 1 600); do pkill -9 -f '^pg_dump -U postgres -Fc' && exit 0; sleep 0.05; done; exit 1",
    )
    assert killed.returncode == 0, "pg_dump was never seen running"
    # A oneshot unit is "activating" while it runs.
    on_db(
        fleet,
        "sh",
        "-c",
        "while [ $(systemctl show -p ActiveState --value keelson-backup-backup) = activating ]; do sleep 1; done",
    )
    state = on_db(fleet, "systemctl", "show", "-p", "Result", "--value", "keelson-backup-backup.service")
    assert state.stdout.strip() != "success"
    after = snapshots(fleet, "local", everything=True)
    assert {s["id"] for s in after} == {s["id"] for s in before}, "no new snapshot, good or not, may remain"
    assert metric(fleet, "backup", "local") == 0
    sql(fleet, "DROP TABLE e2e_bulk")


def test_a_wrong_repository_password_fails_loudly_and_deletes_nothing(fleet, summaries):
    good = on_db(fleet, "cat", "/etc/keelson/backup/local.pass").stdout
    before_local = snapshots(fleet, "local", everything=True)
    before_offsite = snapshots(fleet, "offsite", everything=True)
    try:
        on_db(fleet, "sh", "-c", "printf 'not-the-password\\n' > /etc/keelson/backup/local.pass")
        run = backup_job(summaries, "backup-wrong-password")
        assert run.returncode != 0
        assert "wrong password" in run.output, run.output[-5000:]
        assert metric(fleet, "backup", "local") == 0
    finally:
        on_db(fleet, "sh", "-c", f"printf '%s\\n' '{good.strip()}' > /etc/keelson/backup/local.pass")

    # Nothing deleted: every snapshot is still there (the WAL timer, every 5 min, may
    # have added one once the password was good again).
    def ids(found: list[dict]) -> set[str]:
        return {s["id"] for s in found}

    assert ids(before_local) <= ids(snapshots(fleet, "local", everything=True))
    assert ids(before_offsite) <= ids(snapshots(fleet, "offsite", everything=True))


def test_an_unreachable_offsite_host_fails_loudly_and_the_local_backup_stays(fleet, summaries):
    container = fleet.host(BACKUP).container_name(fleet.name)
    before = len(snapshots(fleet, "local"))
    subprocess.run(["docker", "pause", container], check=True)
    try:
        run = backup_job(summaries, "backup-offsite-down")
    finally:
        subprocess.run(["docker", "unpause", container], check=True)
    assert run.returncode != 0
    assert "copy to offsite failed" in run.output, run.output[-5000:]
    assert metric(fleet, "backup", "local") == 1
    assert metric(fleet, "backup", "offsite") == 0
    assert len(snapshots(fleet, "local")) > before
    # Back: the next run catches up (the missed snapshots are copied too).
    run = backup_job(summaries, "backup-offsite-back")
    assert run.returncode == 0, run.output[-5000:]
    assert metric(fleet, "backup", "offsite") == 1


def test_prometheus_sees_the_backup_results(fleet):
    wait_for_prometheus(fleet, 'keelson_backup_last_run_success{task="backup",repository="offsite"}')


# --- the drill and bad input -----------------------------------------------------------


def test_the_dr_drill_rebuilds_the_database_from_offsite_and_reports_rto_rpo(fleet, summaries):
    names = write_items(fleet, "drill", 5)
    run = lab_playbook(summaries, "dr-drill", "playbooks/dr-drill.yml", "-e", "dr_drill_confirm=yes")
    assert run.returncode == 0, run.output[-10000:]
    assert "Every table is back as it was" in run.output
    m = re.search(r"RTO (\d+) s .*?RPO (\d+) s", run.output, re.S)
    assert m, run.output[-3000:]
    print(f"DR drill: RTO {m.group(1)} s, RPO {m.group(2)} s")
    wait_until_served(fleet)
    got = set(sql(fleet, "SELECT name FROM items WHERE name LIKE 'drill-%'").splitlines())
    assert set(names) <= got


def test_prune_and_check_jobs_succeed_and_keep_the_newest_snapshots(fleet, summaries):
    newest = {
        kind: max(s["time"] for s in snapshots(fleet) if kind in s["tags"]) for kind in ("kind:pgdump", "kind:files")
    }
    for job in ("prune", "check"):
        run = backup_job(summaries, f"job-{job}", job)
        assert run.returncode == 0, run.output[-5000:]
        assert metric(fleet, job, "local") == 1 and metric(fleet, job, "offsite") == 1
    after = snapshots(fleet)
    for kind, when in newest.items():
        assert any(kind in s["tags"] and s["time"] == when for s in after), f"the newest {kind} snapshot was pruned"
    # The local WAL archive still reaches back to the oldest kept base backup.
    bases = [s for s in after if "kind:basebackup" in s["tags"]]
    oldest = min(t.split(":", 1)[1] for s in bases for t in s["tags"] if t.startswith("walstart:"))
    wal = on_db(fleet, "ls", "/var/lib/keelson/postgres/wal-archive").stdout.split()
    segments = sorted(w[8:] for w in wal if len(w) == 24)
    assert segments and segments[0] <= oldest[8:], (oldest, segments[:5])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"backup_keep_daily": 0, "backup_keep_weekly": 0, "backup_keep_monthly": 0}, "keeps nothing"),
        ({"backup_password": ""}, "backup_password"),
        ({"backup_offsite_group": "nowhere"}, "backup_offsite_group"),
    ],
    ids=["retention-keeps-nothing", "no-password", "no-offsite-host"],
)
def test_bad_backup_input_fails_before_any_change(fleet, summaries, extra, message):
    run = lab_playbook(summaries, f"bad-backup-{message[:10]}", "playbooks/stack.yml", "-e", json.dumps(extra))
    assert_refused_before_any_change(run, message)
