"""Day-2 playbooks (status.yml, down.yml, prune.yml) and the task files behind them
(role status, compose_project tasks_from stop and prune), run for real on this machine:
releases built by keelson_release's own code under a tmp_path root, throwaway containers
and images named b2test-* on the local Docker engine (removed afterwards)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests import lab_images
from tests.helpers import ROOT, Clock, run_playbook

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import keelson_release as kr  # noqa: E402

PLAYBOOKS = ("status", "down", "prune")
BASE_IMAGE = "keelson-lab/debian:13"
COMPOSE = "services:\n  web:\n    image: {image}\n"


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def base_image() -> str:
    """The lab's Debian 13 image (built when missing): the base of the throwaway images and containers."""
    image = lab_images.host_image("13")
    assert image == BASE_IMAGE
    return image


def make_releases(root: Path, project: str, count: int, images=None, clock=None) -> list[str]:
    """``count`` releases of ``project`` (oldest first), made by keelson_release's own code."""
    releases = kr.Releases(project, str(root), clock=clock or Clock())
    ids = []
    for n in range(count):
        files = {"compose.yaml": COMPOSE.format(image=f"{project}:{n}")}
        ids.append(releases.prepare(files, images(n) if images else [])["release_id"])
    return ids


def activate(root: Path, project: str, *release_ids: str, clock=None) -> None:
    releases = kr.Releases(project, str(root), clock=clock or Clock())
    for release_id in release_ids:
        releases.activate(release_id, keep=50)


def local_inventory(path: Path, **host_vars) -> Path:
    """One host on this machine (no become: there is no sudo here, and we are who we are)."""
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        **host_vars,
    }
    path.write_text(yaml.safe_dump({"all": {"children": {"app": {"hosts": {"b2local": host}}}}}))
    return path


def tasks_playbook(path: Path, role: str, tasks_from: str = "main") -> Path:
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "name": f"Run {role} {tasks_from}",
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Include it",
                            "ansible.builtin.include_role": {"name": role, "tasks_from": tasks_from},
                        }
                    ],
                }
            ]
        )
    )
    return path


def release_dirs(root: Path, project: str) -> set[str]:
    return {p.name for p in (root / project / "releases").iterdir()}


# --- the playbooks parse ---------------------------------------------------------------


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_day2_playbook_passes_syntax_check(name):
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "--syntax-check",
            "-i",
            "inventories/lab",
            f"playbooks/{name}.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- confirmation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["down", "prune"])
def test_destructive_playbook_refuses_without_confirmation(tmp_path, name):
    inventory = local_inventory(tmp_path / "hosts.yml", compose_project_root=str(tmp_path / "root"))
    run = run_playbook(f"playbooks/{name}.yml", "-i", str(inventory), summary_file=None, timeout=300)
    assert run.returncode != 0, run.output
    assert "keelson_confirm=yes" in run.output
    # Nothing after the check ran: not even the connection play.
    assert "PLAY [Choose how to connect" not in run.output


def test_prune_check_mode_needs_no_confirmation(tmp_path):
    root = tmp_path / "root"
    make_releases(root, "keelson-b2-one", 3)
    inventory = local_inventory(
        tmp_path / "hosts.yml", compose_project_root=str(root), compose_project_prune_images=False
    )
    run = run_playbook("playbooks/prune.yml", "-i", str(inventory), "--check", summary_file=None, timeout=300)
    assert run.returncode == 0, run.output


# --- prune --------------------------------------------------------------------------------


