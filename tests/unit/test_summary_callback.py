"""The keelson_summary callback: the run summary tests and benchmarks read."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import BIN, ROOT, run_playbook, tool_env

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


def test_summary_records_stats_and_each_changed_task(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    summary_file = tmp_path / "out" / "summary.json"
    run = run_playbook(
        playbook,
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        summary_file=summary_file,
    )
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
    env = tool_env()
    env.pop("KEELSON_SUMMARY_FILE", None)
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            str(playbook),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [playbook]
    assert not (ROOT / "summary.json").exists()
