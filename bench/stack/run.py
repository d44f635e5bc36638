#!/usr/bin/env python3
"""Benchmark: the stack on the lab, measured side by side in one run.

- ``delivery``: one image sent to one host by Keelson's archive delivery
  (docker save on the controller, copy, docker load, image id checked), cold
  (nothing cached) and warm (the archive cached on the controller), beside the
  raw ``docker save | ssh host docker load`` pipe; and a no-op delivery (the
  host has the image).
- ``stack``: a no-op run of playbooks/stack.yml on the converged lab beside
  ``ansible all -m setup`` (the floor any run pays).

Needs the lab up and converged (``make lab``).  Prints seconds and ratios;
never fails for being slow.  Usage:
    .venv/bin/python bench/stack/run.py [--image keelson-lab/app:v2] [--host lab-app2]
"""

from __future__ import annotations

import argparse
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
INVENTORY = ROOT / "inventories" / "lab"


def _env() -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env["ANSIBLE_CALLBACKS_ENABLED"] = "keelson_summary"
    return env


def timed(argv: list[str], *, shell: bool = False) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, check=False, shell=shell)  # noqa: S603
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark step failed: {argv}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="keelson-lab/app:v2", help="an image the host does not run")
    parser.add_argument("--host", default="lab-app2", help="lab host to deliver to")
    args = parser.parse_args()
    fleet = lab_fleet.load_fleet(INVENTORY)
    ssh = lab_fleet.ssh_command(fleet, fleet.host(args.host), user="keelson")

    def on_host(*argv: str) -> None:
        subprocess.run([*ssh, " ".join(argv)], capture_output=True, text=True, check=False, timeout=300)

    def forget() -> None:
        on_host("sudo", "docker", "image", "rm", "-f", args.image)

    playbook = [str(BIN / "ansible-playbook"), "bench/stack/deliver.yml", "-i", str(INVENTORY), "-l", args.host]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="keelson-bench-cache-") as cache:
        extra = ["-e", f"image={args.image}", "-e", f"compose_project_archive_cache={cache}"]
        forget()
        results["keelson cold"] = timed([*playbook, *extra])
        forget()
        results["keelson warm"] = timed([*playbook, *extra])
        results["keelson no-op"] = timed([*playbook, *extra])
    forget()
    # The same pipe an operator would type; the image name is ours, the host comes from the lab inventory.
    pipe = f"docker save {args.image} | {' '.join(ssh)} sudo docker load"
    results["raw save|load"] = timed(pipe, shell=True)  # type: ignore[arg-type]
    results["setup"] = timed([str(BIN / "ansible"), "all", "-i", str(INVENTORY), "-m", "setup"])
    results["stack no-op"] = timed([str(BIN / "ansible-playbook"), "playbooks/stack.yml", "-i", str(INVENTORY)])

    raw = results["raw save|load"]
    print(f"image {args.image} -> {args.host}")
    for name, seconds in results.items():
        print(f"  {name:<16} {seconds:7.1f} s")
    print(f"  cold/raw {results['keelson cold'] / raw:.2f}   warm/raw {results['keelson warm'] / raw:.2f}")
    print(f"  stack no-op/setup {results['stack no-op'] / results['setup']:.1f}")


if __name__ == "__main__":
    main()
