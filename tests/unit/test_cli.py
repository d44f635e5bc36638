"""The keelson CLI: inventory choice and validation, the ansible-playbook command of
each command, refusals that start nothing, progress from real ansible output,
status from real per-host files and a real HTTP Prometheus, logs over ssh."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from keelson import environment, logs, runner, status
from keelson.cli import app
from tests.helpers import BIN, ROOT, tool_env

cli = CliRunner()
LAB = ROOT / "inventories" / "lab"


# --- shared helpers (test_tui.py uses them too) ---------------------------------


class Launches:
    """Stands in for keelson.runner.launch: records every argv; ``start`` decides what
    really runs (by default nothing may start)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.start = None

    def __call__(self, argv, env=None, cwd=ROOT):
        self.argvs.append(list(argv))
        if self.start is None:
            raise AssertionError(f"nothing should have been started, got {argv}")
        return self.start(list(argv))


@pytest.fixture
def launches(monkeypatch) -> Launches:
    recorder = Launches()
    monkeypatch.setattr(runner, "launch", recorder)
    return recorder


LOCAL_PLAY = """\
- name: First play
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
- name: Second play
  hosts: all
  gather_facts: false
  tasks:
    - name: Maybe fail
      ansible.builtin.fail:
        msg: boom
      when: fail | bool
"""


def real_playbook(tmp_path: Path, fail: bool) -> subprocess.Popen:
    """A real ansible-playbook run on localhost (what runs instead of the fleet's playbook)."""
    play = tmp_path / "play.yml"
    play.write_text(LOCAL_PLAY)
    env = tool_env()
    env["KEELSON_AUDIT_LOG"] = str(tmp_path / "audit.jsonl")
    argv = [str(BIN / "ansible-playbook"), str(play), "-i", "localhost,", "-c", "local"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}", "-e", f"fail={str(fail).lower()}"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def printing(*lines: str):
    """A starter whose process prints these lines (for ssh/journalctl output)."""
    script = "import sys; sys.stdout.write(sys.argv[1])"
    return lambda argv: subprocess.Popen(
        [sys.executable, "-c", script, "".join(f"{line}\n" for line in lines)], stdout=subprocess.PIPE, text=True
    )


@contextmanager
def prometheus(alerts: list[dict], queries: dict[str, list[dict]]):
    """A real HTTP server answering Prometheus' API; yields (port, requests seen)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urllib.parse.urlparse(self.path)
            seen.append(self.path)
            if url.path == "/api/v1/alerts":
                body = {"status": "success", "data": {"alerts": alerts}}
            elif url.path == "/api/v1/query":
                expr = urllib.parse.parse_qs(url.query)["query"][0]
                body = {"status": "success", "data": {"resultType": "vector", "result": queries.get(expr, [])}}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


def write_inventory(directory: Path, prom_port: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(
        f"""\
all:
  children:
    lb: {{hosts: {{edge1: }}}}
    monitoring: {{hosts: {{edge1: }}}}
    app: {{hosts: {{app1: , app2: }}}}
    db: {{hosts: {{db1: }}}}
  hosts:
    edge1: {{ansible_host: 127.0.0.1, monitoring_prometheus_port: {prom_port}}}
    app1: {{ansible_host: 127.0.0.2}}
    app2: {{ansible_host: 127.0.0.3}}
    db1: {{ansible_host: 127.0.0.4}}
