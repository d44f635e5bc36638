"""The keelson_audit callback: one JSON line per run, on the controller and on the hosts."""

from __future__ import annotations

import getpass
import importlib.util
import json
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, run_playbook

PLAYBOOK = """
- name: Exercise the audit callback
  hosts: all
  gather_facts: false
  tasks:
    - name: Touch the host
      ansible.builtin.command: "true"
      changed_when: true
"""

FAILING = """
- name: Fail on purpose
  hosts: all
  gather_facts: false
  tasks:
    - name: Fail but carry on
      ansible.builtin.fail:
        msg: ignored failure
      ignore_errors: true
    - name: Fail and be rescued
      block:
        - name: Fail inside the block
          ansible.builtin.fail:
            msg: rescued failure
      rescue:
        - name: Rescue
          ansible.builtin.debug:
            msg: rescued
    - name: Fail for real
      ansible.builtin.fail:
        msg: "boom {{ 'x' * 600 }}"
"""

STATS = {"ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"}


def _plugin():
    spec = importlib.util.spec_from_file_location("keelson_audit", ROOT / "plugins/callback/keelson_audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def audit_log(tmp_path, monkeypatch):
    """The controller log in tmp_path; the plugin enabled; no host copy unless a test asks."""
    log = tmp_path / "state" / "keelson" / "audit.jsonl"
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "keelson_audit")
    monkeypatch.setenv("KEELSON_AUDIT_LOG", str(log))
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY", "false")
    monkeypatch.delenv("KEELSON_AUDIT_DISABLED", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    return log


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(playbook, *args):
    # The controller's own Python: interpreter discovery can pick a pyenv shim that fails.
    local = ("-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}")
    return run_playbook(playbook, *local, *args, summary_file=None)


def _git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding the playbook at playbooks/audit.yml, committed."""
    repo = tmp_path / "repo"
    (repo / "playbooks").mkdir(parents=True)
    (repo / "playbooks" / "audit.yml").write_text(PLAYBOOK)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "playbook")
    return repo


def test_a_run_appends_one_line_with_who_what_where_and_outcome(checkout, audit_log, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "alice")
    run = _run(checkout / "playbooks" / "audit.yml", "--check", "--limit", "localhost")
    assert run.returncode == 0, run.output
    [line] = _lines(audit_log)
    assert line["user"] == getpass.getuser()
    assert line["sudo_user"] == "alice"
    assert line["commit"] == _git(checkout, "rev-parse", "HEAD")
    assert line["dirty"] is False
    assert line["playbook"] == "playbooks/audit.yml"
    assert line["inventory"] == ["localhost,"]
    assert line["limit"] == "localhost"
    assert line["check"] is True
    assert line["result"] == "ok"
    assert line["failed_hosts"] == [] and line["failures"] == {}
    assert set(line["hosts"]) == {"localhost"}
    assert set(line["hosts"]["localhost"]) == STATS
    assert line["hosts"]["localhost"]["failed"] == 0
    assert line["duration_s"] > 0
    assert line["started"].endswith("Z") and line["ended"] >= line["started"]
    assert line["host_copy"] is None
    assert audit_log.stat().st_mode & 0o777 == 0o600
    assert audit_log.parent.stat().st_mode & 0o777 == 0o700


def test_a_second_run_appends_and_sees_the_checkout_dirty(checkout, audit_log):
    _run(checkout / "playbooks" / "audit.yml")
    (checkout / "untracked.txt").write_text("edit")
    _run(checkout / "playbooks" / "audit.yml")
    first, second = _lines(audit_log)
    assert (first["dirty"], second["dirty"]) == (False, True)
    assert second["started"] >= first["started"]


def test_a_failed_run_records_the_failed_host_and_the_failure_that_failed_it(tmp_path, audit_log):
    playbook = tmp_path / "fail.yml"
    playbook.write_text(FAILING)
    run = _run(playbook)
    assert run.returncode != 0
    [line] = _lines(audit_log)
    assert line["result"] == "failed"
    assert line["failed_hosts"] == ["localhost"]
    assert line["hosts"]["localhost"]["failed"] == 1
    assert line["hosts"]["localhost"]["rescued"] == 1
    failure = line["failures"]["localhost"]
    assert failure["task"] == "Fail for real"
    assert failure["msg"].startswith("boom xxx")
    assert len(failure["msg"]) == 500
    # Outside a git checkout: no commit, the playbook's absolute path.
    assert line["commit"] == "unknown"
    assert line["playbook"] == str(playbook.resolve())


def test_extra_vars_are_recorded_by_name_never_by_value(tmp_path, audit_log):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    vars_file = tmp_path / "vault.yml"
    vars_file.write_text("file_secret: s3cr3t-in-file\n")
    run = _run(
        playbook,
        "-e",
        "secret_thing=hunter2",
        "-e",
        '{"api_token": "tok-123", "app_image": "keelson-lab/app:v2"}',
        "-e",
        f"@{vars_file}",
    )
    assert run.returncode == 0, run.output
    text = audit_log.read_text()
    for secret in ("hunter2", "tok-123", "s3cr3t-in-file"):
        assert secret not in text
    [line] = _lines(audit_log)
    names = ["ansible_python_interpreter", "secret_thing", "api_token", "app_image", f"@{vars_file}"]
    assert line["extra_vars"] == names
    assert line["release"] == "keelson-lab/app:v2"


def test_disabled_writes_nothing(tmp_path, audit_log, monkeypatch):
    monkeypatch.setenv("KEELSON_AUDIT_DISABLED", "1")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    run = _run(playbook)
    assert run.returncode == 0, run.output
    assert not audit_log.parent.parent.exists()


def test_each_reachable_host_gets_the_same_line_but_localhost_and_unreachable_ones_do_not(
    tmp_path, audit_log, monkeypatch
):
    # Three names for this machine: 'target' gets the copy, 'localhost' is skipped by name
    # (or the file would hold two lines), 'gone' is unreachable (nothing listens on port 1).
    host_log = tmp_path / "hostlog" / "keelson" / "audit.jsonl"
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY", "true")
    monkeypatch.setenv("KEELSON_AUDIT_HOST_LOG", str(host_log))
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY_BECOME", "false")
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"target {local}\nlocalhost {local}\ngone ansible_host=127.0.0.1 ansible_port=1\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    run = run_playbook(playbook, "-i", str(inventory), summary_file=None)
    assert run.returncode == 4, run.output  # 4: a host was unreachable
    [controller] = _lines(audit_log)
    assert controller["result"] == "failed"
    assert controller["failed_hosts"] == ["gone"]
    assert controller["host_copy"] == {"ok": ["target"], "failed": {}}
    [copy] = _lines(host_log)
    del controller["host_copy"]
    assert copy == controller
    assert host_log.stat().st_mode & 0o777 == 0o640
    assert host_log.parent.stat().st_mode & 0o777 == 0o750


def test_a_run_that_only_ran_controller_tasks_copies_to_no_host(tmp_path, audit_log, monkeypatch):
    # Input checks (assert, set_fact, include_role of a validate entry point) never reach the
    # host: a run they refuse must not touch it either, not even for the audit copy.
    host_log = tmp_path / "hostlog" / "audit.jsonl"
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY", "true")
    monkeypatch.setenv("KEELSON_AUDIT_HOST_LOG", str(host_log))
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY_BECOME", "false")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"target ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        """
- name: Only check input
  hosts: all
  gather_facts: false
  tasks:
    - name: Remember something
      ansible.builtin.set_fact:
        seen: true
    - name: Refuse the input
      ansible.builtin.assert:
        that: false
        fail_msg: bad input
"""
    )
    run = run_playbook(playbook, "-i", str(inventory), summary_file=None)
    assert run.returncode == 2, run.output
    [line] = _lines(audit_log)
    assert line["result"] == "failed"
    assert line["failures"]["target"]["msg"] == "bad input"
    assert line["host_copy"] is None
    assert not host_log.exists()


def test_which_tasks_reach_their_host():
    plugin = _plugin()
    assert not plugin.contacts_host("ansible.builtin.assert", None)
    assert not plugin.contacts_host("validate_argument_spec", None)
    assert not plugin.contacts_host("ansible.legacy.include_role", None)
    assert plugin.contacts_host("ansible.builtin.command", None)
    assert plugin.contacts_host("community.docker.docker_compose_v2", None)
    assert not plugin.contacts_host("ansible.builtin.command", "localhost")


def test_a_failed_host_copy_warns_and_does_not_fail_the_run(tmp_path, audit_log, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY", "true")
    monkeypatch.setenv("KEELSON_AUDIT_HOST_LOG", str(blocker / "keelson" / "audit.jsonl"))
    monkeypatch.setenv("KEELSON_AUDIT_HOST_COPY_BECOME", "false")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"target ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    run = run_playbook(playbook, "-i", str(inventory), summary_file=None)
    assert run.returncode == 0, run.output
    assert "no audit copy on target" in run.output
    [line] = _lines(audit_log)
    assert line["result"] == "ok"
    assert line["host_copy"]["ok"] == []
    assert "Not a directory" in line["host_copy"]["failed"]["target"]


def test_the_host_command_appends_the_line_verbatim_whatever_it_contains(tmp_path):
    plugin = _plugin()
    line = json.dumps({"msg": 'it\'s "quoted" $(touch pwned) `id` \\n %s %d;|&'})
    target = tmp_path / "dir with space" / "audit.jsonl"
    for _ in range(2):
        subprocess.run(["sh", "-c", plugin.remote_append_command(line, str(target))], cwd=tmp_path, check=True)
    assert target.read_text() == f"{line}\n{line}\n"
    assert not (tmp_path / "pwned").exists()


def test_extra_var_names_from_each_form_of_dash_e():
    plugin = _plugin()
    names, release = plugin.extra_var_names(
        ['a=1 b="two words"', "{c: 3}", "@vars/prod.yml", "app_image=r/app:v1", "words", "{broken", ""]
    )
    assert names == ["a", "b", "c", "@vars/prod.yml", "app_image"]
    assert release == "r/app:v1"


def test_a_host_copy_that_hangs_is_killed_with_its_children_after_the_timeout():
    plugin = _plugin()
    started = time.monotonic()
    # The background sleep holds the output pipe: only killing the whole group ends the wait.
    outcome = plugin.run_host_copy(["sh", "-c", "sleep 30 & sleep 30"], ["web1"], timeout=1)
    assert time.monotonic() - started < 10
    assert outcome == {"ok": [], "failed": {"web1": "timed out after 1 s"}}
