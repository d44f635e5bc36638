"""The one place that builds and starts ``ansible-playbook`` for the ``keelson`` commands.

Each command is a playbook plus extra variables; :func:`playbook_command` makes
the argument list, :func:`launch` is the only function that starts a process
(tests replace it to prove that refused input starts nothing), and
:class:`Progress` follows ansible's output (plays, tasks, per-host results and
the recap) for the live line and the TUI.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keelson.environment import BIN, ROOT, tool_env

# command → playbook (relative to the repository root)
PLAYBOOKS = {
    "up": "site.yml",
    "deploy": "playbooks/stack.yml",
    "upgrade": "playbooks/upgrade.yml",
    "rollback": "playbooks/rollback.yml",
    "backup": "playbooks/backup.yml",
    "restore": "playbooks/restore.yml",
    "onboard": "playbooks/onboard.yml",
    "down": "playbooks/down.yml",
    "prune": "playbooks/prune.yml",
    "status": "playbooks/status.yml",
}
BACKUP_JOBS = ("backup", "wal", "prune", "check", "restore-test")
# upgrade_serial as the playbooks accept it: hosts per batch or a percentage.
SERIAL = re.compile(r"^([1-9][0-9]*|([1-9][0-9]?|100)%)$")
_PLAIN = re.compile(r"^[A-Za-z0-9_./:@%+=,-]+$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def extra_var(name: str, value: object) -> list[str]:
    """``-e name=value`` for plain strings, JSON otherwise (spaces, quotes, non-strings)."""
    if isinstance(value, str) and _PLAIN.match(value):
        return ["-e", f"{name}={value}"]
    return ["-e", json.dumps({name: value})]


def playbook_command(
    command: str,
    inventory: Path,
    extra_vars: Mapping[str, object] | None = None,
    *,
    limit: str | None = None,
    check: bool = False,
    passthrough: Sequence[str] = (),
) -> list[str]:
    """The ansible-playbook argument list of one keelson command."""
    argv = [str(BIN / "ansible-playbook"), PLAYBOOKS[command], "-i", str(inventory)]
    if limit:
        argv += ["-l", limit]
    for name, value in (extra_vars or {}).items():
        argv += extra_var(name, value)
    if check:
        argv += ["--check", "--diff"]
    return argv + list(passthrough)


def launch(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process with its output on a pipe (stderr merged).  The only launcher."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        errors="replace",
    )


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line)


_PLAY = re.compile(r"^PLAY \[(?P<name>.*)\] \**\s*$")
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**")
_RESULT = re.compile(r"^(?P<status>ok|changed|skipping|fatal|failed|unreachable): \[(?P<host>[^\]]+)\]")
_RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:[a-z]+=\d+\s*)+)$")


@dataclass
class Progress:
    """What an ansible-playbook run is doing, from its output lines."""

    play: str = ""
    task: str = ""
    tasks: int = 0
    hosts: dict[str, str] = field(default_factory=dict)  # host → last status
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("ok", "changed", "failed", "unreachable"), 0))
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    in_recap: bool = False

    def feed(self, line: str) -> None:
        text = strip_ansi(line).rstrip()
        if text.startswith("PLAY RECAP"):
            self.in_recap = True
            return
        if self.in_recap:
            match = _RECAP.match(text)
            if match:
                self.recap[match["host"]] = {
                    k: int(v) for k, v in (item.split("=") for item in match["counts"].split())
                }
            return
        if match := _PLAY.match(text):
            self.play, self.task = match["name"], ""
        elif match := _TASK.match(text):
            self.task = match["name"]
            self.tasks += 1
        elif match := _RESULT.match(text):
            status = match["status"]
            if status == "fatal":
                status = "unreachable" if "UNREACHABLE" in text else "failed"
            if status == "skipping":
                status = "skipped"
            self.hosts[match["host"]] = status
            if status in self.counts:
                self.counts[status] += 1

    def line(self) -> str:
        """One line for the live display."""
        where = f"{self.play or '…'}"
        if self.task:
            where += f" › {self.task}"
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"{where}  [{len(self.hosts)} hosts, task {self.tasks}, {counts}]"

    def recap_failed(self) -> list[str]:
        return sorted(h for h, c in self.recap.items() if c.get("failed", 0) or c.get("unreachable", 0))


def run(
    argv: Sequence[str],
    on_line: Callable[[str, Progress], None] | None = None,
    env: Mapping[str, str] | None = None,
    launcher: Callable[..., subprocess.Popen] | None = None,
) -> tuple[int, Progress]:
    """Run to the end, passing each output line (and the progress so far) to ``on_line``."""
    progress = Progress()
    proc = (launcher or launch)(argv, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            progress.feed(line)
            if on_line:
                on_line(line.rstrip("\n"), progress)
        return proc.wait(), progress
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
