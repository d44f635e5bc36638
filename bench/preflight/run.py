#!/usr/bin/env python3
"""Benchmark: how long until a bad value is refused, with no host contacted.

For each playbook the issue names (site, upgrade, rollback, onboard, patch,
restore), one bad value on the production example inventory (6 hosts) and on
the single-server one (1 host), every host pointed at 127.0.0.1 port 1 (nothing
listens there; the run would report a contacted host unreachable). Beside them,
the floor: `ansible-playbook --syntax-check` of the same playbook (Ansible's
start and parsing, no task). Also the time the whole preflight takes when the
input is good.

Prints seconds and ratios measured side by side in one run; never fails for
being slow. Usage:  .venv/bin/python bench/preflight/run.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from tests.unit.test_preflight import NOWHERE, PROD, SINGLE  # noqa: E402

CASES = [
    ("site.yml", {"ssh_port": 99999}),
    ("playbooks/upgrade.yml", {"app_memory_limit": "big"}),
    ("playbooks/rollback.yml", {"app_slots": []}),
    ("playbooks/onboard.yml", {"edge_domains": []}),
    ("playbooks/patch.yml", {"patch_reboot_timeout": 0}),
    ("playbooks/restore.yml", {"postgres_settings": {"shared_buffers": "lots"}}),
]


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env["ANSIBLE_CALLBACKS_ENABLED"] = "keelson_summary"  # no per-task timer, no audit line
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return time.monotonic() - start, proc


def median_run(argv: list[str], repeat: int, expect_fail: bool) -> float:
    times = []
    for _ in range(repeat):
        elapsed, proc = timed(argv)
        failed = proc.returncode != 0
        if failed != expect_fail or "UNREACHABLE" in proc.stdout:
            raise SystemExit(f"unexpected result of {' '.join(argv)}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    playbook_bin = str(BIN / "ansible-playbook")
    inventories = {"prod (6 hosts)": PROD, "single (1 host)": SINGLE}
    print(f"median of {args.repeat} runs, seconds; floor = --syntax-check of the same playbook")
    print(f"{'playbook':<26} {'inventory':<16} {'refused':>8} {'floor':>7} {'ratio':>6}")
    for playbook, bad in CASES:
        floor = median_run([playbook_bin, playbook, *PROD, "--syntax-check"], args.repeat, expect_fail=False)
        for label, inventory in inventories.items():
            argv = [playbook_bin, playbook, *inventory, *NOWHERE, "-e", json.dumps(bad)]
            refused = median_run(argv, args.repeat, expect_fail=True)
            print(f"{playbook:<26} {label:<16} {refused:8.1f} {floor:7.1f} {refused / floor:6.1f}")
    for label, inventory in inventories.items():
        good = median_run(
            [playbook_bin, "playbooks/preflight.yml", *inventory, *NOWHERE], args.repeat, expect_fail=False
        )
        print(f"{'preflight, good input':<26} {label:<16} {good:8.1f}")


if __name__ == "__main__":
    main()
