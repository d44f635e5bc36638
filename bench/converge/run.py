#!/usr/bin/env python3
"""Benchmark: fresh converge and no-op reruns of the host layers (provision +
harden, the part of site.yml every host gets) on lab fleets of 1, 5 and 10
hosts, each beside `ansible all -m setup` on the same hosts:

- fresh:  the first converge of new hosts;
- noop:   a plain rerun (the fast path: converge stamps let every role skip);
- full:   a rerun with -e connect_fast_path=false (every task runs, as
          before converge stamps);
- with --mitogen, noop and full again with Mitogen's linear strategy
  (KEELSON_MITOGEN=1), side by side.

Prints seconds, ratios to `ansible -m setup`, growth from the smallest fleet
and the forks value in use; never fails for being slow.  The 5-host lab with
the stack: bench/stack and the numbers in RESULTS.md.
Usage:  .venv/bin/python bench/converge/run.py [--sizes 1,5,10] [--mitogen]
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

from keelson.environment import ansible_env, mitogen_env  # noqa: E402
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
    # No monitoring host in a bench fleet: nobody to ship the journal to.
    (directory / "group_vars" / "all" / "bench.yml").write_text("logs_remote_enabled: false\n")
    return directory


def timed(argv: list[str], mitogen: bool = False) -> float:
    env = ansible_env({k: v for k, v in os.environ.items() if k != "KEELSON_MITOGEN"})
    if mitogen:
        env.update(mitogen_env())
    env["ANSIBLE_CALLBACKS_ENABLED"] = "keelson_summary"  # no per-task timer output in the way
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark step failed: {' '.join(argv)}")
    return elapsed


def forks() -> int:
    out = subprocess.run(
        [str(BIN / "ansible-config"), "dump", "--only-changed", "-t", "all"],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in out.splitlines():
        if line.startswith("DEFAULT_FORKS("):
            return int(line.rsplit("=", 1)[1])
    return 5


def measure(size: int, mitogen: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"keelson-bench-{size}-") as tmp:
        inventory = write_inventory(Path(tmp), size)
        fleet = lab_fleet.load_fleet(inventory)
        lab_fleet.down(LAB_NAME, log=lambda _m: None)
        play = [str(BIN / "ansible-playbook"), *HOST_LAYERS, "-i", str(inventory)]
        try:
            lab_fleet.up(fleet, log=lambda _m: None)
            r = {"fresh": timed(play)}
            # After the fresh converge: the deploy user exists and root logins are off.
            r["setup"] = timed([str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.setup"])
            r["noop"] = timed(play)
            r["full"] = timed([*play, "-e", "connect_fast_path=false"])
            if mitogen:
                r["mitogen noop"] = timed(play, mitogen=True)
                r["mitogen full"] = timed([*play, "-e", "connect_fast_path=false"], mitogen=True)
        finally:
            lab_fleet.down(LAB_NAME, log=lambda _m: None)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,5,10", help="comma-separated fleet sizes (default 1,5,10)")
    parser.add_argument("--mitogen", action="store_true", help="also measure the reruns with Mitogen")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"forks = {forks()} (ansible.cfg)")
    columns = ["fresh", "setup", "noop", "full"] + (["mitogen noop", "mitogen full"] if args.mitogen else [])
    print(f"{'hosts':>5} " + " ".join(f"{c + ' s':>14}" for c in columns) + f" {'noop/setup':>11} {'full/setup':>11}")
    first = None
    for size in sizes:
        r = measure(size, args.mitogen)
        first = first or (size, r)
        print(
            f"{size:>5} "
            + " ".join(f"{r[c]:>14.1f}" for c in columns)
            + f" {r['noop'] / r['setup']:>11.1f} {r['full'] / r['setup']:>11.1f}",
            flush=True,
        )
        if first[0] != size:
            growth = ", ".join(f"{c} x{r[c] / first[1][c]:.2f}" for c in columns)
            print(f"      growth from {first[0]} to {size} hosts: {growth}", flush=True)


if __name__ == "__main__":
    main()
