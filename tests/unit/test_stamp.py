"""Converge stamps: the keelson_stamp module (files, packages, commands and compose projects
watched for real: dpkg, a real container) and the keelson_fingerprint lookup.  The fast path as
a whole (connect decides, roles skip, drift is put right) runs on the lab in
tests/e2e/test_10_site.py."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests import lab_images
from tests.helpers import ROOT, module_doc, run_playbook

sys.path.insert(0, str(ROOT / "plugins" / "modules"))
sys.path.insert(0, str(ROOT / "plugins" / "lookup"))
import keelson_fingerprint as fp  # noqa: E402
import keelson_stamp as st  # noqa: E402


def record_and_read(directory: Path, watch: dict, *, max_age: int = 3600, now: float | None = None) -> dict:
    st.write_stamp(str(directory), "demo", "f1", watch, time.time())
    return st.read_stamps(str(directory), max_age, now or time.time())["demo"]


def test_a_stamp_is_current_until_a_watched_file_changes(tmp_path: Path):
    conf = tmp_path / "demo.conf"
    conf.write_text("a = 1\n")
    tree = tmp_path / "conf.d"
    tree.mkdir()
    (tree / "one.conf").write_text("x\n")
    stamps = tmp_path / "stamps"
    watch = {"files": [str(conf), str(tree), str(tmp_path / "absent")], "packages": ["dpkg"], "commands": ["echo same"]}
    read = record_and_read(stamps, watch)
    assert read == {"fingerprint": "f1", "recorded_at": read["recorded_at"], "current": True, "reason": ""}
    assert oct(os.stat(stamps / "demo.json").st_mode & 0o777) == "0o600"

    conf.write_text("a = 2\n")
    read = st.read_stamps(str(stamps), 3600, time.time())["demo"]
    assert read["current"] is False and read["reason"] == f"{conf} changed"

    # Mode, a file added under a watched directory, a missing path that appears: all drift.
    for change in (
        lambda: conf.chmod(0o600),
        lambda: (tree / "two.conf").write_text("y\n"),
        lambda: (tmp_path / "absent").write_text("now here\n"),
    ):
        record_and_read(stamps, watch)
        change()
        read = st.read_stamps(str(stamps), 3600, time.time())["demo"]
        assert read["current"] is False and read["reason"].endswith("changed"), read


def test_packages_commands_and_age_count(tmp_path: Path):
    stamps = tmp_path / "stamps"
    read = record_and_read(stamps, {"packages": ["dpkg", "keelson-no-such-package"]})
    assert read["current"] is False and read["reason"] == "package keelson-no-such-package is not installed"

    marker = tmp_path / "marker"
    marker.write_text("1")
    read = record_and_read(stamps, {"commands": [f"cat {marker}"]})
    assert read["current"] is True
    marker.write_text("2")
    read = st.read_stamps(str(stamps), 3600, time.time())["demo"]
    assert read["current"] is False and read["reason"] == f"the output of 'cat {marker}' changed"

    read = record_and_read(stamps, {}, max_age=60, now=time.time() + 3600)
    assert read["current"] is False and "old (max_age 60)" in read["reason"]

    (stamps / "broken.json").write_text("{not json")
    assert st.read_stamps(str(stamps), 3600, time.time())["broken"] == {
        "fingerprint": "",
        "recorded_at": 0,
        "current": False,
        "reason": "unreadable stamp",
    }


def test_a_compose_project_must_keep_its_containers_running(tmp_path: Path):
    client = lab_images.engine()
    image = lab_images.host_image("13")
    project = f"keelson-stamp-test-{os.getpid()}"
    container = client.containers.run(
        image, ["sleep", "600"], detach=True, labels={"com.docker.compose.project": project}, name=project
    )
    try:
        stamps = tmp_path / "stamps"
        read = record_and_read(stamps, {"compose_projects": [project]})
        assert read["current"] is True, read
        # A prefix pattern covers the same containers (the app's blue/green slots).
        assert record_and_read(stamps, {"compose_projects": [project[:-3] + "*"]})["current"] is True
        container.stop(timeout=1)
        read = st.read_stamps(str(stamps), 3600, time.time())["demo"]
        assert read["current"] is False and f"compose project {project[:-3]}* is not as recorded" in read["reason"]
    finally:
        container.remove(force=True)


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - keelson_stamp: {state: present, role: demo, fingerprint: f1, path: "{{ dir }}", watch: {files: ["{{ conf }}"]}}
      register: recorded
    - keelson_stamp: {state: read, path: "{{ dir }}"}
      register: read
    - keelson_stamp: {state: absent, role: demo, path: "{{ dir }}"}
      register: removed
    - keelson_stamp: {state: present, role: demo, fingerprint: f1, path: "{{ dir }}"}
      check_mode: true
    - keelson_stamp: {state: read, path: "{{ dir }}"}
      register: after
    - keelson_stamp: {state: present, role: demo, fingerprint: f1, path: "{{ dir }}", watch: {files: [relative]}}
      register: bad
      ignore_errors: true
    - ansible.builtin.copy:
        content: "{{ {'recorded': recorded, 'read': read, 'removed': removed, 'after': after, 'bad': bad} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def test_the_module_through_ansible_never_reports_a_change(tmp_path: Path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    conf = tmp_path / "demo.conf"
    conf.write_text("x\n")
    out = tmp_path / "out.json"
    extra = {
        "dir": str(tmp_path / "stamps"),
        "conf": str(conf),
        "out": str(out),
        "ansible_python_interpreter": sys.executable,
    }
    run = run_playbook(playbook, "-i", "localhost,", "-c", "local", "-e", json.dumps(extra), summary_file=None)
    assert run.returncode == 0, run.output[-4000:]
    r = json.loads(out.read_text())
    assert r["recorded"]["changed"] is False and r["removed"]["changed"] is False
    assert r["read"]["stamps"]["demo"]["current"] is True
    assert r["read"]["machine_id"] == Path("/etc/machine-id").read_text().strip()
    assert r["read"]["os_release"].startswith("debian ")
    assert r["after"]["stamps"] == {}, "check mode must not write a stamp"
    assert r["bad"]["failed"] is True and "absolute paths" in r["bad"]["msg"]


def test_ansible_doc_renders_the_module():
    doc = module_doc("keelson_stamp")
    assert set(doc["doc"]["options"]) == {"state", "role", "fingerprint", "watch", "max_age", "path"}
    assert set(doc["return"]) == {"machine_id", "os_release", "stamps"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for rel, text in {
        "ansible.cfg": "[defaults]\n",
        "site.yml": "---\n",
        "playbooks/stack.yml": "---\n",
        "roles/base/tasks/main.yml": "---\n",
        "plugins/modules/m.py": "x = 1\n",
        "inventory/hosts.yml": "all: {}\n",
        "inventory/.lab/secrets/redis": "s3cret\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def fingerprint_of(root: Path, extra_vars=(), images=(), terms=()) -> str:
    return fp.fingerprint(str(root), [str(root / "inventory")], list(extra_vars), [], list(images), list(terms))


def test_the_fingerprint_changes_with_every_input_and_only_then(project: Path, tmp_path: Path):
    base = fingerprint_of(project)
    assert fingerprint_of(project) == base
    (project / "roles/base/__pycache__").mkdir()
    (project / "roles/base/__pycache__/x.pyc").write_bytes(b"\0")
    assert fingerprint_of(project) == base, "compiled Python is not input"
    (project / "inventory/.lab/known_hosts").write_text("h1 ssh-ed25519 AAAA\n")
    assert fingerprint_of(project) == base, "SSH client state is not input"

    for rel in (
        "roles/base/tasks/main.yml",
        "plugins/modules/m.py",
        "inventory/hosts.yml",
        "inventory/.lab/secrets/redis",
    ):
        path = project / rel
        old = path.read_text()
        path.write_text(old + "# changed\n")
        assert fingerprint_of(project) != base, rel
        path.write_text(old)
    assert fingerprint_of(project) == base

    assert fingerprint_of(project, extra_vars=["redis_maxmemory=1gb"]) != base
    # connect_fast_path only steers the run (keelson up --full): it is not input.
    assert fingerprint_of(project, extra_vars=["connect_fast_path=false"]) == base
    assert fingerprint_of(project, extra_vars=['{"connect_fast_path": false}']) == base
    assert fingerprint_of(project, extra_vars=["connect_fast_path=false a=1"]) == fingerprint_of(
        project, extra_vars=["a=1"]
    )
    extra = tmp_path / "extra.yml"
    extra.write_text("a: 1\n")
    with_file = fingerprint_of(project, extra_vars=[f"@{extra}"])
    extra.write_text("a: 2\n")
    assert fingerprint_of(project, extra_vars=[f"@{extra}"]) != with_file, "an extra-vars file counts by content"
    assert fingerprint_of(project, terms=["h1=abc"]) != fingerprint_of(project, terms=["h1=abd"])
    # An image the controller does not have counts as such, consistently.
    missing = fingerprint_of(project, images=["keelson-no-such/image:1"])
    assert missing == fingerprint_of(project, images=["keelson-no-such/image:1"]) != base


def test_the_lookup_runs_in_a_playbook(tmp_path: Path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        {content: \"{{ lookup('keelson_fingerprint', 'x') }}\", dest: \"{{ out }}\", mode: '0600'}\n"
    )
    out = tmp_path / "fp"
    outs = []
    for value in ("1", "1", "2"):
        run = run_playbook(
            playbook,
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"out={out}",
            "-e",
            f"v={value}",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            summary_file=None,
        )
        assert run.returncode == 0, run.output[-3000:]
        outs.append(out.read_text())
    assert len(outs[0]) == 64 and outs[0] == outs[1] != outs[2], "the same input gives the same fingerprint, -e counts"
