"""The keelson_summary callback: the run summary tests and benchmarks read."""

from __future__ import annotations

import sys

from tests.helpers import run_playbook

PLAYBOOK = """
- name: Exercise the summary callback
  hosts: all
  gather_facts: false
  tasks:
    - name: Report a change
      ansible.builtin.command: "true"
      changed_when: true
    - name: Report no change
      ansible.builtin.debug:
        msg: nothing
    - name: Fail but carry on
      ansible.builtin.command: "false"
      changed_when: false
      ignore_errors: true
"""


def _run(playbook, **kwargs):
    # The controller's own Python: interpreter discovery can pick a pyenv shim that fails.
    local = ("-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}")
    return run_playbook(playbook, *local, **kwargs)


def test_summary_records_stats_and_each_changed_task(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    summary_file = tmp_path / "out" / "summary.json"
    run = _run(playbook, summary_file=summary_file)
    assert run.returncode == 0, run.output
    stats = run.summary["hosts"]["localhost"]
    assert stats["changed"] == 1
    assert stats["ok"] == 3
    assert stats["ignored"] == 1
    assert run.changed_tasks() == ["localhost: Report a change"]
    assert run.summary["failed_tasks"] == []


def test_no_file_is_written_without_the_variable(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    run = _run(playbook, summary_file=None, cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert run.summary == {}
    assert list(tmp_path.iterdir()) == [playbook]
