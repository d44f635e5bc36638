"""The health gate of a rolling upgrade (module keelson_health_gate), against a real HTTP server on
127.0.0.1 whose answers each test sets; most runs use a fake clock so timeouts cost no time.
The last tests run the real module through ansible and ansible-doc."""

from __future__ import annotations

import ast
import json
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, module_doc, run_playbook

MODULE = ROOT / "plugins" / "modules" / "keelson_health_gate.py"
sys.path.insert(0, str(MODULE.parent))
import keelson_health_gate as hg  # noqa: E402

V1 = {"version": "1.0.0", "release": "v1", "slot": "green", "schema": "0001"}
V2 = {"version": "2.0.0", "release": "v2", "slot": "green", "schema": "0002"}
NOT_READY = {"status": "error", "checks": {"postgres": "error: timeout", "redis": "ok"}}
RETURNED = {"passed", "attempts", "streak", "elapsed", "version", "last_error"}


class Slot:
    """What the app slot answers. `ready` is a status or a function of the /readyz request's index."""

    def __init__(self):
        self.ready: int | Callable[[int], int] = 200
        self.version: dict = dict(V2)
        self.delay: dict[str, float] = {}  # path -> seconds to wait before answering
        self.redirect: dict[str, str] = {}  # path -> Location of a 302
        self.requests: list[tuple[str, str | None]] = []  # (path, Host header)
        self.stopping = threading.Event()
        self.url = ""

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if path in self.redirect:
            return 302, {"Location": self.redirect[path]}, b""
        if path == "/readyz":
            index = sum(1 for p, _ in self.requests if p == path) - 1
            status = self.ready(index) if callable(self.ready) else self.ready
            body = {"status": "ok"} if status == 200 else NOT_READY
            return status, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if path == "/version":
            return 200, {"Content-Type": "application/json"}, json.dumps(self.version).encode()
        return 404, {}, b"not found"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        slot: Slot = self.server.slot
        slot.requests.append((self.path, self.headers.get("Host")))
        slot.stopping.wait(slot.delay.get(self.path, 0))
        status, headers, body = slot.answer(self.path)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
            pass

    def log_message(self, format, *args):  # noqa: A002 -- the base class's signature
        pass


@pytest.fixture
def slot():
    state = Slot()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.slot = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    state.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


class FakeClock:
    """Time that moves only when the gate sleeps."""

    def __init__(self):
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def gate(url, clock: FakeClock | None = None, **options) -> dict:
    """Run the gate with the module's defaults and the real HTTP fetcher."""
    o = {name: spec.get("default") for name, spec in hg.ARGUMENT_SPEC.items()} | {"url": url} | options
    hg.check_options(o)
    fetch = hg.http_fetcher(o["request_timeout"], o["host_header"])
    timing = {"clock": clock.now, "sleep": clock.sleep} if clock else {}
    return hg.wait_for_health(
        lambda: hg.probe_once(fetch, o["url"], o["ready_path"], o["version_path"], o["expect"]),
        o["successes"],
        o["interval"],
        o["timeout"],
        **timing,
    )


def test_passes_after_n_consecutive_successes_in_real_time(slot):
    result = gate(slot.url, expect={"release": "v2"}, successes=3, interval=0.02, timeout=5)
    assert result["passed"] is True
    assert (result["attempts"], result["streak"]) == (3, 3)
    assert result["last_error"] is None
    assert result["version"] == V2
    assert 0.04 <= result["elapsed"] < 2
    assert [p for p, _ in slot.requests] == ["/readyz", "/version"] * 3


def test_a_flap_in_the_middle_resets_the_streak(slot):
    slot.ready = lambda i: 503 if i == 2 else 200  # ok, ok, 503, ok, ok, ok
    clock = FakeClock()
    result = gate(slot.url, clock, expect={"release": "v2"}, successes=3, interval=1, timeout=30)
    assert result["passed"] is True
    assert result["attempts"] == 6, "the two successes before the flap do not count"
    assert result["streak"] == 3
    assert result["last_error"].startswith("/readyz answered 503: ")
    assert clock.sleeps == [1] * 5


def test_a_slot_that_alternates_never_passes(slot):
    slot.ready = lambda i: 200 if i % 2 == 0 else 503
    result = gate(slot.url, FakeClock(), successes=2, interval=1, timeout=10)
    assert result["passed"] is False
    assert (result["attempts"], result["streak"]) == (10, 1)
    assert result["last_error"].startswith("/readyz answered 503")


def test_wrong_release_times_out_naming_expected_and_actual(slot):
    slot.version = dict(V1)
    clock = FakeClock()
    result = gate(slot.url, clock, expect={"release": "v2"}, successes=3, interval=1, timeout=10)
    assert result["passed"] is False
    assert result["attempts"] == 10, "probes at 0..9 s, none after the deadline"
    assert result["elapsed"] == 10
    assert result["streak"] == 0
    assert result["last_error"] == "/version said release=v1, expected v2"
    assert result["version"] == V1, "the wrong version is returned for the operator to see"


