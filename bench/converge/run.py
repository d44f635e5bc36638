#!/usr/bin/env python3
"""Benchmark: fresh converge and no-op rerun of the host layers (provision +
harden, the part of site.yml every host gets) on lab fleets of 1, 3 and 6
hosts, each beside `ansible all -m setup` on the same hosts.  The stack has
its own benchmark (bench/stack).

Prints seconds and ratios measured side by side in one run; never fails for
being slow.  Usage:  .venv/bin/python bench/converge/run.py [--sizes 1,3,6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from keelson.lab import fleet as lab_fleet  # noqa: E402

BIN = Path(sys.executable).parent
LAB_NAME = "keelson-bench"
SUBNET = "172.30.78.0/24"
HOST_LAYERS = ["playbooks/provision.yml", "playbooks/harden.yml"]


def write_inventory(directory: Path, size: int) -> Path:
    """A lab inventory of `size` hosts, alternating Debian 13 and 12."""
    hosts = {}
    for index in range(size):
        hosts[f"bench-h{index + 1}"] = {
            "ansible_host": f"172.30.78.{11 + index}",
            "keelson_lab_release": "13" if index % 2 == 0 else "12",
        }
    # A group of their own: no service group, so no Docker and no stack.
    inventory = {"all": {"children": {"bench": {"hosts": dict.fromkeys(hosts)}}, "hosts": hosts}}
    (directory / "group_vars" / "all").mkdir(parents=True)
    (directory / "hosts.yml").write_text(json.dumps(inventory, indent=1))
    lab_vars = (ROOT / "inventories" / "lab" / "group_vars" / "all" / "lab.yml").read_text()
    lab_vars = lab_vars.replace("keelson_lab_name: keelson", f"keelson_lab_name: {LAB_NAME}")
    lab_vars = lab_vars.replace("keelson_lab_subnet: 172.30.77.0/24", f"keelson_lab_subnet: {SUBNET}")
    (directory / "group_vars" / "all" / "lab.yml").write_text(lab_vars)
    main = (ROOT / "inventories" / "lab" / "group_vars" / "all" / "main.yml").read_text()
    main = main.replace("172.30.77.1/32", "172.30.78.1/32")  # the controller on the bench network
    (directory / "group_vars" / "all" / "main.yml").write_text(main)
    return directory


def timed(argv: list[str]) -> float:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env["ANSIBLE_CALLBACKS_ENABLED"] = "keelson_summary"  # no per-task timer output in the way
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark step failed: {' '.join(argv)}")
    return elapsed


def measure(size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"keelson-bench-{size}-") as tmp:
        inventory = write_inventory(Path(tmp), size)
        fleet = lab_fleet.load_fleet(inventory)
        lab_fleet.down(LAB_NAME, log=lambda _m: None)
        try:
            lab_fleet.up(fleet, log=lambda _m: None)
            fresh = timed([str(BIN / "ansible-playbook"), *HOST_LAYERS, "-i", str(inventory)])
            # After the fresh converge: the deploy user exists and root logins are off.
            setup = timed([str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.setup"])
            rerun = timed([str(BIN / "ansible-playbook"), *HOST_LAYERS, "-i", str(inventory)])
        finally:
            lab_fleet.down(LAB_NAME, log=lambda _m: None)
    return {"setup": setup, "fresh": fresh, "rerun": rerun}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,3,6", help="comma-separated fleet sizes (default 1,3,6)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'hosts':>5} {'setup s':>8} {'fresh s':>8} {'rerun s':>8} {'fresh/setup':>12} {'rerun/setup':>12}")
    for size in sizes:
        r = measure(size)
        print(
            f"{size:>5} {r['setup']:>8.1f} {r['fresh']:>8.1f} {r['rerun']:>8.1f}"
            f" {r['fresh'] / r['setup']:>12.1f} {r['rerun'] / r['setup']:>12.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
