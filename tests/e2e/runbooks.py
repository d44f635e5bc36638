"""The runbooks' commands, executed against the lab.

A runbook (docs/runbooks/*.md) names its commands in ```console blocks, one per
``$ `` line, with ``<placeholders>`` for what differs per fleet. The e2e tests run
those very lines through the ``keelson`` CLI against the lab inventory (the CLI passes
the environment on to ansible-playbook, so the keelson_summary callback still writes the
JSON summary the tests read), and note each one in ``RAN``; the last runbook test checks
that every command of every runbook ran.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.helpers import BIN, ROOT, PlaybookRun, tool_env

RUNBOOKS = ROOT / "docs" / "runbooks"
NAMES = sorted(p.stem for p in RUNBOOKS.glob("*.md") if p.stem != "README")
_BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)

# (runbook, command as written) for each command run in this session.
RAN: set[tuple[str, str]] = set()


def commands(name: str) -> list[str]:
    """The ``$ `` lines of the runbook's console blocks, as written."""
    text = (RUNBOOKS / f"{name}.md").read_text()
    return [line[2:].strip() for block in _BLOCK.findall(text) for line in block.splitlines() if line.startswith("$ ")]


def cli(
    *args: str, inventory: Path, summary_file: Path | None = None, timeout: int = 1800
) -> subprocess.CompletedProcess:
    """Run ``keelson ARGS`` against ``inventory`` from the project root (output captured)."""
    env = tool_env()
    env["KEELSON_INVENTORY"] = str(inventory)
    env.pop("KEELSON_SUMMARY_FILE", None)
    if summary_file is not None:
        env["KEELSON_SUMMARY_FILE"] = str(summary_file)
        summary_file.unlink(missing_ok=True)
    env.setdefault("COLUMNS", "200")
    return subprocess.run(
        [str(BIN / "keelson"), *args],
        cwd=ROOT,
        env={**env, "NO_COLOR": "1", "TERM": os.environ.get("TERM", "dumb")},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def run(
    name: str,
    command: str,
    *,
    inventory: Path,
    summary_file: Path | None = None,
    timeout: int = 1800,
    **placeholders: str,
) -> PlaybookRun:
    """Run one command of runbook ``name`` (it must be written there) against ``inventory``."""
    assert command in commands(name), f"docs/runbooks/{name}.md has no command {command!r}: {commands(name)}"
    line = command
    for key, value in placeholders.items():
        line = line.replace(f"<{key.replace('_', '-')}>", value)
    assert "<" not in line, f"placeholder left in {line!r}"
    argv = shlex.split(line)
    assert argv[0] == "keelson", f"runbook commands are keelson commands: {command!r}"
    proc = cli(*argv[1:], inventory=inventory, summary_file=summary_file, timeout=timeout)
    RAN.add((name, command))
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, summary)
