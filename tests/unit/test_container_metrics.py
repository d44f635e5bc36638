"""container-metrics (roles/docker/files/keelson-container-metrics.py) against this machine's Docker engine.

Throwaway containers named ``ctest-<random>-*`` are made from a local image (the lab's Debian host image, built
when missing; no registry): one running with Compose-like labels (one value full of characters that need escaping),
one that exited, one with a healthcheck that passes, one with a healthcheck that fails, one that the engine restarted
twice by its restart policy. The script is run as the timer runs it and its textfile is parsed back. The text
rendering, the escaping and the failure paths (no engine, no directory) are tested without the engine.
Everything the tests start is removed again.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import secrets
import subprocess
import sys
import time
from types import ModuleType

import pytest

from tests import lab_images
from tests.helpers import ROOT

SCRIPT = ROOT / "roles/docker/files/keelson-container-metrics.py"
SAMPLE = re.compile(
    r'^(\w+)\{container="([^"]*)",project="((?:[^"\\]|\\.)*)",service="([^"]*)",slot="([^"]*)"\} (\S+)$'
)


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("keelson_container_metrics", str(SCRIPT))
    spec = importlib.util.spec_from_loader("keelson_container_metrics", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["keelson_container_metrics"] = module  # dataclasses look the module up
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cm() -> ModuleType:
    return load()


# --------------------------------------------------------------------------- rendering, no engine


def inspect(name: str, *, running=True, health=None, restarts=0, oom=False, labels=None) -> dict:
    state: dict = {"Running": running, "OOMKilled": oom}
    if health is not None:
        state["Health"] = {"Status": health}
    return {"Name": "/" + name, "State": state, "RestartCount": restarts, "Config": {"Labels": labels}}


def test_escape_label_escapes_backslash_quote_and_newline(cm):
    assert cm.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert cm.escape_label("plain-name_1.x") == "plain-name_1.x"


def test_from_inspect_reads_state_labels_and_strips_the_slash(cm):
    c = cm.Container.from_inspect(
        inspect(
            "app-blue-1",
            health="starting",
            restarts=3,
            oom=True,
            labels={
                "com.docker.compose.project": "app",
                "com.docker.compose.service": "web",
                "io.keelson.slot": "blue",
            },
        )
    )
    assert (c.name, c.project, c.service, c.slot) == ("app-blue-1", "app", "web", "blue")
    assert c.values() == {"running": 1, "healthy": 0, "restart_count": 3, "oom_killed": 1}
    bare = cm.Container.from_inspect({"Name": "/x", "State": {}, "Config": {"Labels": None}})
    assert (bare.project, bare.service, bare.slot, bare.healthy) == ("", "", "", None)
    assert bare.values() == {"running": 0, "healthy": None, "restart_count": 0, "oom_killed": 0}


def test_render_exact_text(cm):
    containers = [
        cm.Container.from_inspect(inspect("b", running=False, restarts=2)),
        cm.Container.from_inspect(
            inspect("a", health="healthy", labels={"com.docker.compose.project": 'p"\\q', "io.keelson.slot": "green"})
        ),
    ]
    text = cm.render(containers, 1700000000.25)
    labels_a = 'container="a",project="p\\"\\\\q",service="",slot="green"'
    labels_b = 'container="b",project="",service="",slot=""'
    assert text.splitlines() == [
        "# HELP keelson_container_running 1 if the container is running, 0 otherwise",
        "# TYPE keelson_container_running gauge",
        f"keelson_container_running{{{labels_a}}} 1",
        f"keelson_container_running{{{labels_b}}} 0",
        "# HELP keelson_container_healthy " + dict(cm.METRICS)["healthy"],
        "# TYPE keelson_container_healthy gauge",
        f"keelson_container_healthy{{{labels_a}}} 1",
        "# HELP keelson_container_restart_count " + dict(cm.METRICS)["restart_count"],
        "# TYPE keelson_container_restart_count gauge",
        f"keelson_container_restart_count{{{labels_a}}} 0",
        f"keelson_container_restart_count{{{labels_b}}} 2",
        "# HELP keelson_container_oom_killed " + dict(cm.METRICS)["oom_killed"],
        "# TYPE keelson_container_oom_killed gauge",
        f"keelson_container_oom_killed{{{labels_a}}} 0",
        f"keelson_container_oom_killed{{{labels_b}}} 0",
        "# HELP keelson_containers_last_update_timestamp_seconds when the container metrics were last written"
        " (unix time)",
        "# TYPE keelson_containers_last_update_timestamp_seconds gauge",
        "keelson_containers_last_update_timestamp_seconds 1700000000.250",
    ]
    assert text.endswith("\n")


def test_render_with_no_containers_keeps_help_type_and_the_timestamp(cm):
    lines = cm.render([], 5.0).splitlines()
    assert lines[-1] == "keelson_containers_last_update_timestamp_seconds 5.000"
    assert sum(1 for line in lines if line.startswith("# TYPE ")) == 5
    assert not [line for line in lines if line.startswith("keelson_container_")]


def test_promtool_parses_the_text(cm):
    containers = [cm.Container.from_inspect(inspect("x\ny", health="unhealthy", labels={"io.keelson.slot": 'a"b'}))]
    text = cm.render(containers, 1.0)
    proc = subprocess.run(
        [*lab_images.promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    # Exit 1 is a parse error; 3 is lint advice only. The one piece of advice accepted: the agreed name
    # keelson_container_restart_count ends in "_count" (a per-container gauge, not a summary).
    problems = [line for line in proc.stderr.splitlines() if line and "restart_count" not in line]
    assert proc.returncode in (0, 3) and not problems, proc.stdout + proc.stderr


def test_unreachable_engine_exits_1_and_leaves_the_file(tmp_path):
    out = tmp_path / "keelson_containers.prom"
    out.write_text("old\n")
    proc = run_script("--socket", str(tmp_path / "no.sock"), "--output", str(out))
    assert proc.returncode == 1
    assert "cannot reach the Docker engine" in proc.stderr
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keelson_containers.prom"]


def test_missing_directory_exits_2_with_a_message(tmp_path):
    proc = run_script("--output", str(tmp_path / "nope" / "keelson_containers.prom"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------- against the real engine


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def wait_for(what: str, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .}}", name))


@pytest.fixture(scope="module")
def containers():
    image = lab_images.host_image("13")  # built when missing (no registry here: never pulled)
    prefix = f"ctest-{secrets.token_hex(4)}"
    names = {k: f"{prefix}-{k}" for k in ("running", "exited", "healthy", "unhealthy", "restarted")}
    base = ["run", "-d", "--entrypoint", "/bin/sh", "--label", "io.keelson.test=container-metrics"]
    try:
        docker(
            *base,
            "--name",
            names["running"],
            "--label",
            'com.docker.compose.project=ctest-"odd"\\name',
            "--label",
            "com.docker.compose.service=app",
            "--label",
            "io.keelson.slot=blue",
            image,
            "-c",
            "exec sleep 300",
        )
        docker(*base, "--name", names["exited"], image, "-c", "exit 3")
        docker(
            *base,
            "--name",
            names["healthy"],
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
            image,
            "-c",
            "exec sleep 300",
        )
        docker(
            *base,
            "--name",
            names["unhealthy"],
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            image,
            "-c",
            "exec sleep 300",
        )
        docker(*base, "--name", names["restarted"], "--restart", "on-failure:2", image, "-c", "exit 1")
        wait_for("exited container", lambda: not state(names["exited"])["State"]["Running"])
        wait_for("healthy", lambda: state(names["healthy"])["State"]["Health"]["Status"] == "healthy")
        wait_for("unhealthy", lambda: state(names["unhealthy"])["State"]["Health"]["Status"] == "unhealthy")
        wait_for(
            "two restarts",
            lambda: (s := state(names["restarted"]))["RestartCount"] == 2 and not s["State"]["Running"],
        )
        yield names
    finally:
        ids = docker("ps", "-aq", "--filter", f"name=^{prefix}-", check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)


def parse(text: str) -> dict[tuple[str, str], tuple[str, str, str, float]]:
    """(metric, container) -> (project, service, slot, value); every sample line must match the format."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#") or line.startswith("keelson_containers_last_update"):
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        metric, container, project, service, slot, value = m.groups()
        found[(metric, container)] = (project, service, slot, float(value))
    return found


