"""Shared helpers for Keelson's test suite (paths, tool environment, playbook runs)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from keelson.environment import ansible_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    summary: dict

    def changed_tasks(self) -> list[str]:
        return [f"{t['host']}: {t['task']}" for t in self.summary.get("changed_tasks", [])]


def tool_env() -> dict[str, str]:
    """The environment for Ansible tools (the venv first on PATH, our ansible.cfg), quiet
    and with the tests' own audit trail."""
    env = ansible_env()
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env["ANSIBLE_NOCOLOR"] = "1"
    # Test runs keep their audit trail out of the operator's own (docs/audit.md),
    # and copy it to the hosts only where a test asks (run_playbook(audit_hosts=True)):
    # the copy is one more ansible run at the end of every playbook.
    env.setdefault("KEELSON_AUDIT_LOG", str(ROOT / ".cache" / "test-audit.jsonl"))
    env.setdefault("KEELSON_AUDIT_HOST_COPY", "false")
    return env


def run_playbook(
    playbook: str | Path,
    *args: str,
    summary_file: Path | None,
    timeout: int = 1800,
    cwd: Path = ROOT,
    audit_hosts: bool = False,
) -> PlaybookRun:
    """Run ansible-playbook (from the project root by default); return output and the JSON summary.
    With ``summary_file=None`` the keelson_summary callback is given no file; ``audit_hosts``
    lets keelson_audit copy its line to the hosts of the run."""
    env = tool_env()
    if audit_hosts:
        env["KEELSON_AUDIT_HOST_COPY"] = "true"
    env.pop("KEELSON_SUMMARY_FILE", None)
    if summary_file is not None:
        env["KEELSON_SUMMARY_FILE"] = str(summary_file)
        summary_file.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), str(playbook), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, summary)


def module_doc(name: str) -> dict:
    """`ansible-doc --json` of one of our modules (plugins/modules): its doc, examples and return."""
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "-M", "plugins/modules", "--json", name],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[name]


class Clock:
    """A clock that moves one minute per call, so every release gets its own time."""

    def __init__(self):
        self.now = datetime.datetime(2026, 5, 9, 7, 0, 0, tzinfo=datetime.UTC)

    def __call__(self):
        self.now += datetime.timedelta(minutes=1)
        return self.now
