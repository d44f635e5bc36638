"""Traffic through the lab's edge while a playbook changes the fleet, and what
HAProxy and the app slots say about it (tests/e2e/test_60_upgrade.py, test_70_onboard.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from keelson.load import LoadGenerator, LoadResult
from tests.e2e.https import CA_CERT, DOMAIN, edge_address
from tests.e2e.probe import on_host

# 4 requests/s from one address: under the lab's rate limit (50 per 10 s) with room for the tests' own.
RATE = 4.0


@contextlib.contextmanager
def load(lab, seconds: float = 900) -> Iterator[LoadGenerator]:
    """Constant requests through the edge while the block runs (bounded: RATE/s, ``seconds`` at most)."""
    generator = LoadGenerator(
        f"https://{DOMAIN}/version",
        workers=4,
        rate=RATE,
        max_requests=int(RATE * seconds) + 1,
        max_seconds=seconds,
        timeout=10.0,
        ca_file=str(CA_CERT),
        connect_address=(edge_address(lab), 443),
        paths=["/version", "/readyz"],
        tally_json_field="release",
    )
    with generator:
        yield generator


def no_failures(result: LoadResult) -> None:
    assert result.sent >= 20, result.summary()
    assert result.failed == 0, f"{result.summary()}\n{result.failures[:20]}"


def slot_versions(lab, host: str) -> dict[str, dict]:
    """/version of each running slot of ``host``, asked on the host itself."""
    found = {}
    for slot, port in (("blue", 8001), ("green", 8002)):
        out = on_host(lab, host, "curl", "-fsS", "--max-time", "5", f"http://127.0.0.1:{port}/version")
        if out.returncode == 0:
            found[slot] = json.loads(out.stdout)
    return found


def serving(lab, host: str) -> set[str]:
    """Releases the host's running slots serve."""
    return {v["release"] for v in slot_versions(lab, host).values()}


def edge_states(lab) -> dict[str, str]:
    """Status of every app server in HAProxy on the edge (UP, DOWN, MAINT, DRAIN ...)."""
    return {name: row["status"] for name, row in edge_servers(lab).items()}


def edge_command(lab, command: str) -> str:
    """Send one command to HAProxy's runtime API on the edge and return its answer."""
    out = on_host(
        lab,
        "lab-edge1",
        "sudo",
        "python3",
        "-c",
        "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect('/run/keelson-edge/admin.sock');"
        "s.sendall(sys.argv[1].encode()+b'\\n');d=b''\n"
        "while True:\n c=s.recv(65536)\n if not c: break\n d+=c\nprint(d.decode())",
        command,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def edge_servers(lab) -> dict[str, dict[str, str]]:
    """HAProxy's `show stat` row of every server of backend app on the edge."""
    stat = edge_command(lab, "show stat")
    header = stat.lstrip("# ").splitlines()[0].split(",")
    states = {}
    for line in stat.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "app" and row.get("svname") not in ("FRONTEND", "BACKEND"):
            states[row["svname"]] = row
    return states