def test_prune_keeps_current_previous_active_and_newest(tmp_path):
    root = tmp_path / "root"
    clock = Clock()
    one = make_releases(root, "keelson-b2-one", 7, clock=clock)
    activate(root, "keelson-b2-one", one[1], one[5], clock=clock)  # current one[5], previous one[1]
    # An app slot whose current release was marked failed by a rollback: it stays, so does its previous.
    green = make_releases(root, "keelson-app-green", 4, clock=clock)
    activate(root, "keelson-app-green", green[0], green[1], clock=clock)
    kr.Releases("keelson-app-green", str(root), clock=clock).fail(green[1], "rolled back")
    # A release recorded active although current is elsewhere: never removed.
    odd = make_releases(root, "keelson-b2-odd", 5, clock=clock)
    activate(root, "keelson-b2-odd", odd[4], clock=clock)
    record = root / "keelson-b2-odd" / "releases" / odd[0] / "release.json"
    record.write_text(json.dumps(dict(json.loads(record.read_text()), result="active")))
    # Not releases: a stray directory inside releases/ and a project-like tree with another name.
    (root / "keelson-b2-one" / "releases" / "notes").mkdir()
    stray = root / "other" / "releases" / "20260101T000000Z-00000000"
    stray.mkdir(parents=True)

    before = {p: release_dirs(root, p) for p in ("keelson-b2-one", "keelson-app-green", "keelson-b2-odd")}
    inventory = local_inventory(
        tmp_path / "hosts.yml",
        compose_project_root=str(root),
        compose_project_releases_keep=3,
        compose_project_prune_images=False,
    )
    book = tasks_playbook(tmp_path / "prune.yml", "compose_project", "prune")
    summary = tmp_path / "summary.json"

    check = run_playbook(book, "-i", str(inventory), "--check", "--diff", summary_file=summary, timeout=300)
    assert check.returncode == 0, check.output
    assert {p: release_dirs(root, p) for p in before} == before, "check mode removed something"
    # keep 3: one[5] current + one[1] previous + the newest other (one[6]); green: g1 (failed, current) + g0 + g3.
    gone = {
        "keelson-b2-one": {one[0], one[2], one[3], one[4]},
        "keelson-app-green": {green[2]},
        "keelson-b2-odd": {odd[1], odd[2]},
    }
    for project, ids in gone.items():
        for release_id in ids:
            assert f"{project} {release_id}" in check.output, check.output
    assert len(check.changed_tasks()) == 1, check.changed_tasks()

    apply = run_playbook(book, "-i", str(inventory), summary_file=summary, timeout=300)
    assert apply.returncode == 0, apply.output
    for project, ids in gone.items():
        assert release_dirs(root, project) == before[project] - ids
    assert stray.is_dir()
    assert (root / "keelson-b2-one" / "current").resolve().name == one[5]
    listed = kr.Releases("keelson-b2-one", str(root)).list()
    assert [r["id"] for r in listed["releases"]] == [one[6], one[5], one[1]]

    again = run_playbook(book, "-i", str(inventory), summary_file=summary, timeout=300)
    assert again.returncode == 0, again.output
    assert again.changed_tasks() == []


