"""Release directories of compose projects (module keelson_release), against a tmp_path root;
the last tests run the real module through ansible and ansible-doc."""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import BIN, ROOT, Clock, module_doc, tool_env

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import keelson_release as kr  # noqa: E402

PROJECT = "keelson-app-blue"
COMPOSE = "services:\n  app:\n    image: keelson-lab/app:v1\n"
FILES = {"compose.yaml": COMPOSE, "conf/app.env": "APP_PORT=8001\n"}
IMAGES = [{"ref": "keelson-lab/app:v1", "id": "sha256:" + "a" * 64}]
MODULE = ROOT / "plugins" / "modules" / "keelson_release.py"
MODULE_UTILS = ROOT / "plugins" / "module_utils" / "keelson_release.py"


@pytest.fixture
def make(tmp_path):
    clock = Clock()
    counter = itertools.count()

    def make(check_mode=False, **kwargs):
        return kr.Releases(
            PROJECT,
            str(tmp_path),
            check_mode=check_mode,
            clock=clock,
            token=lambda: f"t{next(counter)}",
            **kwargs,
        )

    return make


def project_dir(tmp_path):
    return tmp_path / PROJECT


def release_names(tmp_path):
    return sorted(p.name for p in (project_dir(tmp_path) / "releases").iterdir())


def record(tmp_path, release_id):
    return json.loads((project_dir(tmp_path) / "releases" / release_id / "release.json").read_text())


def current_target(tmp_path):
    return os.readlink(project_dir(tmp_path) / "current")


def snapshot(path):
    """Everything observable about a tree: names, kinds, modes, contents, link targets."""
    state = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(top, name)
            st = os.lstat(full)
            if os.path.islink(full):
                state[full] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                state[full] = ("dir", st.st_mode)
            else:
                with open(full, "rb") as handle:
                    state[full] = ("file", st.st_mode, st.st_mtime_ns, handle.read())
    return state


def variant(n):
    return {**FILES, "compose.yaml": COMPOSE + f"# variant {n}\n"}


def prepare_n(make, n):
    """n releases with different input, oldest first."""
    return [make().prepare(variant(i), IMAGES)["release_id"] for i in range(n)]


# -- prepared ------------------------------------------------------------------
def test_same_input_twice_makes_one_release_and_reports_no_change(make, tmp_path):
    first = make().prepare(FILES, IMAGES, {"git_commit": "abc123", "deployed_by": "alice"})
    second = make().prepare(dict(reversed(list(FILES.items()))), list(reversed(IMAGES)), {"deployed_by": "bob"})
    assert first["changed"] is True and first["new"] is True
    assert second["changed"] is False and second["new"] is False
    assert second["release_id"] == first["release_id"]
    assert release_names(tmp_path) == [first["release_id"]]
    assert first["release_id"] == "20260509T070100Z-" + first["config_hash"][:8]
    rec = record(tmp_path, first["release_id"])
    assert rec["result"] == "prepared" and rec["project"] == PROJECT and rec["images"] == IMAGES
    assert rec["git_commit"] == "abc123" and rec["deployed_by"] == "alice", "meta is recorded when created"
    release_dir = project_dir(tmp_path) / "releases" / first["release_id"]
    assert (release_dir / "conf" / "app.env").read_text() == "APP_PORT=8001\n"
    assert oct((release_dir / "compose.yaml").stat().st_mode & 0o7777) == "0o640"
    assert oct(release_dir.stat().st_mode & 0o7777) == "0o750"


def test_changed_file_content_makes_a_new_release(make, tmp_path):
    first = make().prepare(FILES, IMAGES)
    second = make().prepare({**FILES, "conf/app.env": "APP_PORT=8002\n"}, IMAGES)
    assert second["new"] is True and second["changed"] is True
    assert second["release_id"] != first["release_id"]
    assert release_names(tmp_path) == sorted([first["release_id"], second["release_id"]])