def test_textfile_from_the_real_engine(containers, tmp_path):
    out = tmp_path / "keelson_containers.prom"
    before = time.time()
    proc = run_script("--output", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keelson_containers.prom"]  # no temporary left
    samples = parse(text)

    def value(metric: str, key: str) -> float | None:
        row = samples.get((f"keelson_container_{metric}", containers[key]))
        return None if row is None else row[3]

    assert samples[("keelson_container_running", containers["running"])] == (
        'ctest-\\"odd\\"\\\\name',
        "app",
        "blue",
        1.0,
    )
    assert value("running", "exited") == 0
    assert value("running", "healthy") == 1
    assert value("running", "restarted") == 0
    # healthy only for containers with a healthcheck
    assert value("healthy", "healthy") == 1
    assert value("healthy", "unhealthy") == 0
    assert value("healthy", "running") is None
    assert value("healthy", "exited") is None
    assert value("restart_count", "restarted") == 2
    assert value("restart_count", "running") == 0
    assert value("oom_killed", "exited") == 0
    assert samples[("keelson_container_running", containers["exited"])][:3] == ("", "", "")
    # every test container is in the file, with one sample of each always-present metric
    for metric in ("running", "restart_count", "oom_killed"):
        assert {k: value(metric, k) is not None for k in containers} == dict.fromkeys(containers, True)
    stamp = float(re.search(r"^keelson_containers_last_update_timestamp_seconds (\S+)$", text, re.M).group(1))
    assert before <= stamp <= time.time()


def test_removed_container_disappears_from_the_next_file(containers, tmp_path):
    out = tmp_path / "keelson_containers.prom"
    assert run_script("--output", str(out)).returncode == 0
    assert f'container="{containers["exited"]}"' in out.read_text()
    docker("rm", "-f", containers["exited"])
    assert run_script("--output", str(out)).returncode == 0
    assert f'container="{containers["exited"]}"' not in out.read_text()
    assert f'container="{containers["running"]}"' in out.read_text()
