"""Probing lab hosts from other lab hosts: one named host and port at a time."""

from __future__ import annotations

import json
import subprocess
import time

from keelson.lab import fleet as lab_fleet
from tests.e2e.conftest import DEPLOY_USER

# Prints open (connected), refused (RST: the firewall let it through, nothing
# listens) or filtered (no answer: dropped).
PROBE = (
    "import socket,sys\n"
    "s=socket.socket(); s.settimeout(3)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
    "except ConnectionRefusedError: print('refused')\n"
    "except OSError: print('filtered')\n"
)


def on_host(lab: lab_fleet.Fleet, name: str, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a command on a lab host as the deploy user over SSH."""
    ssh = lab_fleet.ssh_command(lab, lab.host(name), user=DEPLOY_USER)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    return subprocess.run([*ssh, quoted], capture_output=True, text=True, timeout=timeout, check=False)


def probe(lab: lab_fleet.Fleet, source: str, target: str, port: int) -> str:
    """Try a TCP connection from lab host ``source`` to lab host ``target``."""
    result = on_host(lab, source, "python3", "-c", PROBE, lab.host(target).address, str(port))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for_prometheus(lab: lab_fleet.Fleet, query: str, value: str = "1", timeout: float = 120) -> None:
    """Until the lab's Prometheus (on lab-edge1) answers ``query`` with ``value`` as its first result."""
    deadline = time.monotonic() + timeout
    while True:
        out = on_host(
            lab,
            "lab-edge1",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
            f"query={query}",
        ).stdout
        result = json.loads(out or "{}").get("data", {}).get("result", [])
        if result and result[0]["value"][1] == value:
            return
        assert time.monotonic() < deadline, f"Prometheus: {query} is not {value}: {out}"
        time.sleep(5)