def test_changed_image_id_makes_a_new_release(make, tmp_path):
    first = make().prepare(FILES, IMAGES)
    second = make().prepare(FILES, [{"ref": IMAGES[0]["ref"], "id": "sha256:" + "b" * 64}])
    assert second["new"] is True
    assert second["config_hash"] != first["config_hash"]


def test_a_renamed_file_changes_the_hash():
    assert kr.config_hash({"a": "x"}, []) != kr.config_hash({"b": "x"}, [])
    assert kr.config_hash({"a": "x", "b": ""}, []) != kr.config_hash({"a": "xb"}, [])


def test_tampered_files_of_a_reused_release_are_rewritten_and_reported(make, tmp_path):
    release_id = make().prepare(FILES, IMAGES)["release_id"]
    release_dir = project_dir(tmp_path) / "releases" / release_id
    (release_dir / "compose.yaml").write_text("services: {hacked: {}}\n")
    (release_dir / "conf" / "app.env").unlink()
    (release_dir / "compose.override.yaml").write_text("services: {}\n")
    again = make().prepare(FILES, IMAGES)
    assert again["changed"] is True and again["new"] is False and again["release_id"] == release_id
    assert again["repaired"] == ["compose.override.yaml", "compose.yaml", "conf/app.env"]
    assert (release_dir / "compose.yaml").read_text() == COMPOSE
    assert (release_dir / "conf" / "app.env").read_text() == "APP_PORT=8001\n"
    assert not (release_dir / "compose.override.yaml").exists()
    assert make().prepare(FILES, IMAGES)["changed"] is False