@pytest.fixture
def b2_images(base_image):
    """Two dangling images of our own (label-only builds on a local base image), removed afterwards."""
    tag = f"b2test-img-{uuid.uuid4().hex[:8]}:x"
    made = []
    try:
        for n in range(3):
            dockerfile = f"FROM {BASE_IMAGE}\nLABEL b2test={tag} n={n}\n"
            proc = subprocess.run(
                ["docker", "build", "-q", "-t", tag, "-"],
                input=dockerfile,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
            made.append(proc.stdout.strip().splitlines()[-1])
        yield made[0], made[1]  # both untagged now; made[2] holds the tag
    finally:
        for image in made:
            _docker("image", "rm", image, check=False)
        _docker("image", "rm", tag, check=False)


@pytest.mark.usefixtures("base_image")
def test_prune_lists_dangling_images_but_not_those_of_kept_releases(tmp_path, b2_images):
    loose, kept = b2_images
    root = tmp_path / "root"
    ids = make_releases(root, "keelson-b2-img", 1, images=lambda n: [{"ref": "b2test-img:old", "id": kept}])
    activate(root, "keelson-b2-img", ids[0])
    inventory = local_inventory(tmp_path / "hosts.yml", compose_project_root=str(root))
    book = tasks_playbook(tmp_path / "prune.yml", "compose_project", "prune")
    # Check mode only: a real run would also remove other dangling images of this shared engine.
    run = run_playbook(book, "-i", str(inventory), "--check", "--diff", summary_file=None, timeout=300)
    assert run.returncode == 0, run.output
    assert loose[:19] in run.output
    assert kept[:19] not in run.output
    for image in (loose, kept):
        assert _docker("image", "inspect", image, check=False).returncode == 0, "check mode removed an image"


# --- containers (status and stop) -----------------------------------------------------------


@pytest.fixture
def b2_containers(tmp_path, base_image):
    """Throwaway containers labelled as compose labels its own, under a tmp root; removed afterwards.

    Compose v2 (2.26) counts a container as one of a project's only when it carries every label
    it sets itself: without ``config-hash`` `docker compose -p NAME stop` finds nothing."""
    root = tmp_path / "root"
    suffix = uuid.uuid4().hex[:6]
    made = []

    def run(name, project, service, workdir, *extra, start=True):
        full = f"b2test-{name}-{suffix}"
        _docker(
            "create",
            "--name",
            full,
            "--label",
            f"com.docker.compose.project={project}",
            "--label",
            f"com.docker.compose.service={service}",
            "--label",
            f"com.docker.compose.project.working_dir={workdir}",
            "--label",
            "com.docker.compose.oneoff=False",
            "--label",
            f"com.docker.compose.config-hash={uuid.uuid4().hex}",
            "--label",
            "com.docker.compose.container-number=1",
            "--label",
            "com.docker.compose.version=2.26.1",
            *extra,
            BASE_IMAGE,
            "sleep",
            "600",
        )
        made.append(full)
        if start:
            _docker("start", full)
        return full

    web = f"keelson-b2-web-{suffix}"
    idle = f"keelson-b2-idle-{suffix}"
    outside = f"keelson-b2-out-{suffix}"
    containers = {
        "web1": run("web1", web, "web", f"{root}/{web}/current", "--health-cmd", "true", "--health-interval", "1s"),
        "web2": run("web2", web, "worker", f"{root}/{web}/current", start=False),
        "idle": run("idle", idle, "db", f"{root}/{idle}/releases/x", start=False),
        "out": run("out", outside, "web", f"{tmp_path}/elsewhere/{outside}"),
    }
    try:
        yield root, {"web": web, "idle": idle, "outside": outside}, containers
    finally:
        for name in made:
            _docker("rm", "--force", name, check=False)


@pytest.mark.usefixtures("base_image")
def test_status_writes_one_file_per_reachable_host_and_changes_nothing(tmp_path, b2_containers):
    root, projects, containers = b2_containers
    clock = Clock()
    blue = make_releases(
        root, "keelson-app-blue", 2, images=lambda n: [{"ref": f"b2test/app:v{n}", "id": f"sha256:{n}"}], clock=clock
    )
    activate(root, "keelson-app-blue", blue[0], blue[1], clock=clock)
    db = make_releases(root, "keelson-db", 1, clock=clock)
    activate(root, "keelson-db", db[0], clock=clock)
    inventory = tmp_path / "hosts.yml"
    local_inventory(inventory, status_compose_root=str(root))
    data = yaml.safe_load(inventory.read_text())
    # A host nobody can reach: it writes no file and the run says it failed.
    data["all"]["children"]["db"] = {
        "hosts": {
            "b2dead": {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_ssh_common_args": "-o ConnectTimeout=3"}
        }
    }
    inventory.write_text(yaml.safe_dump(data))

    for mode in ([], ["--check", "--diff"]):
        out = tmp_path / ("out-check" if mode else "out")
        summary = tmp_path / "summary.json"
        run = run_playbook(
            "playbooks/status.yml",
            "-i",
            str(inventory),
            "-e",
            f"keelson_status_dir={out}",
            *mode,
            summary_file=summary,
            timeout=600,
        )
        assert run.returncode != 0, run.output  # b2dead
        assert sorted(p.name for p in out.iterdir()) == ["b2local.json"]
        assert run.changed_tasks() == []
        report = json.loads((out / "b2local.json").read_text())
        assert list(report) == ["host", "groups", "releases", "containers"]
        assert report["host"] == "b2local"
        assert report["groups"] == ["app"]
        assert all(list(r) == ["project", "slot", "release", "image", "state"] for r in report["releases"])
        assert [(r["project"], r["slot"], r["release"], r["image"], r["state"]) for r in report["releases"]] == [
            ("keelson-db", "", db[0], "", "active"),
            ("keelson-app-blue", "blue", blue[1], "b2test/app:v1", "active"),
            ("keelson-app-blue", "blue", blue[0], "b2test/app:v0", "superseded"),
        ]
        ours = {c["name"]: c for c in report["containers"] if c["name"].startswith("b2test-")}
        assert all(list(c) == ["name", "project", "service", "state", "health", "restart_count"] for c in ours.values())
        web1, web2, out_c = ours[containers["web1"]], ours[containers["web2"]], ours[containers["out"]]
        assert (web1["project"], web1["service"], web1["state"]) == (projects["web"], "web", "running")
        assert web1["health"] in ("starting", "healthy")
        assert (web2["service"], web2["state"], web2["health"], web2["restart_count"]) == ("worker", "created", "", 0)
        assert out_c["project"] == projects["outside"]


@pytest.mark.usefixtures("base_image")
def test_status_on_a_host_without_docker_or_releases(tmp_path):
    inventory = local_inventory(
        tmp_path / "hosts.yml",
        status_compose_root=str(tmp_path / "none"),
        status_docker_socket=str(tmp_path / "no.sock"),
    )
    out = tmp_path / "out"
    book = tasks_playbook(tmp_path / "status.yml", "status")
    run = run_playbook(book, "-i", str(inventory), "-e", f"keelson_status_dir={out}", summary_file=None, timeout=300)
    assert run.returncode == 0, run.output
    assert json.loads((out / "b2local.json").read_text()) == {
        "host": "b2local",
        "groups": ["app"],
        "releases": [],
        "containers": [],
    }


def test_status_refuses_a_relative_report_directory(tmp_path):
    inventory = local_inventory(tmp_path / "hosts.yml", status_compose_root=str(tmp_path / "none"))
    book = tasks_playbook(tmp_path / "status.yml", "status")
    run = run_playbook(
        book, "-i", str(inventory), "-e", "keelson_status_dir=relative/dir", summary_file=None, timeout=300
    )
    assert run.returncode != 0
    assert "must be an absolute directory" in run.output


@pytest.mark.usefixtures("base_image")
def test_stop_picks_the_running_projects_under_the_root_in_order(tmp_path, b2_containers, monkeypatch):
    root, projects, containers = b2_containers
    inventory = local_inventory(tmp_path / "hosts.yml", compose_project_root=str(root))
    book = tasks_playbook(tmp_path / "stop.yml", "compose_project", "stop")
    order = json.dumps({"compose_project_stop_order": [f"^{projects['idle']}$", "^keelson-b2-"]})
    summary = tmp_path / "summary.json"

    check = run_playbook(book, "-i", str(inventory), "-e", order, "--check", summary_file=summary, timeout=300)
    assert check.returncode == 0, check.output
    assert f"would stop {projects['web']}" in check.output
    # Stopped already (idle) or not under the root (outside): nothing to do.
    assert f"would stop {projects['idle']}" not in check.output
    assert f"would stop {projects['outside']}" not in check.output
    assert _docker("inspect", "--format", "{{.State.Running}}", containers["web1"]).stdout.strip() == "true"

    for name, value in lab_images.compose_v2_env().items():  # the stop runs `docker compose`
        monkeypatch.setenv(name, value)
    apply = run_playbook(book, "-i", str(inventory), "-e", order, summary_file=summary, timeout=300)
    assert apply.returncode == 0, apply.output
    assert _docker("inspect", "--format", "{{.State.Running}}", containers["web1"]).stdout.strip() == "false"
    assert _docker("inspect", "--format", "{{.State.Running}}", containers["out"]).stdout.strip() == "true"
    again = run_playbook(book, "-i", str(inventory), "-e", order, summary_file=summary, timeout=300)
    assert again.returncode == 0, again.output
    assert again.changed_tasks() == []
