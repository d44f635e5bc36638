#!/usr/bin/env python3
"""Benchmark: a rolling upgrade of the lab under load, beside steady load and a bare container start, in one run.

Requests go through the lab's HTTPS edge (https://lab.keelson.test/ at lab-edge1's
lab address, verified against the lab's CA) at ``--rate`` per second, on
/version and /readyz in turn, counting the releases that answer:

- ``steady``: ``--steady-seconds`` of load with nothing else happening;
- ``upgrade``: the same load while ``playbooks/upgrade.yml -e app_image=<--to>
  -e upgrade_backup=false`` runs, and 3 s more; then the same back to ``--from``,
  so the lab ends as it began (a second sample).  The playbook's output is read
  as it streams: the time between its ``PLAY [...]`` headers gives each play's
  time, and each batch of the switch play (one host per batch) its own;
- ``baseline``: on one app host (``--host``), a throwaway container of the
  ``--to`` image started like the active slot's app container (its
  environment, secrets, network and limits; published on 127.0.0.1:8099 only),
  timed from ``docker run`` until it passes the lab's health gate (/readyz 200
  and /version naming the release, 3 times in a row, 1 s apart); removed after
  each sample.  Median of ``--samples-baseline``.

Prints latencies (ms) and their upgrade/steady ratios, failed requests, the
releases seen, the playbook's times and per host / baseline.  Needs the lab up
and converged on ``--from`` (``make lab``); refuses to start otherwise.  Never
fails for being slow.  Usage:
    .venv/bin/python bench/upgrade/run.py [--rate 4] [--steady-seconds 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from keelson.lab import fleet as lab_fleet  # noqa: E402
from keelson.load import LoadGenerator, LoadResult  # noqa: E402
from tests.e2e.https import CA_CERT, DOMAIN, edge_address, request  # noqa: E402
from tests.helpers import tool_env  # noqa: E402

BIN = Path(sys.executable).parent
INVENTORY = ROOT / "inventories" / "lab"
DEPLOY_USER = "keelson"
APP_GROUP = "app"
PATHS = ["/version", "/readyz"]
WORKERS = 4
# The lab's edge allows 50 requests per 10 s from one client address (inventories/lab/group_vars/all/stack.yml).
EDGE_LIMIT_PER_10S = 50
# Bounds of each load during an upgrade, and of each playbook run.
UPGRADE_MAX_SECONDS = 900
PLAYBOOK_TIMEOUT = 1800
# Load kept up after the playbook ends.
AFTER_SECONDS = 3
SWITCH_PLAY = "Switch the app hosts to the new release"
# What roles/app's default app_release makes of an image reference: its tag.
RELEASE_OF_IMAGE = re.compile(r"^.*:([^:@/]+)(@.*)?$")
PLAY_HEADER = re.compile(r"^PLAY \[(.*)\] \*")
# The lab's health gate (app_gate_successes in inventories/lab, app_gate_interval in roles/app);
# the baseline gives up after the role's default app_gate_timeout.
GATE_SUCCESSES = 3
GATE_INTERVAL = 1.0
GATE_TIMEOUT = 120
BASELINE_PORT = 8099
BASELINE_NAME = "keelson-bench-app"

# Runs as root on the app host (python3 is there for Ansible): finds the active slot (the one whose
# /version answers; the slots and ports are roles/app's app_slots), then per sample starts a container
# of the image like the slot's app container and times it through the gate; always removes it.
BASELINE_SCRIPT = r"""
import json, os, socket, subprocess, sys, tempfile, time, urllib.error, urllib.request

