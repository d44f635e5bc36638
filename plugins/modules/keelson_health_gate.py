#!/usr/bin/python
# Keelson: the health gate of a rolling upgrade.
# MIT License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: keelson_health_gate
short_description: Wait until an app slot answers ready and with the expected version several times in a row
description:
  - The health gate of a rolling upgrade. Runs on the app host and polls the new app slot over
    HTTP on that host (e.g. C(http://127.0.0.1:8002)); no proxy is ever used, whatever the
    environment says.
  - One probe is C(GET <url><ready_path>), which must answer 200, then C(GET <url><version_path>),
    which must answer 200 with a JSON object whose fields equal every key and value in O(expect).
    The version is not asked for when readiness already failed.
  - The gate passes after O(successes) successful probes in a row. Any failure (connection refused,
    no answer within O(request_timeout), a status other than 200, a body that is not a JSON object,
    a wrong or missing field) sets the streak back to 0. Redirects are not followed, a 3xx is a failure.
  - "The gate fails when O(timeout) seconds pass without that streak. The message names the last
    failure (e.g. C(/version said release=v1, expected v2), C(/readyz answered 503: {...}),
    C(/readyz: connection refused)) and the longest streak seen."
  - Probes are O(interval) seconds apart (from the end of one to the start of the next). No probe
    starts after the deadline, but one that started before it may finish, so the task can take up
    to O(timeout) plus twice O(request_timeout).
  - It is read-only, never changes anything (C(changed=false)) and probes in check mode too.
options:
  url:
    description: Base URL of the slot, C(http://) or C(https://) with a host, e.g. C(http://127.0.0.1:8002).
      A trailing C(/) is ignored.
    type: str
    required: true
  ready_path:
    description: Path of the readiness endpoint, starting with C(/); must answer 200.
    type: str
    default: /readyz
  version_path:
    description: Path of the version endpoint, starting with C(/); must answer 200 with a JSON object.
    type: str
    default: /version
  expect:
    description:
      - "Fields the version JSON must have, with their values, e.g. C({release: v2})."
      - Compared as text; values that are not strings are compared in their JSON spelling, so
        C(true), C(2) and C(null) match the JSON values C(true), C(2) and C(null) and the strings
        C("true"), C("2") and C("null").
      - Empty (the default) accepts any JSON object.
    type: dict
    default: {}
  successes:
    description: Successful probes needed in a row (at least 1).
    type: int
    default: 5
  interval:
    description: Seconds between probes (more than 0).
    type: float
    default: 1.0
  timeout:
    description:
      - Seconds the gate waits in all before it fails (more than 0).
      - Must leave room for the streak, i.e. be more than (O(successes) - 1) times O(interval).
    type: int
    default: 120
  request_timeout:
    description: Seconds each HTTP request may take before it counts as a failure (more than 0).
    type: float
    default: 3.0
  host_header:
    description: C(Host) header to send instead of the one from O(url), for a slot that routes by name.
    type: str
author: Keelson developers
"""

EXAMPLES = r"""
- name: Wait for the new slot to serve v2 five times in a row
  keelson_health_gate:
    url: http://127.0.0.1:8002
    expect:
      release: v2
  register: gate

- name: A quicker gate with a Host header, in a rescue-able block
  block:
    - name: Gate the green slot
      keelson_health_gate:
        url: "http://127.0.0.1:{{ (app_slots | selectattr('name', 'eq', 'green') | first).port }}"
        host_header: app.keelson.test
        expect:
          release: "{{ app_release }}"
          slot: green
        successes: 3
        interval: 0.5
        timeout: 60
        request_timeout: 2
  rescue:
    - name: Say why the gate failed
      ansible.builtin.debug:
        msg: "{{ ansible_failed_result.msg }}"
"""

RETURN = r"""
passed:
  description: Whether O(successes) successful probes in a row were seen within O(timeout).
  type: bool
  returned: always
  sample: true
attempts:
  description: Probes made.
  type: int
  returned: always
  sample: 7
streak:
  description: The longest run of successful probes in a row.
  type: int
  returned: always
  sample: 5
elapsed:
  description: Seconds from the first probe to the end.
  type: float
  returned: always
  sample: 6.012
version:
  description: The last JSON object the version endpoint answered with (also a wrong one), or null.
  type: dict
  returned: always
  sample: {"version": "2.0.0", "release": "v2", "slot": "green", "schema": "0002"}
last_error:
  description: The last failure seen, also when the gate passed in the end; null when no probe failed.
  type: str
  returned: always
  sample: "/version said release=v1, expected v2"
"""

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "ready_path": {"type": "str", "default": "/readyz"},
    "version_path": {"type": "str", "default": "/version"},
    "expect": {"type": "dict", "default": {}},
    "successes": {"type": "int", "default": 5},
    "interval": {"type": "float", "default": 1.0},
    "timeout": {"type": "int", "default": 120},
    "request_timeout": {"type": "float", "default": 3.0},
    "host_header": {"type": "str"},
}

MAX_BODY = 64 * 1024  # bytes read of an answer; a version document is far smaller
EXCERPT = 200  # characters of a body quoted in a message

Fetch = Callable[[str], tuple[int, bytes]]


class GateError(Exception):
    """Bad options, or a probe that could not get an HTTP answer (the message says why)."""


def check_options(p: dict) -> None:
    """Raise GateError naming the first option that cannot work."""
    url = urllib.parse.urlsplit(p["url"])
    try:
        url.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as exc:
        raise GateError(f"url: {exc} in {p['url']!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise GateError(f"url must be http:// or https:// with a host, e.g. http://127.0.0.1:8002; got {p['url']!r}")
    for name in ("ready_path", "version_path"):
        if not p[name].startswith("/"):
            raise GateError(f"{name} must start with /, got {p[name]!r}")
    if p["successes"] < 1:
        raise GateError(f"successes must be at least 1, got {p['successes']}")
    for name in ("interval", "timeout", "request_timeout"):
        if not p[name] > 0:
            raise GateError(f"{name} must be more than 0 seconds, got {p[name]}")
    needed = (p["successes"] - 1) * p["interval"]
    if needed >= p["timeout"]:
        raise GateError(
            f"timeout={p['timeout']} leaves no room for successes={p['successes']} probes interval={p['interval']:g}s "
            f"apart (they need more than {needed:g}s): raise timeout or lower successes or interval"
        )


def excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


def as_text(value) -> str:
    """Strings as they are, anything else in its JSON spelling (true, 2, null)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def describe(exc: BaseException, request_timeout: float) -> str:
    """A short reason for an exception raised while fetching."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    known = (  # first match wins: RemoteDisconnected is a ConnectionResetError
        (ConnectionRefusedError, "connection refused"),
        ((socket.timeout, TimeoutError), f"no answer within {request_timeout:g}s (request_timeout)"),
        (http.client.RemoteDisconnected, "the server closed the connection without answering"),
        (ConnectionResetError, "connection reset by the server"),
        (socket.gaierror, f"cannot resolve the host name ({getattr(reason, 'strerror', None) or reason})"),
        (http.client.HTTPException, f"bad HTTP answer ({type(reason).__name__}: {reason})"),
    )
    for types, text in known:
        if isinstance(reason, types):
            return text
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


def http_fetcher(request_timeout: float, host_header: str | None = None) -> Fetch:
    """A fetch(url) -> (status, body) that never uses a proxy and raises GateError when there is no answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    headers = {"User-Agent": "keelson-health-gate", "Accept": "application/json"}
    if host_header:
        headers["Host"] = host_header

    def fetch(url: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=headers)
        try:
            try:
                with opener.open(request, timeout=request_timeout) as response:
                    return response.status, response.read(MAX_BODY)
            except urllib.error.HTTPError as exc:  # an answer, only not a 2xx
                with exc:
                    return exc.code, exc.read(MAX_BODY)
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            raise GateError(describe(exc, request_timeout)) from None

    return fetch


def check_version(path: str, status: int, body: bytes, expect: dict) -> tuple[dict | None, str | None]:
    """(the JSON object or None, what is wrong or None) of a version answer."""
    if status != 200:
        return None, f"{path} answered {status}: {excerpt(body)}"
    try:
        data = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one too
        return None, f"{path} answered something that is not JSON: {excerpt(body)}"
    if not isinstance(data, dict):
        return None, f"{path} answered JSON that is not an object: {excerpt(body)}"
    wrong = []
    missing = []
    for key, want in expect.items():
        if key not in data:
            missing.append(f"{path} has no field {key!r} (expected {as_text(want)})")
        elif as_text(data[key]) != as_text(want):
            wrong.append(f"{key}={as_text(data[key])}, expected {as_text(want)}")
    problems = ([f"{path} said " + "; ".join(wrong)] if wrong else []) + missing
    return data, "; ".join(problems) or None


def probe_once(
    fetch: Fetch, url: str, ready_path: str, version_path: str, expect: dict
) -> tuple[bool, str | None, dict | None]:
    """One probe: (success, what failed or None, the version JSON object seen or None)."""
    base = url.rstrip("/")
    try:
        status, body = fetch(base + ready_path)
    except GateError as exc:
        return False, f"{ready_path}: {exc}", None
    if status != 200:
        return False, f"{ready_path} answered {status}: {excerpt(body)}", None
    try:
        status, body = fetch(base + version_path)
    except GateError as exc:
        return False, f"{version_path}: {exc}", None
    version, error = check_version(version_path, status, body, expect)
    return error is None, error, version


def wait_for_health(
    probe: Callable[[], tuple[bool, str | None, dict | None]],
    successes: int,
    interval: float,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Probe until `successes` in a row or `timeout` seconds have passed; the module's result fields."""
    start = clock()
    deadline = start + timeout
    attempts = streak = best = 0
    last_error = version = None
    while True:
        attempts += 1
        ok, error, seen = probe()
        if seen is not None:
            version = seen
        if ok:
            streak += 1
            best = max(best, streak)
        else:
            streak = 0
            last_error = error
        passed = streak >= successes
        if not passed:
            remaining = deadline - clock()
            if remaining > 0:
                sleep(min(interval, remaining))
            if clock() < deadline:
                continue
        return {
            "passed": passed,
            "attempts": attempts,
            "streak": best,
            "elapsed": round(clock() - start, 3),
            "version": version,
            "last_error": last_error,
        }


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    try:
        check_options(p)
    except GateError as exc:
        module.fail_json(msg=str(exc), changed=False)
    fetch = http_fetcher(p["request_timeout"], p["host_header"])
    result = wait_for_health(
        lambda: probe_once(fetch, p["url"], p["ready_path"], p["version_path"], p["expect"]),
        p["successes"],
        p["interval"],
        p["timeout"],
    )
    if result["passed"]:
        module.exit_json(
            changed=False,
            msg=f"{p['url']}: {p['successes']} successes in a row after {result['attempts']} probes "
            f"in {result['elapsed']:g}s",
            **result,
        )
    module.fail_json(
        changed=False,
        msg=f"{p['url']} did not pass the health gate within {p['timeout']}s: {p['successes']} successes in a row "
        f"needed, at most {result['streak']} in {result['attempts']} probes; last failure: {result['last_error']}",
        **result,
    )


if __name__ == "__main__":
    main()