def test_a_symlink_planted_in_a_release_is_replaced_by_a_real_file(make, tmp_path):
    release_id = make().prepare(FILES, IMAGES)["release_id"]
    release_dir = project_dir(tmp_path) / "releases" / release_id
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.env").write_text("APP_PORT=8001\n")
    (release_dir / "conf" / "app.env").unlink()
    (release_dir / "conf").rmdir()
    (release_dir / "conf").symlink_to(outside)
    again = make().prepare(FILES, IMAGES)
    assert again["changed"] is True
    assert not (release_dir / "conf").is_symlink()
    assert (release_dir / "conf" / "app.env").read_text() == "APP_PORT=8001\n"
    assert (outside / "app.env").exists(), "nothing outside the release is touched"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_owner_group_and_mode_apply_to_what_is_created_and_are_kept(make, tmp_path):
    result = make(uid=10001, gid=10002, file_mode=0o600).prepare(FILES, IMAGES)
    release_dir = project_dir(tmp_path) / "releases" / result["release_id"]
    for path in (release_dir, release_dir / "conf", release_dir / "conf" / "app.env", release_dir / "release.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10002), path
    assert oct((release_dir / "compose.yaml").stat().st_mode & 0o7777) == "0o600"
    os.chown(release_dir / "compose.yaml", 0, 0)
    again = make(uid=10001, gid=10002, file_mode=0o600).prepare(FILES, IMAGES)
    assert again["changed"] is True and again["repaired"] == ["compose.yaml"]
    assert (release_dir / "compose.yaml").stat().st_uid == 10001


def test_a_failed_release_with_the_same_input_is_reused_for_a_retry(make, tmp_path):
    release_id = make().prepare(FILES, IMAGES)["release_id"]
    make().fail(release_id, "not healthy")
    retry = make().prepare(FILES, IMAGES)
    assert retry["release_id"] == release_id and retry["new"] is False and retry["changed"] is False
    assert retry["result"] == "failed", "the role can see this input failed before"
    assert make().activate(release_id)["changed"] is True
    assert record(tmp_path, release_id)["result"] == "active"


@pytest.mark.parametrize(
    "relname",
    ["/etc/passwd", "../escape", "conf/../../escape", "a//b", "./compose.yaml", "conf/", "", "release.json", "a\\b"],
)
def test_bad_relnames_are_rejected(make, tmp_path, relname):
    with pytest.raises(kr.ReleaseError, match="not a usable file name"):
        make().prepare({**FILES, relname: "x"}, IMAGES)
    assert not project_dir(tmp_path).exists()


def test_a_name_used_as_file_and_directory_is_rejected(make):
    with pytest.raises(kr.ReleaseError, match="both as a file and as a directory"):
        make().prepare({**FILES, "conf": "x"}, IMAGES)


def test_non_text_content_and_reserved_meta_are_rejected(make):
    with pytest.raises(kr.ReleaseError, match="must be text"):
        make().prepare({"compose.yaml": {"services": {}}}, IMAGES)
    with pytest.raises(kr.ReleaseError, match="meta may not set result"):
        make().prepare(FILES, IMAGES, {"result": "active"})


@pytest.mark.parametrize("project", ["app", "keelson-", "keelson-App", "keelson-../x", "keelson_app"])
def test_project_names_are_checked(tmp_path, project):
    with pytest.raises(kr.ReleaseError, match=r"\^keelson-"):
        kr.Releases(project, str(tmp_path))


def test_half_written_directory_is_ignored_and_cleaned_by_the_next_prepare(make, tmp_path):
    done = make().prepare(FILES, IMAGES)["release_id"]
    releases = project_dir(tmp_path) / "releases"
    (releases / "20260509T065900Z-0badc0de").mkdir()
    (releases / "20260509T065900Z-0badc0de" / "compose.yaml").write_text("half")
    (releases / ".tmp-20260509T065901Z-deadbeef-x").mkdir()
    assert [r["id"] for r in make().list()["releases"]] == [done]
    again = make().prepare(FILES, IMAGES)
    assert again["changed"] is True and again["new"] is False
    assert again["cleaned"] == [".tmp-20260509T065901Z-deadbeef-x", "20260509T065900Z-0badc0de"]
    assert release_names(tmp_path) == [done]


def test_a_crash_before_release_json_leaves_no_release(make, tmp_path, monkeypatch):
    releases = make()
    real_write = releases._write
    written = []

    def write(path, data, **kwargs):
        if os.path.basename(path) == "release.json":
            raise OSError("disk full")
        written.append(os.path.basename(path))
        real_write(path, data, **kwargs)

    monkeypatch.setattr(releases, "_write", write)
    with pytest.raises(OSError, match="disk full"):
        releases.prepare(FILES, IMAGES)
    assert sorted(written) == ["app.env", "compose.yaml"], "every file was written before release.json"
    assert make().list()["releases"] == []
    retry = make().prepare(FILES, IMAGES)
    assert retry["new"] is True and len(retry["cleaned"]) == 1
    assert release_names(tmp_path) == [retry["release_id"]]


# -- active ----------------------------------------------------------------------
def test_activate_moves_current_atomically_and_returns_previous(make, tmp_path, monkeypatch):
    first, second = prepare_n(make, 2)
    one = make().activate(first)
    assert one["changed"] is True and one["previous"] is None and one["current"] == first
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        if os.path.basename(str(dst)) == "current":
            replaced.append((os.path.basename(str(src)), os.readlink(src)))
        real_replace(src, dst)

    monkeypatch.setattr(kr.os, "replace", spy)
    two = make().activate(second)
    monkeypatch.undo()
    assert replaced and replaced[0][0].startswith("current.tmp-"), "a new symlink is renamed over current"
    assert replaced[0][1] == f"releases/{second}"
    assert two["changed"] is True and two["previous"] == first and two["pruned"] == []
    assert current_target(tmp_path) == f"releases/{second}"
    assert not [p for p in project_dir(tmp_path).iterdir() if p.name.startswith("current.tmp-")]
    assert record(tmp_path, second)["result"] == "active" and record(tmp_path, second)["previous"] == first
    assert record(tmp_path, second)["activated"]
    assert record(tmp_path, first)["result"] == "superseded"
    again = make().activate(second)
    assert again["changed"] is False and again["previous"] == first, "activating the current release is a no-op"


def test_prune_keeps_exactly_keep_and_never_current_or_previous(make, tmp_path):
    ids = prepare_n(make, 6)
    make().activate(ids[0], keep=10)
    result = make().activate(ids[1], keep=3)
    assert result["previous"] == ids[0]
    assert result["pruned"] == [ids[4], ids[3], ids[2]], "oldest-created of the rest go first, current/previous stay"
    assert release_names(tmp_path) == sorted([ids[0], ids[1], ids[5]])
    assert make().activate(ids[1], keep=3)["changed"] is False


def test_rollback_to_an_older_release_works_and_does_not_prune_it(make, tmp_path):
    ids = prepare_n(make, 3)
    for release_id in ids:
        make().activate(release_id, keep=5)
    rollback = make().activate(ids[0], keep=2)
    assert rollback["changed"] is True
    assert rollback["previous"] == ids[2]
    assert rollback["pruned"] == [ids[1]]
    assert current_target(tmp_path) == f"releases/{ids[0]}"
    assert release_names(tmp_path) == sorted([ids[0], ids[2]])
    assert record(tmp_path, ids[0])["result"] == "active"
    assert record(tmp_path, ids[2])["result"] == "superseded"
    listed = make().list()
    assert listed["current"] == ids[0]
    assert [(r["id"], r["current"]) for r in listed["releases"]] == [(ids[2], False), (ids[0], True)]


def test_unknown_release_on_active_fails_naming_it_and_the_available_ones(make, tmp_path):
    ids = prepare_n(make, 2)
    missing = "20200101T000000Z-00000000"
    with pytest.raises(kr.ReleaseError) as info:
        make().activate(missing)
    message = str(info.value)
    assert missing in message and f"available, newest first: {ids[1]}, {ids[0]}" in message
    assert not (project_dir(tmp_path) / "current").exists()
    with pytest.raises(kr.ReleaseError, match="no releases yet"):
        kr.Releases("keelson-empty", str(tmp_path)).activate(missing)
    with pytest.raises(kr.ReleaseError, match="must be a release id"):
        make().activate("../../etc")


def test_keep_below_two_is_refused(make):
    (release_id,) = prepare_n(make, 1)
    with pytest.raises(kr.ReleaseError, match="at least 2"):
        make().activate(release_id, keep=1)


def test_a_current_that_is_not_a_symlink_fails_with_advice(make, tmp_path):
    (release_id,) = prepare_n(make, 1)
    (project_dir(tmp_path) / "current").mkdir()
    with pytest.raises(kr.ReleaseError, match="not a symlink.*move it away"):
        make().activate(release_id)


# -- failed and list -------------------------------------------------------------
def test_failed_marks_the_record_without_moving_current(make, tmp_path):
    good, bad = prepare_n(make, 2)
    make().activate(good)
    result = make().fail(bad, "app did not become healthy")
    assert result["changed"] is True and result["current"] == good
    assert current_target(tmp_path) == f"releases/{good}"
    rec = record(tmp_path, bad)
    assert rec["result"] == "failed" and rec["error"] == "app did not become healthy" and rec["failed_at"]
    assert record(tmp_path, good)["result"] == "active"
    assert make().fail(bad, "app did not become healthy")["changed"] is False
    with pytest.raises(kr.ReleaseError, match="cannot be marked failed"):
        make().fail("20200101T000000Z-00000000", "x")


def test_activation_and_failure_record_meta_shared_by_an_upgrade(make, tmp_path):
    """An upgrade id given at activation lands in a reused release's record; list shows it."""
    old, new = prepare_n(make, 2)
    make().activate(old, meta={"upgrade": "u-1"})
    make().activate(new, meta={"upgrade": "u-2", "target": "v2"})
    assert record(tmp_path, new)["upgrade"] == "u-2" and record(tmp_path, new)["target"] == "v2"
    # Rolling back reuses the old release: it now carries the rollback's id.
    make().activate(old, meta={"upgrade": "u-3"})
    assert record(tmp_path, old)["upgrade"] == "u-3"
    # Activating what is already current changes nothing, meta included.
    assert make().activate(old, meta={"upgrade": "u-4"})["changed"] is False
    assert record(tmp_path, old)["upgrade"] == "u-3"
    make().fail(new, "rolled back", meta={"marked_bad_by": "ops"})
    rec = record(tmp_path, new)
    assert rec["result"] == "failed" and rec["marked_bad_by"] == "ops" and rec["upgrade"] == "u-2"
    listed = {r["id"]: r for r in make().list()["releases"]}
    assert listed[new]["meta"]["marked_bad_by"] == "ops" and listed[old]["meta"]["upgrade"] == "u-3"
    with pytest.raises(kr.ReleaseError, match="meta may not set"):
        make().activate(new, meta={"result": "active"})


def test_list_returns_releases_newest_first_and_changes_nothing(make, tmp_path):
    assert make().list() == {"changed": False, "releases": [], "current": None}
    ids = prepare_n(make, 3)
    make().activate(ids[1])
    before = snapshot(tmp_path)
    listed = make().list()
    assert snapshot(tmp_path) == before
    assert listed["current"] == ids[1]
    assert [r["id"] for r in listed["releases"]] == list(reversed(ids))
    entry = listed["releases"][1]
    assert entry["current"] is True and entry["result"] == "active" and entry["images"] == IMAGES
    assert set(entry) >= {"id", "created", "result", "images", "config_hash", "current"}


# -- check mode ------------------------------------------------------------------
def test_check_mode_writes_nothing_and_predicts_the_real_run(make, tmp_path):
    fresh = make(check_mode=True).prepare(FILES, IMAGES)
    assert fresh["changed"] is True and fresh["new"] is True
    assert list(tmp_path.iterdir()) == [], "not even the project directory is created"
    assert make(check_mode=True).activate(fresh["release_id"])["changed"] is True, "first run: warn, not fail"

    ids = prepare_n(make, 4)
    make().activate(ids[0], keep=10)
    (project_dir(tmp_path) / "releases" / "20260509T065900Z-0badc0de").mkdir()
    before = snapshot(tmp_path)
    predictions = [
        make(check_mode=True).prepare(variant(9), IMAGES),
        make(check_mode=True).prepare(variant(3), IMAGES),
        make(check_mode=True).activate(ids[3], keep=2),
        make(check_mode=True).fail(ids[2], "boom"),
    ]
    assert snapshot(tmp_path) == before
    assert [p["changed"] for p in predictions] == [True, True, True, True]
    real = make().activate(ids[3], keep=2)
    assert {k: real[k] for k in ("changed", "previous", "pruned", "cleaned")} == {
        k: predictions[2][k] for k in ("changed", "previous", "pruned", "cleaned")
    }


# -- the module itself -----------------------------------------------------------
def _module_literals():
    tree = ast.parse(MODULE.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_documentation_matches_the_argument_spec():
    literals = _module_literals()
    doc = yaml.safe_load(literals["DOCUMENTATION"])["options"]
    spec = literals["ARGUMENT_SPEC"]
    assert set(doc) == set(spec)
    for name, option in spec.items():
        for key in ("type", "default", "choices", "required", "elements"):
            assert doc[name].get(key) == option.get(key), f"{name}.{key}"
    assert set(doc["images"]["suboptions"]) == set(spec["images"]["options"])
    yaml.safe_load(literals["EXAMPLES"])
    yaml.safe_load(literals["RETURN"])


def test_module_imports_only_stdlib_and_ansible_module_utils():
    for path in (MODULE, MODULE_UTILS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("ansible.module_utils.") or top in sys.stdlib_module_names, f"{path}: {name}"


PLAYBOOK = """
- name: Drive keelson_release as a deploy would
  hosts: localhost
  gather_facts: false
  vars:
    common: {project: keelson-app-blue, root: "{{ root }}"}
  tasks:
    - name: Prepare in check mode
      keelson_release: "{{ common | combine({'files': files, 'images': images, 'meta': {'git_commit': 'c0'}}) }}"
      check_mode: true
      register: checked
    - name: Prepare
      keelson_release: "{{ common | combine({'files': files, 'images': images, 'meta': {'git_commit': 'c0'}}) }}"
      register: prepared
    - name: Prepare again
      keelson_release: "{{ common | combine({'files': files, 'images': images}) }}"
      register: again
    - name: Activate
      keelson_release: "{{ common | combine({'state': 'active', 'release': prepared.release_id}) }}"
      register: active
    - name: List
      keelson_release: "{{ common | combine({'state': 'list'}) }}"
      register: listed
    - name: Activate a release that does not exist
      keelson_release: "{{ common | combine({'state': 'active', 'release': '20200101T000000Z-00000000'}) }}"
      register: unknown
      ignore_errors: true
    - name: Use a bad project name
      keelson_release: "{{ common | combine({'project': 'app', 'files': files}) }}"
      register: bad_project
      ignore_errors: true
    - name: Save the results
      ansible.builtin.copy:
        content: "{{ dict(names | zip(results)) | to_json }}"
        dest: "{{ root }}/../results.json"
        mode: "0600"
      vars:
        names: [checked, prepared, again, active, listed, unknown, bad_project]
        results: "{{ [checked, prepared, again, active, listed, unknown, bad_project] }}"
"""


def test_the_module_runs_end_to_end_through_ansible(tmp_path):
    root = tmp_path / "opt"
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    extra = {"root": str(root), "files": FILES, "images": IMAGES, "ansible_python_interpreter": sys.executable}
    env = tool_env()
    env["ANSIBLE_LIBRARY"] = str(ROOT / "plugins" / "modules")
    env["ANSIBLE_MODULE_UTILS"] = str(ROOT / "plugins" / "module_utils")
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook), "-e", json.dumps(extra)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads((tmp_path / "results.json").read_text())
    release_id = r["prepared"]["release_id"]
    assert r["checked"]["changed"] is True and r["checked"]["release_id"].endswith(release_id[-8:])
    assert r["prepared"]["changed"] is True and r["prepared"]["new"] is True
    assert r["again"]["changed"] is False and r["again"]["release_id"] == release_id
    assert r["active"]["changed"] is True and r["active"]["previous"] is None
    assert current_target(root) == f"releases/{release_id}"
    assert record(root, release_id)["git_commit"] == "c0"
    assert r["listed"]["changed"] is False and r["listed"]["current"] == release_id
    assert r["unknown"]["failed"] is True and "does not exist" in r["unknown"]["msg"]
    assert release_id in r["unknown"]["msg"], "the message lists the releases there are"
    assert r["bad_project"]["failed"] is True and "^keelson-" in r["bad_project"]["msg"]


def test_ansible_doc_renders_the_module():
    doc = module_doc("keelson_release")
    assert set(doc["doc"]["options"]) >= {"project", "root", "state", "files", "images", "release", "keep"}
    assert "release_id" in doc["return"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a group needs root")
def test_a_reused_release_gets_its_directories_regrouped(tmp_path):
    files = {"compose.yaml": "services: {}\n", "rules/a.yml": "groups: []\n"}
    kr.Releases("keelson-x", str(tmp_path)).prepare(files, [], {})
    regrouped = kr.Releases("keelson-x", str(tmp_path), gid=65534).prepare(files, [], {})
    assert regrouped["changed"] is True
    release_dir = regrouped["release_dir"]
    for path in (release_dir, os.path.join(release_dir, "rules"), os.path.dirname(release_dir)):
        assert os.stat(path).st_gid == 65534, path
    assert kr.Releases("keelson-x", str(tmp_path), gid=65534).prepare(files, [], {})["changed"] is False