image, release, port, samples, successes, interval, timeout, name = sys.argv[1:]
port, samples, successes, interval, timeout = int(port), int(samples), int(successes), float(interval), float(timeout)
SLOTS = (("blue", 8001), ("green", 8002))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def get(url):
    try:
        with opener.open(url, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return None, b""


def docker(*argv, check=True):
    try:
        proc = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        fail("docker " + argv[0] + ": no answer within 300 s")
    if check and proc.returncode != 0:
        fail("docker " + argv[0] + ": " + proc.stderr.strip()[-2000:])
    return proc.stdout.strip()


# One probe of the gate: /readyz 200, then /version 200 naming the release and the slot.
def probe():
    if get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
        return False
    status, body = get(f"http://127.0.0.1:{port}/version")
    try:
        version = json.loads(body) if status == 200 else {}
    except ValueError:
        version = {}
    return isinstance(version, dict) and version.get("release") == release and version.get("slot") == "bench"


answering = [slot for slot, slot_port in SLOTS if get(f"http://127.0.0.1:{slot_port}/version")[0] == 200]
if len(answering) != 1:
    fail(f"expected one app slot answering on 8001/8002, found {answering or 'none'} (an upgrade running?)")
slot = answering[0]
ids = docker("ps", "--quiet", "--filter", f"label=com.docker.compose.project=keelson-app-{slot}",
             "--filter", "label=com.docker.compose.service=app", "--filter", "status=running").split()
if len(ids) != 1:
    fail(f"expected one running app container in keelson-app-{slot}, found {len(ids)}")
info = json.loads(docker("inspect", ids[0]))[0]
if docker("image", "inspect", "--format", "{{.Id}}", image, check=False) == "":
    fail(f"{image} is not on this host (the upgrade delivers it; was it removed since?)")
env = [e for e in info["Config"]["Env"] if not e.startswith(("APP_RELEASE=", "APP_SLOT="))]
env += [f"APP_RELEASE={release}", "APP_SLOT=bench"]
container_port = next((e.split("=", 1)[1] for e in env if e.startswith("APP_PORT=")), "8000") or "8000"
networks = list(info["NetworkSettings"]["Networks"])
host_config = info["HostConfig"]
options = ["--network", networks[0]] if networks else []
if info["Config"].get("User"):
    options += ["--user", info["Config"]["User"]]
if host_config.get("ReadonlyRootfs"):
    options.append("--read-only")
for path, mount_options in (host_config.get("Tmpfs") or {}).items():
    options += ["--tmpfs", f"{path}:{mount_options}" if mount_options else path]
for cap in host_config.get("CapDrop") or []:
    options += ["--cap-drop", cap]
for opt in host_config.get("SecurityOpt") or []:
    options += ["--security-opt", opt]
if host_config.get("Memory"):
    options += ["--memory", f"{host_config['Memory']}b"]
if host_config.get("NanoCpus"):
    options += ["--cpus", str(host_config["NanoCpus"] / 1e9)]

docker("rm", "--force", name, check=False)  # a killed earlier run
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        fail(f"127.0.0.1:{port} is taken on this host")

results = []
with tempfile.TemporaryDirectory(prefix="keelson-bench-") as work:
    env_file = os.path.join(work, "app.env")
    with open(env_file, "w") as f:
        f.write("".join(e + "\n" for e in env))
    for number in range(samples):
        first_good = None
        passed = None
        streak = 0
        start = time.monotonic()
        try:
            # No Docker healthcheck: the probes below are the gate, as keelson_health_gate's are in a switch.
            docker("run", "--detach", "--name", name, "--label", "io.keelson.bench=upgrade",
                   "--volumes-from", ids[0], "--env-file", env_file, *options, "--no-healthcheck",
                   "--publish", f"127.0.0.1:{port}:{container_port}", image, "keelson-app", "serve")
            started = time.monotonic() - start
            deadline = start + timeout
            while time.monotonic() < deadline:
                good = probe()
                if good and first_good is None:
                    first_good = time.monotonic() - start
                streak = streak + 1 if good else 0
                if streak >= successes:
                    passed = time.monotonic() - start
                    break
                time.sleep(interval)
            if passed is None:
                logs = subprocess.run(["docker", "logs", "--tail", "20", name], capture_output=True, text=True)
                fail(f"sample {number + 1}: the container did not pass the gate within {timeout:g} s\n"
                     + (logs.stdout + logs.stderr)[-3000:])
        finally:
            docker("rm", "--force", name, check=False)
        results.append({"docker_run_s": round(started, 3), "first_good_s": round(first_good, 3),
                        "gate_s": round(passed, 3)})
left = docker("ps", "--all", "--quiet", "--filter", f"name=^{name}$", check=False)
print(json.dumps({"slot": slot, "container": info["Name"].lstrip("/"), "network": networks[0] if networks else "",
                  "samples": results, "left_behind": bool(left)}))
"""


class BenchError(RuntimeError):
    """A step failed; the message says which."""


def progress(message: str) -> None:
    print(f"bench/upgrade: {message}", file=sys.stderr, flush=True)


def release_of(image: str) -> str:
    found = RELEASE_OF_IMAGE.match(image)
    if not found:
        raise SystemExit(f"cannot tell the release of {image!r} (expected REPO:TAG)")
    return found.group(1)


def fleet_releases(fleet: lab_fleet.Fleet, asks: int = 4) -> list[str]:
    """The release /version names through the edge, asked a few times (the edge balances over the app hosts)."""
    seen = []
    for _ in range(asks):
        try:
            response = request(fleet, "GET", "/version")
        except OSError as exc:
            raise BenchError(f"https://{DOMAIN}/version at {edge_address(fleet)}:443 did not answer: {exc}") from None
        if response.status != 200:
            raise BenchError(f"https://{DOMAIN}/version answered {response.status}: {response.body[:200]!r}")
        seen.append(str(response.json().get("release")))
    return seen


def make_load(fleet: lab_fleet.Fleet, rate: float, seconds: float) -> LoadGenerator:
    return LoadGenerator(
        f"https://{DOMAIN}/",
        workers=WORKERS,
        rate=rate,
        max_requests=int(rate * seconds) + 1,
        max_seconds=seconds,
        timeout=10.0,
        ca_file=str(CA_CERT),
        connect_address=(edge_address(fleet), 443),
        paths=PATHS,
        tally_json_field="release",
    )


def plays_from(headers: list[tuple[str, float]], wall: float) -> list[dict]:
    """Each play (a batch of a serial play is one entry) from its header to the next header, the recap or the end."""
    plays = []
    for number, (name, start) in enumerate(headers):
        if name is None:
            continue
        end = headers[number + 1][1] if number + 1 < len(headers) else wall
        plays.append({"name": name, "start_s": round(start, 3), "seconds": round(end - start, 3)})
    return plays


def upgrade(fleet: lab_fleet.Fleet, rate: float, image: str, app_hosts: int) -> dict:
    """playbooks/upgrade.yml to ``image`` under load; the load goes on AFTER_SECONDS after the playbook ends."""
    argv = [
        str(BIN / "ansible-playbook"),
        "playbooks/upgrade.yml",
        "-i",
        str(INVENTORY),
        "-e",
        f"app_image={image}",
        "-e",
        "upgrade_backup=false",
    ]
    env = tool_env()
    env.pop("KEELSON_SUMMARY_FILE", None)
    env["PYTHONUNBUFFERED"] = "1"
    # (play name or None for the recap, seconds since the playbook started) as each header streams by.
    headers: list[tuple[str | None, float]] = []
    tail: deque[str] = deque(maxlen=400)
    timed_out = threading.Event()
    load = make_load(fleet, rate, UPGRADE_MAX_SECONDS)
    with load:
        load_started = time.monotonic()
        begun = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )

        def kill() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(PLAYBOOK_TIMEOUT, kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.monotonic() - begun
                tail.append(line)
                if line.startswith("PLAY RECAP"):
                    headers.append((None, now))
                elif found := PLAY_HEADER.match(line):
                    headers.append((found.group(1), now))
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - begun
        if returncode == 0:
            time.sleep(AFTER_SECONDS)
    result = load.result()
    if returncode != 0:
        sys.stderr.write("".join(tail)[-8000:])
        why = f"did not finish within {PLAYBOOK_TIMEOUT} s" if timed_out.is_set() else f"failed (exit {returncode})"
        raise BenchError(f"the upgrade to {image} {why}; load meanwhile: {result.summary()}")
    plays = plays_from(headers, wall)
    batches = [p["seconds"] for p in plays if p["name"].startswith(SWITCH_PLAY)]
    if not batches:
        raise BenchError(f"the upgrade printed no 'PLAY [{SWITCH_PLAY}...]' header: cannot time the switch")
    switch = sum(batches)
    return {
        "image": image,
        "playbook_s": round(wall, 3),
        "playbook_offset_s": round(begun - load_started, 3),
        "switch_play_s": round(switch, 3),
        "batches_s": batches,
        "app_hosts": app_hosts,
        "per_host_s": round(switch / app_hosts, 3),
        "plays": plays,
        "load": result,
    }


def go_back(image: str) -> None:
    """After a failed upgrade: the playbook once more, to ``image``, unmeasured (it only touches hosts not there)."""
    progress(f"taking the lab back to {image} (not measured)")
    argv = [str(BIN / "ansible-playbook"), "playbooks/upgrade.yml", "-i", str(INVENTORY)]
    argv += ["-e", f"app_image={image}", "-e", "upgrade_backup=false"]
    env = tool_env()
    env.pop("KEELSON_SUMMARY_FILE", None)
    try:
        proc = subprocess.run(  # noqa: S603
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        progress(f"going back did not finish within {PLAYBOOK_TIMEOUT} s: check the lab")
        return
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-6000:])
        progress(f"going back failed (exit {proc.returncode}): run {shlex.join(argv)}")


def baseline(fleet: lab_fleet.Fleet, host: str, image: str, samples: int) -> dict:
    """Container start + health gate of ``image`` on ``host``, ``samples`` times (see BASELINE_SCRIPT)."""
    ssh = lab_fleet.ssh_command(fleet, fleet.host(host), user=DEPLOY_USER)
    args = [image, release_of(image), BASELINE_PORT, samples, GATE_SUCCESSES, GATE_INTERVAL, GATE_TIMEOUT]
    remote = shlex.join(["sudo", "python3", "-c", BASELINE_SCRIPT, *map(str, args), BASELINE_NAME])
    timeout = samples * (GATE_TIMEOUT + 60) + 120
    try:
        proc = subprocess.run([*ssh, remote], capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{host}: the baseline did not finish within {timeout} s; check that no container "
            f"{BASELINE_NAME} is left (sudo docker rm -f {BASELINE_NAME})"
        ) from None
    if proc.returncode != 0:
        err = "\n".join(line for line in proc.stderr.splitlines() if "Authorised access only" not in line)
        raise BenchError(f"{host}: the baseline failed (exit {proc.returncode}):\n{err.strip()[-4000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    gates = [s["gate_s"] for s in found["samples"]]
    found.update(
        host=host,
        image=image,
        gate_median_s=round(statistics.median(gates), 3),
        first_good_median_s=round(statistics.median(s["first_good_s"] for s in found["samples"]), 3),
    )
    return found


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(steady: LoadResult, upgrades: list[dict], base: dict | None, rate: float) -> None:
    print(f"load: {rate:g} req/s through https://{DOMAIN}/ ({', '.join(PATHS)}), {WORKERS} workers")
    head = f"  {'phase':<22} {'seconds':>7} {'sent':>5} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    print(f"{head} {'p50/steady':>10} {'p99/steady':>10}  releases")
    rows = [("steady", steady)]
    rows += [(f"upgrade {u['from_release']} -> {u['to_release']}", u["load"]) for u in upgrades]
    for name, r in rows:
        releases = ", ".join(f"{k} {v}" for k, v in r.tally.items())
        p50 = "-" if r is steady else ratio(r.p50_ms, steady.p50_ms)
        p99 = "-" if r is steady else ratio(r.p99_ms, steady.p99_ms)
        print(
            f"  {name:<22} {r.duration_s:7.1f} {r.sent:5d} {r.failed:6d} {ms(r.p50_ms):>7} {ms(r.p99_ms):>7}"
            f" {ms(r.max_ms):>7} {p50:>10} {p99:>10}  {releases}"
        )
    for name, r in rows:
        if r.failed:
            print(
                f"  {name}: {r.failed} failed; first: "
                + "; ".join(
                    f"{f['offset_s']:.1f} s {f['path']} {f['error'] or 'HTTP ' + str(f['status'])}"
                    for f in r.failures[:5]
                )
            )
        if r.stopped_by == "max_seconds" and r is not steady:
            print(f"  {name}: the load stopped at its {UPGRADE_MAX_SECONDS} s bound before the playbook ended")
    for u in upgrades:
        batches = ", ".join(f"{b:.1f}" for b in u["batches_s"])
        print(
            f"  upgrade {u['from_release']} -> {u['to_release']}: playbook {u['playbook_s']:.1f} s, switch play"
            f" {u['switch_play_s']:.1f} s (batches {batches}), per host {u['per_host_s']:.1f} s"
            f" ({u['app_hosts']} app hosts)"
        )
        others = ", ".join(
            f"{p['name']} {p['seconds']:.1f}" for p in u["plays"] if not p["name"].startswith(SWITCH_PLAY)
        )
        print(f"    other plays (s): {others}")
    if base is None:
        return
    gates = ", ".join(f"{s['gate_s']:.1f}" for s in base["samples"])
    print(
        f"  baseline on {base['host']} ({base['image']}, like slot {base['slot']}'s app container):"
        f" container start + health gate median {base['gate_median_s']:.1f} s ({gates}),"
        f" first good probe median {base['first_good_median_s']:.1f} s"
    )
    for u in upgrades:
        print(
            f"  per host / baseline, {u['from_release']} -> {u['to_release']}:"
            f" {ratio(u['per_host_s'], base['gate_median_s'])}"
        )
    if base.get("left_behind"):
        print(f"  note: container {BASELINE_NAME} is still on {base['host']}: sudo docker rm -f {BASELINE_NAME}")


def write_json(path: Path, args: argparse.Namespace, steady: LoadResult | None, upgrades: list[dict], base) -> None:
    def plain(u: dict) -> dict:
        return {**u, "load": asdict(u["load"])}

    steady_ms = (steady.p50_ms, steady.p99_ms) if steady else (None, None)
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "steady": asdict(steady) if steady else None,
        "upgrades": [plain(u) for u in upgrades],
        "baseline": base,
        "ratios": [
            {
                "upgrade": f"{u['from_release']} -> {u['to_release']}",
                "p50_upgrade_over_steady": (u["load"].p50_ms / steady_ms[0]) if steady_ms[0] else None,
                "p99_upgrade_over_steady": (u["load"].p99_ms / steady_ms[1]) if steady_ms[1] else None,
                "per_host_over_baseline": (u["per_host_s"] / base["gate_median_s"]) if base else None,
            }
            for u in upgrades
            if u["load"].p50_ms is not None and u["load"].p99_ms is not None
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    progress(f"numbers written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second through the edge (default 4)")
    parser.add_argument("--steady-seconds", type=float, default=60, help="length of the steady phase (default 60)")
    parser.add_argument("--from", dest="from_image", default="keelson-lab/app:v1", help="the release the lab runs")
    parser.add_argument("--to", dest="to_image", default="keelson-lab/app:v2", help="the release to upgrade to")
    parser.add_argument("--host", default="lab-app2", help="app host for the baseline (default lab-app2)")
    parser.add_argument("--samples-baseline", type=int, default=3, help="baseline samples; the median is used")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    if args.rate <= 0 or args.steady_seconds < 10 or args.samples_baseline < 1:
        parser.error("--rate must be positive, --steady-seconds at least 10, --samples-baseline at least 1")
    if args.from_image == args.to_image:
        parser.error("--from and --to must differ")
    if args.rate * 10 >= EDGE_LIMIT_PER_10S * 0.9:
        progress(
            f"warning: {args.rate:g} req/s is near or above the lab edge's limit of {EDGE_LIMIT_PER_10S} requests"
            " per 10 s per client: its 429s count as failed"
        )
    start_release, target_release = release_of(args.from_image), release_of(args.to_image)

    fleet = lab_fleet.load_fleet(INVENTORY)
    app_hosts = [h.name for h in fleet.hosts if APP_GROUP in h.groups]
    if args.host not in app_hosts:
        parser.error(f"--host {args.host} is not an app host of {INVENTORY} ({', '.join(app_hosts)})")
    try:
        seen = fleet_releases(fleet)
    except BenchError as exc:
        raise SystemExit(f"{exc}\nIs the lab up and converged (make lab)?") from None
    if set(seen) != {start_release}:
        raise SystemExit(
            f"the fleet is not on {start_release} ({args.from_image}): /version said {', '.join(seen)}.\n"
            f"Bring it there first (ansible-playbook playbooks/upgrade.yml -i inventories/lab"
            f" -e app_image={args.from_image}) or pass --from."
        )

    upgrades: list[dict] = []
    base = None
    steady = None
    failure = None
    try:
        progress(f"steady: {args.steady_seconds:g} s at {args.rate:g} req/s")
        steady = make_load(fleet, args.rate, args.steady_seconds).run()
        progress(f"upgrade {start_release} -> {target_release} under load")
        try:
            upgrades.append(upgrade(fleet, args.rate, args.to_image, len(app_hosts)))
        except BenchError:
            go_back(args.from_image)
            raise
        upgrades[-1].update(from_release=start_release, to_release=target_release)
        progress(f"upgrade {target_release} -> {start_release} under load (back to where the lab began)")
        upgrades.append(upgrade(fleet, args.rate, args.from_image, len(app_hosts)))
        upgrades[-1].update(from_release=target_release, to_release=start_release)
        seen = fleet_releases(fleet)
        if set(seen) != {start_release}:
            raise BenchError(f"after going back, /version said {', '.join(seen)}, not {start_release}")
        progress(f"baseline: {args.to_image} on {args.host}, {args.samples_baseline} samples")
        base = baseline(fleet, args.host, args.to_image, args.samples_baseline)
    except BenchError as exc:
        failure = str(exc)
    if steady is not None:
        report(steady, upgrades, base, args.rate)
    if args.json:
        write_json(args.json, args, steady, upgrades, base)
    if failure:
        raise SystemExit(f"benchmark step failed: {failure}")


if __name__ == "__main__":
    main()