def test_503_readiness_is_reported_with_a_body_excerpt_and_version_is_not_asked(slot):
    slot.ready = 503
    result = gate(slot.url, FakeClock(), successes=1, interval=1, timeout=3)
    assert result["passed"] is False
    assert result["last_error"] == f"/readyz answered 503: {json.dumps(NOT_READY)}"
    assert result["version"] is None
    assert {p for p, _ in slot.requests} == {"/readyz"}


def test_connection_refused_is_reported(closed_port_url):
    result = gate(closed_port_url, FakeClock(), successes=1, interval=1, timeout=3)
    assert result["passed"] is False
    assert (result["attempts"], result["streak"]) == (3, 0)
    assert result["last_error"] == "/readyz: connection refused"


@pytest.mark.parametrize("path", ["/readyz", "/version"])
def test_an_answer_slower_than_request_timeout_is_a_failure(slot, path):
    slot.delay = {path: 2.0}
    result = gate(slot.url, FakeClock(), successes=1, interval=1, timeout=2, request_timeout=0.1)
    assert result["passed"] is False
    assert result["attempts"] == 2
    assert result["last_error"] == f"{path}: no answer within 0.1s (request_timeout)"


def test_a_slot_that_recovers_passes_after_failures_and_keeps_the_last_error(slot):
    slot.ready = lambda i: 503 if i < 4 else 200
    result = gate(slot.url, FakeClock(), successes=2, interval=1, timeout=30)
    assert result["passed"] is True
    assert (result["attempts"], result["streak"]) == (6, 2)
    assert result["last_error"].startswith("/readyz answered 503")


def test_a_redirect_is_not_followed(slot):
    slot.redirect = {"/readyz": "/version"}
    result = gate(slot.url, FakeClock(), successes=1, interval=1, timeout=2)
    assert result["passed"] is False
    assert result["last_error"] == "/readyz answered 302: (empty body)"
    assert {p for p, _ in slot.requests} == {"/readyz"}


def test_no_proxy_is_used_whatever_the_environment_says(slot, closed_port_url, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, closed_port_url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    result = gate(slot.url, FakeClock(), successes=2, interval=1, timeout=5)
    assert result["passed"] is True, result["last_error"]


def test_host_header_is_sent_and_a_trailing_slash_in_url_is_ignored(slot):
    result = gate(slot.url + "/", FakeClock(), successes=1, host_header="app.keelson.test")
    assert result["passed"] is True, result["last_error"]
    assert slot.requests == [("/readyz", "app.keelson.test"), ("/version", "app.keelson.test")]


def test_expect_compares_values_as_text():
    body = json.dumps({"release": "v2", "build": 7, "ok": True, "schema": None}).encode()
    data, error = hg.check_version("/version", 200, body, {"release": "v2", "build": "7", "ok": True, "schema": None})
    assert error is None and data["build"] == 7
    assert hg.check_version("/version", 200, body, {"ok": "true", "schema": "null", "build": 7})[1] is None
    assert hg.check_version("/version", 200, body, {"build": 8})[1] == "/version said build=7, expected 8"


@pytest.mark.parametrize(
    ("status", "body", "expect", "error"),
    [
        (200, b'{"release": "v1", "slot": "blue"}', {"release": "v2", "slot": "green"},
         "/version said release=v1, expected v2; slot=blue, expected green"),
        (200, b'{"slot": "green"}', {"release": "v2"}, "/version has no field 'release' (expected v2)"),
        (200, b"<html>oops</html>", {}, "/version answered something that is not JSON: <html>oops</html>"),
        (200, b'["v2"]', {}, '/version answered JSON that is not an object: ["v2"]'),
        (500, b"x" * 500, {}, "/version answered 500: " + "x" * 200 + "..."),
    ],
)  # fmt: skip
def test_bad_version_answers_say_what_is_wrong(status, body, expect, error):
    assert hg.check_version("/version", status, body, expect)[1] == error


def test_no_probe_starts_after_the_deadline():
    clock = FakeClock()
    result = hg.wait_for_health(lambda: (False, "nope", None), 2, 4, 10, clock=clock.now, sleep=clock.sleep)
    assert clock.sleeps == [4, 4, 2], "probes at 0, 4 and 8 s; the last sleep ends at the deadline"
    assert result == {
        "passed": False,
        "attempts": 3,
        "streak": 0,
        "elapsed": 10,
        "version": None,
        "last_error": "nope",
    }


GOOD = {name: spec.get("default") for name, spec in hg.ARGUMENT_SPEC.items()} | {"url": "http://127.0.0.1:8002"}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("successes", 0),
        ("successes", -3),
        ("interval", 0.0),
        ("interval", -1.0),
        ("timeout", 0),
        ("timeout", -5),
        ("request_timeout", 0.0),
        ("url", "127.0.0.1:8002"),
        ("url", "ftp://127.0.0.1:8002"),
        ("url", "http://"),
        ("url", "http://127.0.0.1:port"),
        ("ready_path", "readyz"),
        ("version_path", ""),
    ],
)
def test_bad_options_are_rejected_naming_the_option(option, value):
    with pytest.raises(hg.GateError, match=f"^{option}"):
        hg.check_options(GOOD | {option: value})