"""
    )
    return directory


def running(name, project, service, health="healthy"):
    return {"name": name, "project": project, "service": service, "state": "running", "health": health,
            "restart_count": 0}  # fmt: skip


def host_files(app2_health: str = "healthy") -> dict[str, dict]:
    """What playbooks/status.yml writes for edge1, app1, app2 (db1 does not answer)."""
    slots = [
        {"project": "keelson-app-blue", "slot": "blue", "release": "r1", "image": "app:v1", "state": "idle"},
        {"project": "keelson-app-green", "slot": "green", "release": "r2", "image": "app:v2", "state": "active"},
    ]
    app_containers = [
        {"name": "keelson-app-blue-app-1", "project": "keelson-app-blue", "service": "app", "state": "exited",
         "health": "", "restart_count": 0},
        {"name": "keelson-app-green-migrate-1", "project": "keelson-app-green", "service": "migrate",
         "state": "exited", "health": "", "restart_count": 0},
    ]  # fmt: skip
    return {
        "edge1": {
            "host": "edge1",
            "groups": ["lb", "monitoring"],
            "releases": [
                {"project": "keelson-edge", "slot": "", "release": "e1", "image": "haproxy", "state": "active"}
            ],
            "containers": [
                running("keelson-edge-haproxy-1", "keelson-edge", "haproxy"),
                running("keelson-monitoring-prometheus-1", "keelson-monitoring", "prometheus"),
            ],
        },
        "app1": {
            "host": "app1",
            "groups": ["app"],
            "releases": slots,
            "containers": [*app_containers, running("keelson-app-green-app-1", "keelson-app-green", "app")],
        },
        "app2": {
            "host": "app2",
            "groups": ["app"],
            "releases": slots,
            "containers": [
                *app_containers,
                running("keelson-app-green-app-1", "keelson-app-green", "app", health=app2_health),
            ],
        },
    }


def status_writer(files: dict[str, dict]):
    """A starter that writes the per-host files where the status command asked for them."""

    def start(argv: list[str]) -> subprocess.Popen:
        target = next(a.split("=", 1)[1] for a in argv if a.startswith("keelson_status_dir="))
        for host, data in files.items():
            (Path(target) / f"{host}.json").write_text(json.dumps(data))
        return subprocess.Popen([sys.executable, "-c", "print('PLAY RECAP ***')"], stdout=subprocess.PIPE, text=True)

    return start


NOW = 1_800_000_000
PROM_ALERTS = [
    {"labels": {"alertname": "AppSlotDown", "host": "app2"}, "state": "firing"},
    {"labels": {"alertname": "DiskFilling", "host": "app1"}, "state": "pending"},
]
PROM_QUERIES = {
    status.PROM_QUERIES["cert_days"]: [{"metric": {"instance": "https://lab.keelson.test/"}, "value": [NOW, "42.25"]}],
    status.PROM_QUERIES["backup_age"]: [{"metric": {"host": "db1"}, "value": [NOW, "5400"]}],
}


@pytest.fixture(scope="module")
def lab_inventory() -> environment.Inventory:
    return environment.load(LAB)


# --- the lab commands (unchanged) -------------------------------------------------


def test_missing_inventory_is_named():
    result = cli.invoke(app, ["lab", "status", "-i", "/nonexistent/inventory"])
    assert result.exit_code == 2
    assert "/nonexistent/inventory does not exist" in result.output


def test_unknown_host_lists_the_known_ones():
    result = cli.invoke(app, ["lab", "ssh", "no-such-host", "-i", str(ROOT / "inventories" / "lab")])
    assert result.exit_code == 2
    assert "no host 'no-such-host'" in result.output
    assert "lab-db1" in result.output


def test_unknown_release_is_refused(monkeypatch):
    class NoDocker:
        def ping(self):
            return True

    monkeypatch.setattr("keelson.cli.docker.from_env", NoDocker)
    result = cli.invoke(app, ["lab", "images", "--release", "11"])
    assert result.exit_code == 2
    assert "no lab host image for Debian '11'" in result.output


def test_help_lists_the_lab_commands():
    result = cli.invoke(app, ["lab", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "ssh", "images"):
        assert command in result.output


def test_help_lists_the_fleet_commands():
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("deploy", "upgrade", "rollback", "backup", "restore", "onboard", "prune", "logs", "tui"):
        assert command in result.output


# --- which inventory ------------------------------------------------------------------


def test_inventory_choice_order(tmp_path):
    state = tmp_path / "environment"
    assert environment.choice(None, {}, state) == "lab"
    state.write_text("single\n")
    assert environment.choice(None, {}, state) == "single"
    assert environment.choice(None, {"KEELSON_INVENTORY": "prod"}, state) == "prod"
    assert environment.choice("lab", {"KEELSON_INVENTORY": "prod"}, state) == "lab"


def test_a_name_is_under_inventories_and_a_path_is_a_path(tmp_path):
    assert environment.path_of("single") == ROOT / "inventories" / "single"
    assert environment.path_of(str(tmp_path)) == tmp_path
    with pytest.raises(environment.InventoryError, match="no inventory named 'nope'.*known: lab, prod, single"):
        environment.path_of("nope")
    with pytest.raises(environment.InventoryError, match="does not exist"):
        environment.path_of(str(tmp_path / "missing"))


FLEET_COMMANDS = [
    ["up"],
    ["deploy"],
    ["upgrade"],
    ["rollback"],
    ["backup"],
    ["restore", "--yes"],
    ["onboard", "lab-app1"],
    ["down", "--yes"],
    ["prune", "--yes"],
    ["status"],
    ["logs", "app"],
    ["tui"],
]


@pytest.mark.parametrize("command", FLEET_COMMANDS, ids=lambda c: c[0])
def test_unknown_inventory_is_refused_and_nothing_runs(command, launches):
    result = cli.invoke(app, [*command, "-i", "no-such-env"])
    assert result.exit_code == 2, result.output
    assert "no inventory named 'no-such-env'" in result.output
    assert launches.argvs == []


def test_environment_variable_chooses_the_inventory(launches):
    result = cli.invoke(app, ["deploy"], env={"KEELSON_INVENTORY": "/nonexistent/fleet"})
    assert result.exit_code == 2
    assert "/nonexistent/fleet does not exist" in result.output
    assert launches.argvs == []


BROKEN_INVENTORIES = {
    "no_monitoring": ("all:\n  children:\n    lb: {hosts: {a.example.com: }}\n    app: {hosts: {a.example.com: }}\n"
                      "    db: {hosts: {a.example.com: }}\n", "group 'monitoring' is missing"),
    "empty_db": ("all:\n  children:\n    lb: {hosts: {a.example.com: }}\n    app: {hosts: {a.example.com: }}\n"
                 "    db: {hosts: {}}\n    monitoring: {hosts: {a.example.com: }}\n", "group 'db' "),
    "no_address": ("all:\n  children:\n    lb: {hosts: {web: }}\n    app: {hosts: {web: }}\n"
                   "    db: {hosts: {web: }}\n    monitoring: {hosts: {web: }}\n", "host 'web' has no address"),
    "not_yaml": ("all:\n  hosts:\n    x: [\n", "does not parse"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN_INVENTORIES))
def test_validate_refuses_a_broken_inventory(case, tmp_path, launches):
    text, message = BROKEN_INVENTORIES[case]
    inventory = tmp_path / case
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(text)
    result = cli.invoke(app, ["environment", "validate", str(inventory)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    # Every fleet command validates first: nothing runs on a broken inventory.
    result = cli.invoke(app, ["deploy", "-i", str(inventory)])
    assert result.exit_code == 2
    assert launches.argvs == []


@pytest.mark.parametrize("name", ["lab", "single"])
def test_validate_accepts_the_example_inventories(name):
    result = cli.invoke(app, ["environment", "validate", name])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_use_stores_only_a_valid_environment(tmp_path, monkeypatch):
    state = tmp_path / ".keelson" / "environment"
    monkeypatch.setattr(environment, "STATE_FILE", state)
    monkeypatch.delenv("KEELSON_INVENTORY", raising=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "hosts.yml").write_text(BROKEN_INVENTORIES["no_monitoring"][0])
    result = cli.invoke(app, ["environment", "use", str(bad)])
    assert result.exit_code == 2
    assert not state.exists()
    result = cli.invoke(app, ["environment", "use", "single"])
    assert result.exit_code == 0, result.output
    assert state.read_text() == "single\n"
    assert environment.choice(None, {}, state) == "single"
    listed = cli.invoke(app, ["environment", "list"])
    assert listed.exit_code == 0
    line = next(row for row in listed.output.splitlines() if " single " in row)
    assert "*" in line and " 1 " in line
    assert "current: single" in listed.output


# --- the commands and their playbooks --------------------------------------------------


def test_every_command_has_its_playbook():
    missing = [f"{c}: {p}" for c, p in runner.PLAYBOOKS.items() if not (ROOT / p).is_file()]
    assert not missing, missing


def test_playbook_command_shape():
    argv = runner.playbook_command(
        "upgrade",
        LAB,
        {"app_image": "registry.example.com/app:2@sha256:ab", "note": "two words"},
        limit="lab-app1",
        check=True,
        passthrough=["-v"],
    )
    assert argv == [
        str(BIN / "ansible-playbook"),
        "playbooks/upgrade.yml",
        "-i",
        str(LAB),
        "-l",
        "lab-app1",
        "-e",
        "app_image=registry.example.com/app:2@sha256:ab",
        "-e",
        '{"note": "two words"}',
        "--check",
        "--diff",
        "-v",
    ]


def _ansible_args(argv: list[str]) -> list[str]:
    assert argv[0] == str(BIN / "ansible-playbook")
    assert argv[2:4] == ["-i", str(LAB)]
    return [argv[1], *argv[4:]]


CASES = [
    (["up"], ["site.yml"]),
    (["up", "--check"], ["site.yml", "--check", "--diff"]),
    (["up", "--full"], ["site.yml", "-e", "connect_fast_path=false"]),
    (["up", "--check", "--full"], ["site.yml", "-e", "connect_fast_path=false", "--check", "--diff"]),
    (["deploy", "--full"], ["playbooks/stack.yml", "-e", "connect_fast_path=false"]),
    (["deploy", "--", "--tags", "app", "-v"], ["playbooks/stack.yml", "--tags", "app", "-v"]),
    (["upgrade"], ["playbooks/upgrade.yml"]),
    (
        ["upgrade", "--image", "keelson-lab/app:v2", "--serial", "50%", "--no-backup"],
        [
            "playbooks/upgrade.yml",
            "-e",
            "app_image=keelson-lab/app:v2",
            "-e",
            "upgrade_serial=50%",
            "-e",
            "upgrade_backup=false",
        ],
    ),  # fmt: skip
    (
        ["rollback", "--image", "keelson-lab/app:v1"],
        ["playbooks/rollback.yml", "-e", "app_rollback_image=keelson-lab/app:v1"],
    ),
    (["backup"], ["playbooks/backup.yml"]),
    (["backup", "--job", "restore-test"], ["playbooks/backup.yml", "-e", "backup_job=restore-test"]),
    (["restore", "--yes"], ["playbooks/restore.yml", "-e", "restore_confirm=yes"]),
    (
        ["restore", "--yes", "--snapshot", "4f2a9c1e", "--offsite"],
        [
            "playbooks/restore.yml",
            "-e",
            "restore_confirm=yes",
            "-e",
            "backup_restore_snapshot=4f2a9c1e",
            "-e",
            "backup_restore_repository=offsite",
        ],
    ),  # fmt: skip
    (
        ["restore", "-y", "--time", "2026-11-29T08:15:00Z"],
        ["playbooks/restore.yml", "-e", "restore_confirm=yes", "-e", "backup_restore_target_time=2026-11-29T08:15:00Z"],
    ),
    (
        ["onboard", "lab-app2", "--", "-e", "connect_bootstrap_user=admin"],
        ["playbooks/onboard.yml", "-l", "lab-app2", "-e", "connect_bootstrap_user=admin"],
    ),  # fmt: skip
    (["down", "--yes"], ["playbooks/down.yml", "-e", "keelson_confirm=yes"]),
    (["prune", "--yes"], ["playbooks/prune.yml", "-e", "keelson_confirm=yes"]),
    (["prune", "--dry-run"], ["playbooks/prune.yml", "--check", "--diff"]),
]


@pytest.mark.parametrize(("command", "expected"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else "")
def test_command_runs_its_playbook(command, expected, launches):
    launches.start = printing("PLAY [x] ***", "PLAY RECAP ***", "localhost : ok=1 changed=0 unreachable=0 failed=0")
    result = cli.invoke(app, [*command, "-i", "lab"] if "--" not in command else _with_inventory(command))
    assert result.exit_code == 0, result.output
    assert len(launches.argvs) == 1
    assert _ansible_args(launches.argvs[0]) == expected


def _with_inventory(command: list[str]) -> list[str]:
    cut = command.index("--")
    return [*command[:cut], "-i", "lab", *command[cut:]]


def test_exit_code_and_recap_are_ansibles(launches, tmp_path):
    launches.start = lambda argv: real_playbook(tmp_path, fail=True)
    result = cli.invoke(app, ["backup", "-i", "lab"])
    assert result.exit_code == 2, result.output
    assert "fatal: [localhost]: FAILED!" in result.output  # ansible's own output, streamed
    recap = result.output[result.output.index("recap") :]
    assert "localhost" in recap
    assert "ansible-playbook exit 2" in result.output


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["down"], "STOP the application stack"),
        (["prune"], "DELETE old releases"),
        (["restore"], "REPLACE the databases of lab-db1"),
        (["restore", "--snapshot", "abc"], "snapshot abc"),
    ],
)
def test_destructive_commands_need_yes(command, says, launches):
    result = cli.invoke(app, [*command, "-i", "lab"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert says in text
    assert "--yes" in text and "Nothing was run" in text
    assert launches.argvs == []


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["upgrade", "--serial", "0"], "--serial '0'"),
        (["rollback", "--serial", "150%"], "--serial '150%'"),
        (["backup", "--job", "everything"], "--job 'everything'"),
        (["restore", "--yes", "--snapshot", "a", "--time", "2026-01-01T00:00:00Z"], "exclude each other"),
        (["onboard", "new-host"], "no host 'new-host'"),
        (["tui", "--interval", "1"], "--interval"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(command, message, launches):
    result = cli.invoke(app, [*command, "-i", "lab"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert launches.argvs == []


def test_test_command_is_the_readmes(launches):
    launches.start = printing("tests ran")
    result = cli.invoke(app, ["test"])
    assert launches.argvs == [["make", "test"]]
    assert result.exit_code == 0 and "tests ran" in result.output
    cli.invoke(app, ["test", "--", "-k", "fleet"])
    assert launches.argvs[-1] == ["scripts/test.sh", "-k", "fleet"]


# --- progress from ansible's own output -------------------------------------------------


def test_progress_follows_a_real_playbook_run(tmp_path):
    seen: list[tuple[str, str]] = []

    def on_line(line, progress):
        seen.append((progress.play, progress.task))

    code, progress = runner.run(["unused"], on_line, launcher=lambda argv, env=None: real_playbook(tmp_path, True))
    assert code == 2
    assert ("First play", "Say hello") in seen
    assert ("First play", "Change something") in seen
    assert ("Second play", "Maybe fail") in seen
    assert progress.tasks == 3
    assert progress.counts == {"ok": 1, "changed": 1, "failed": 1, "unreachable": 0}
    assert progress.recap == {
        "localhost": {"ok": 2, "changed": 1, "unreachable": 0, "failed": 1, "skipped": 0, "rescued": 0, "ignored": 0}
    }
    assert progress.recap_failed() == ["localhost"]
    assert "Second play › Maybe fail" in progress.line()


def test_progress_reads_colour_and_unreachable_hosts():
    progress = runner.Progress()
    for line in [
        "\x1b[0;32mPLAY [Deploy] ****\x1b[0m",
        "TASK [app : Start the slot] *****",
        "\x1b[0;31mfatal: [app2]: UNREACHABLE! => changed=false\x1b[0m",
        "ok: [app1] => (item=x)",
    ]:
        progress.feed(line)
    assert (progress.play, progress.task) == ("Deploy", "app : Start the slot")
    assert progress.hosts == {"app2": "unreachable", "app1": "ok"}


# --- status ------------------------------------------------------------------------------


def test_host_status_from_files(tmp_path):
    for host, data in host_files(app2_health="unhealthy").items():
        (tmp_path / f"{host}.json").write_text(json.dumps(data))
    found = status.read_host_files(tmp_path, ["app1", "app2", "db1", "edge1"])
    assert found["db1"] is None
    app1 = status.host_status("app1", ["app"], found["app1"])
    # the idle slot's stopped container and the finished migrate job do not count
    assert (app1.containers_healthy, app1.containers_total, app1.containers_bad) == (1, 1, [])
    assert app1.release == {"release": "r2", "slot": "green", "image": "app:v2"}
    app2 = status.host_status("app2", ["app"], found["app2"])
    assert app2.containers_bad == ["keelson-app-green-app-1 unhealthy"]
    assert not app2.healthy
    db1 = status.host_status("db1", ["db"], None)
    assert db1.problems() == ["unreachable"]
    assert status.row(db1)["reachable"] == "NO"


def test_a_stopped_active_slot_is_bad():
    data = host_files()["app1"]
    for container in data["containers"]:
        container["state"] = "exited"
    app1 = status.host_status("app1", ["app"], data)
    assert app1.containers_bad == ["keelson-app-green-app-1 exited"]


def test_a_broken_status_file_is_an_error(tmp_path):
    (tmp_path / "app1.json").write_text("{not json")
    with pytest.raises(environment.InventoryError, match="app1.json is not JSON"):
        status.read_host_files(tmp_path, ["app1"])


def _status(tmp_path, launches, files, prom_port):
    inventory = write_inventory(tmp_path / "inv", prom_port)
    launches.start = status_writer(files)
    return cli.invoke(app, ["status", "--json", "-i", str(inventory)])


def test_status_json_healthy_fleet(tmp_path, launches):
    files = host_files()
    files["db1"] = {"host": "db1", "groups": ["db"], "releases": [], "containers": [
        running("keelson-db-postgres-1", "keelson-db", "postgres")]}  # fmt: skip
    with prometheus([], PROM_QUERIES) as (port, seen):
        result = _status(tmp_path, launches, files, port)
    assert result.exit_code == 0, result.output
    assert any(a.endswith(runner.PLAYBOOKS["status"]) or a == runner.PLAYBOOKS["status"] for a in launches.argvs[0])
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert report["prometheus"] == {"url": f"http://127.0.0.1:{port}", "reachable": True, "error": None}
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["db1"]["backup_age_seconds"] == 5400
    assert hosts["edge1"]["cert_days_left"] == 42.2 or hosts["edge1"]["cert_days_left"] == 42.3
    assert hosts["app1"]["cert_days_left"] is None
    assert hosts["app1"]["release"]["slot"] == "green"
    assert "/api/v1/alerts" in seen


def test_status_json_names_what_is_wrong(tmp_path, launches):
    with prometheus(PROM_ALERTS, PROM_QUERIES) as (port, _):
        result = _status(tmp_path, launches, host_files(app2_health="unhealthy"), port)
    assert result.exit_code == 1, result.output
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert hosts["db1"]["reachable"] is False
    assert hosts["app2"]["containers"] == {"healthy": 0, "total": 1, "bad": ["keelson-app-green-app-1 unhealthy"]}
    assert hosts["app2"]["alerts"] == ["AppSlotDown"]
    assert hosts["app1"]["alerts"] == []  # pending is not firing
    assert hosts["app1"]["healthy"] is True


def test_an_alert_without_a_host_is_the_fleets_not_every_hosts(tmp_path, launches, monkeypatch):
    files = host_files()
    files["db1"] = {"host": "db1", "groups": ["db"], "releases": [], "containers": [
        running("keelson-db-postgres-1", "keelson-db", "postgres")]}  # fmt: skip
    alerts = [{"labels": {"alertname": "CertificateExpiringSoon"}, "state": "firing"}]
    with prometheus(alerts, PROM_QUERIES) as (port, _):
        result = _status(tmp_path, launches, files, port)
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["healthy"] is False
        assert report["fleet_alerts"] == ["CertificateExpiringSoon"]
        assert all(h["alerts"] == [] and h["healthy"] for h in report["hosts"]), report["hosts"]
        monkeypatch.setattr("keelson.cli.out", Console(width=200))
        monkeypatch.setattr("keelson.cli.console", Console(width=200))
        inventory = write_inventory(tmp_path / "inv2", port)
        table = cli.invoke(app, ["status", "-i", str(inventory)])
    assert table.exit_code == 1
    assert "NOT healthy" in table.output
    assert "Fleet-wide alerts: CertificateExpiringSoon" in table.output


def test_status_without_prometheus_says_unknown(tmp_path, launches):
    result = _status(tmp_path, launches, host_files(), free_port())
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["prometheus"]["reachable"] is False
    assert report["prometheus"]["error"]
    app1 = next(h for h in report["hosts"] if h["host"] == "app1")
    assert app1["alerts"] == "unknown" and app1["cert_days_left"] == "unknown"


def test_status_table(tmp_path, launches, monkeypatch):
    monkeypatch.setattr("keelson.cli.out", Console(width=200))
    inventory = write_inventory(tmp_path / "inv", free_port())
    launches.start = status_writer(host_files(app2_health="unhealthy"))
    result = cli.invoke(app, ["status", "-i", str(inventory)])
    assert result.exit_code == 1
    assert "NOT healthy" in result.output
    row = next(line for line in result.output.splitlines() if "app2" in line)
    assert "0/1 bad: keelson-app-green-app-1 unhealthy" in row
    assert "app:v2 (green)" in row
    assert "Prometheus did not answer" in result.output


# --- logs --------------------------------------------------------------------------------


def test_stack_services_are_read_from_the_compose_templates():
    services = logs.stack_services()
    assert {"app", "postgres", "redis", "haproxy", "prometheus", "alertmanager"} <= set(services)
    assert "db_password" not in services  # a secret, not a service


def test_stack_services_parser(tmp_path):
    template = tmp_path / "roles" / "x" / "templates" / "compose.yaml.j2"
    template.parent.mkdir(parents=True)
    template.write_text(
        "# {{ ansible_managed }}\nx-common: &c\n  image: a\nservices:\n  web:\n    image: a\n"
        "{% if extra %}\n  worker:  # the queue\n    <<: *c\n{% endif %}\nvolumes:\n  data: {}\n"
    )
    assert logs.stack_services(tmp_path) == ["web", "worker"]


def test_logs_ssh_command_for_the_lab(lab_inventory):
    argv = logs.ssh_command(lab_inventory, "app", "lab-app1", lines=50, follow=True)
    assert argv[:3] == ["ssh", "-i", f"{LAB}/.lab/id_ed25519"]
    assert f"UserKnownHostsFile={LAB}/.lab/known_hosts" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[-3:-1] == ["keelson@172.30.77.11", "--"]
    assert argv[-1] == (
        "sudo -n journalctl -D /var/log/journal/remote --no-pager -o cat "
        "COM_DOCKER_COMPOSE_SERVICE=app _HOSTNAME=lab-app1 -n 50 -f"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchservice"], "unknown service 'nosuchservice'"),
        (["app", "--host", "lab-app9"], "no host 'lab-app9'"),
        (["app", "--lines", "0"], "--lines must be 1 or more"),
    ],
)
def test_logs_bad_input(args, message, launches):
    result = cli.invoke(app, ["logs", *args, "-i", "lab"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert launches.argvs == []


def test_logs_streams_journalctl(launches):
    launches.start = printing("GET /readyz 200", "GET /version 200")
    result = cli.invoke(app, ["logs", "app", "--host", "lab-app2", "-i", "lab"])
    assert result.exit_code == 0, result.output
    assert "GET /version 200" in result.output
    assert launches.argvs[0][0] == "ssh"
    assert "_HOSTNAME=lab-app2" in launches.argvs[0][-1]
    assert "-f" not in launches.argvs[0][-1].split()


def test_templated_variables_keelson_cannot_evaluate_are_refused():
    inventory = environment.Inventory(
        path=LAB,
        groups={"monitoring": ["m"]},
        hostvars={"m": {"ansible_host": "10.0.0.1", "ansible_user": "{{ lookup('env', 'USER') }}"}},
    )
    with pytest.raises(environment.InventoryError, match="template keelson cannot evaluate"):
        logs.ssh_command(inventory, "app", None)
    inventory.hostvars["m"]["ansible_user"] = "{{ base_deploy_user }}"
    inventory.hostvars["m"]["base_deploy_user"] = "deploy"
    assert logs.ssh_command(inventory, "app", None)[-3] == "deploy@10.0.0.1"


def test_logs_filter_on_the_short_host_name():
    """base sets the short name as the host name: app1.example.com logs as app1."""
    args = logs.journalctl_args("app", "app1.example.com", 10, False)
    assert "_HOSTNAME=app1" in args
    assert "COM_DOCKER_COMPOSE_SERVICE=app" in args