def test_a_timeout_too_short_for_the_streak_is_rejected():
    with pytest.raises(hg.GateError, match=r"^timeout=4 .*successes=5 .*interval=1s"):
        hg.check_options(GOOD | {"successes": 5, "interval": 1.0, "timeout": 4})
    hg.check_options(GOOD | {"successes": 5, "interval": 1.0, "timeout": 5})
    hg.check_options(GOOD | {"successes": 1, "interval": 60.0, "timeout": 1})


def _module_literals() -> dict:
    out = {}
    for node in ast.parse(MODULE.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def test_documentation_matches_the_argument_spec():
    literals = _module_literals()
    doc = yaml.safe_load(literals["DOCUMENTATION"])
    spec = literals["ARGUMENT_SPEC"]
    assert set(doc["options"]) == set(spec)
    for name, option in spec.items():
        for key in ("type", "default", "choices", "required", "elements"):
            assert doc["options"][name].get(key) == option.get(key), f"{name}.{key}"
    descriptions = [doc["description"], *(o["description"] for o in doc["options"].values())]
    for description in descriptions:
        lines = description if isinstance(description, list) else [description]
        assert all(isinstance(line, str) for line in lines), f"a ': ' made YAML read a mapping: {lines}"
    yaml.safe_load(literals["EXAMPLES"])
    assert set(yaml.safe_load(literals["RETURN"])) == RETURNED


def test_module_imports_only_stdlib_and_ansible_module_utils():
    for node in ast.walk(ast.parse(MODULE.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.startswith("ansible.module_utils.") or name.split(".")[0] in sys.stdlib_module_names, name


PLAYBOOK = """
- name: Gate a slot as a rolling upgrade would
  hosts: localhost
  gather_facts: false
  vars:
    fast: {successes: 2, interval: 0.05, timeout: 1, request_timeout: 0.5}
  tasks:
    - name: Gate in check mode
      keelson_health_gate: "{{ fast | combine({'url': url, 'expect': {'release': 'v2'}}) }}"
      check_mode: true
      register: checked
    - name: Gate the v2 slot
      keelson_health_gate: "{{ fast | combine({'url': url, 'expect': {'release': 'v2', 'slot': 'green'}}) }}"
      register: passed
    - name: Gate expecting a release the slot does not run
      keelson_health_gate: "{{ fast | combine({'url': url, 'expect': {'release': 'v3'}}) }}"
      register: wrong
      ignore_errors: true
    - name: Gate with a bad option
      keelson_health_gate: "{{ fast | combine({'url': url, 'successes': 0}) }}"
      register: bad
      ignore_errors: true
    - name: Save the results
      ansible.builtin.copy:
        content: "{{ {'checked': checked, 'passed': passed, 'wrong': wrong, 'bad': bad} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def test_the_module_runs_end_to_end_through_ansible(slot, tmp_path: Path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    out = tmp_path / "results.json"
    extra = {"url": slot.url, "out": str(out), "ansible_python_interpreter": sys.executable}
    run = run_playbook(playbook, "-i", "localhost,", "-c", "local", "-e", json.dumps(extra), summary_file=None)
    assert run.returncode == 0, run.output[-4000:]
    r = json.loads(out.read_text())
    for name in ("checked", "passed"):
        assert r[name]["passed"] is True and r[name]["changed"] is False, r[name]
        assert r[name]["streak"] == 2 and r[name]["version"] == V2
    wrong = r["wrong"]
    assert wrong["failed"] is True and wrong["changed"] is False and wrong["passed"] is False
    assert "release=v2, expected v3" in wrong["msg"] and "at most 0 in" in wrong["msg"], wrong["msg"]
    assert wrong["last_error"] == "/version said release=v2, expected v3"
    assert r["bad"]["failed"] is True and r["bad"]["msg"].startswith("successes must be at least 1"), r["bad"]


def test_ansible_doc_renders_the_module():
    doc = module_doc("keelson_health_gate")
    assert set(doc["doc"]["options"]) == set(hg.ARGUMENT_SPEC)
    assert set(doc["return"]) == RETURNED
