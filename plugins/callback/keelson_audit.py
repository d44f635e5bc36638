"""Append one JSON line per playbook run to an audit log, on the controller and on the hosts."""

from __future__ import annotations

DOCUMENTATION = r"""
name: keelson_audit
type: aggregate
short_description: Audit trail, one JSON line per run (who, which commit, what, on which hosts, outcome)
description:
  - When a run ends, appends one JSON line to the controller's audit log, and
    the same line to a log on every host the run reached. A host whose tasks all
    ran on the controller (assert, set_fact, the input checks of role preflight)
    was not touched and gets no copy, so a run refused by its input checks
    contacts no host at all.
  - The line records when the run started and ended, the login that ran it (and
    C(SUDO_USER)), the controller's hostname, the git commit of the checkout the
    playbook came from and whether it had uncommitted changes, the playbook, the
    inventory sources, the limit, check mode, the B(names) of the extra vars
    (never their values; C(@file) arguments by file name), the C(app_image) given
    with C(-e), every host's PLAY RECAP numbers, the result and, for each failed
    host, the task and message that failed it.
  - The host copy is one ad-hoc C(ansible.builtin.raw) command run at the end
    with the run's inventory sources and connection options. Hosts named
    C(localhost) are skipped. Its failures are warnings, never a failed run; the
    controller line records which hosts got the copy.
  - Nothing at all happens when C(KEELSON_AUDIT_DISABLED) is true.
requirements:
  - enabled in ansible.cfg (C(callbacks_enabled))
  - git on the controller, for the commit (recorded as C(unknown) otherwise)
options:
  disabled:
    description: Turn the plugin off (the host copy's own ad-hoc run sets it).
    type: bool
    default: false
    env:
      - name: KEELSON_AUDIT_DISABLED
  log_path:
    description: The controller's audit log. Directories are created 0700, the file 0600.
    type: path
    default: ~/.local/state/keelson/audit.jsonl
    env:
      - name: KEELSON_AUDIT_LOG
    ini:
      - section: callback_keelson_audit
        key: log_path
  host_copy:
    description: Append the line on each reachable host of the run too.
    type: bool
    default: true
    env:
      - name: KEELSON_AUDIT_HOST_COPY
    ini:
      - section: callback_keelson_audit
        key: host_copy
  host_log_path:
    description:
      - The audit log on the hosts, an absolute path. With become, its directory
        is created 0750 and the file 0640, both owned by root.
    type: str
    default: /var/log/keelson/audit.jsonl
    env:
      - name: KEELSON_AUDIT_HOST_LOG
    ini:
      - section: callback_keelson_audit
        key: host_log_path
  host_copy_become:
    description: Become root (C(-b)) for the host copy.
    type: bool
    default: true
    env:
      - name: KEELSON_AUDIT_HOST_COPY_BECOME
    ini:
      - section: callback_keelson_audit
        key: host_copy_become
  host_copy_timeout:
    description: Seconds the host copy may take for all hosts together before it is killed.
    type: int
    default: 60
    env:
      - name: KEELSON_AUDIT_HOST_COPY_TIMEOUT
    ini:
      - section: callback_keelson_audit
        key: host_copy_timeout
"""

import getpass
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import yaml
from ansible import constants as C
from ansible import context
from ansible.parsing.splitter import parse_kv
from ansible.plugins.callback import CallbackBase

MSG_LIMIT = 500
# Actions that run on the controller only: a host that saw nothing else was not contacted.
CONTROLLER_ACTIONS = frozenset(
    {
        "add_host",
        "assert",
        "debug",
        "fail",
        "group_by",
        "import_role",
        "import_tasks",
        "include_role",
        "include_tasks",
        "include_vars",
        "meta",
        "set_fact",
        "set_stats",
        "validate_argument_spec",
    }
)


def contacts_host(action: str, delegate_to: str | None) -> bool:
    """Whether a task with this action (and delegation) reaches its host."""
    short = action.rsplit(".", 1)[-1] if action.startswith(("ansible.builtin.", "ansible.legacy.")) else action
    if short in CONTROLLER_ACTIONS:
        return False
    return delegate_to in (None, "")


STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failed": "failures",
    "unreachable": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}
# Connection options of the run that the host copy passes on (values are paths,
# names and numbers, no secrets). Passwords asked for with -k/-K are not passed on.
FORWARDED_OPTIONS = {
    "connection": "--connection",
    "remote_user": "--user",
    "private_key_file": "--private-key",
    "timeout": "--timeout",
    "ssh_common_args": "--ssh-common-args",
    "ssh_extra_args": "--ssh-extra-args",
    "become_method": "--become-method",
    "become_user": "--become-user",
}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def extra_var_names(arguments) -> tuple[list[str], str | None]:
    """The variable names in -e arguments, and the last app_image given as a value.

    key=value and JSON/YAML arguments give their keys; @file arguments are recorded
    as '@file' (the file may be vault-encrypted and is not read). Values are never
    returned, except app_image: an image reference, not a secret.
    """
    names: list[str] = []
    app_image = None
    for raw in arguments or ():
        argument = str(raw)
        if not argument:
            continue
        if argument.startswith("@"):
            data = None
            names.append(argument)
        elif argument[0] in "[{":
            try:
                data = yaml.safe_load(argument)
            except yaml.YAMLError:
                data = None
        else:
            try:
                data = parse_kv(argument)
            except Exception:  # ansible raises its own error types for bad quoting
                data = None
        if isinstance(data, dict):
            for key, value in data.items():
                if key == "_raw_params":  # words without '=', which Ansible ignores too
                    continue
                if str(key) not in names:
                    names.append(str(key))
                if key == "app_image" and value is not None:
                    app_image = str(value)
    return names, app_image


def _git(directory: str, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_checkout(playbooks: list[str]) -> dict:
    """commit and dirty of the checkout holding the first playbook, and the playbooks'
    paths relative to its root (absolute when outside it)."""
    paths = [os.path.realpath(playbook) for playbook in playbooks]
    unknown = {"commit": "unknown", "dirty": None, "playbooks": paths}
    if not paths:
        return unknown
    directory = os.path.dirname(paths[0])
    commit = _git(directory, "rev-parse", "HEAD")
    root = _git(directory, "rev-parse", "--show-toplevel")
    if not commit or not root:
        return unknown
    root = os.path.realpath(root)
    status = _git(directory, "status", "--porcelain")
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "playbooks": [os.path.relpath(path, root) if path.startswith(root + os.sep) else path for path in paths],
    }


def append_line(path: str, line: str) -> None:
    """Append one line with one O_APPEND write, so concurrent runs never interleave."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def remote_append_command(line: str, path: str) -> str:
    """The shell command that appends the line on a host (dirs 0750, file 0640 by umask)."""
    directory = os.path.dirname(path) or "."
    return (
        f"umask 027 && mkdir -p {shlex.quote(directory)} && printf '%s\\n' {shlex.quote(line)} >> {shlex.quote(path)}"
    )


def ansible_executable() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "ansible")
    return candidate if os.access(candidate, os.X_OK) else "ansible"


def host_copy_command(hosts, line: str, path: str, become: bool, cliargs) -> list[str]:
    command = [ansible_executable(), ",".join(hosts)]
    for source in cliargs.get("inventory") or ():
        command.append(f"--inventory={source}")
    for key, flag in FORWARDED_OPTIONS.items():
        if cliargs.get(key):
            command.append(f"{flag}={cliargs[key]}")
    for vault_id in cliargs.get("vault_ids") or ():
        command.append(f"--vault-id={vault_id}")
    for password_file in cliargs.get("vault_password_files") or ():
        command.append(f"--vault-password-file={password_file}")
    if become:
        command.append("--become")
    command += ["--module-name=ansible.builtin.raw", f"--args={remote_append_command(line, path)}"]
    return command


def host_copy_env() -> dict[str, str]:
    env = dict(os.environ)
    env["KEELSON_AUDIT_DISABLED"] = "1"
    env.pop("KEELSON_SUMMARY_FILE", None)
    if C.CONFIG_FILE:
        env["ANSIBLE_CONFIG"] = C.CONFIG_FILE
    # Ad-hoc runs use the 'json' stdout callback only with LOAD_CALLBACK_PLUGINS. An
    # empty callback list crashes ansible-core 2.19, so the list names the stdout
    # callback itself, which is loaded once: no other callback writes to stdout.
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
    env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.builtin.json"
    env["ANSIBLE_NOCOLOR"] = "1"
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return env


def _last_lines(text: str, count: int = 3) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[-count:])[:MSG_LIMIT]


def _json_document(stdout: str):
    try:
        return json.loads(stdout)
    except ValueError:
        start = stdout.find("\n{")
        if start < 0:
            return None
        try:
            return json.loads(stdout[start + 1 :])
        except ValueError:
            return None


def parse_host_copy(hosts, stdout: str, stderr: str) -> dict:
    """{'ok': [...], 'failed': {host: reason}} from the json callback's output of the ad-hoc run."""
    document = _json_document(stdout)
    results = {}
    if isinstance(document, dict):
        for play in document.get("plays") or ():
            for task in play.get("tasks") or ():
                results.update(task.get("hosts") or {})
    ok, failed = [], {}
    for host in hosts:
        result = results.get(host)
        if result is None:
            failed[host] = (
                "not in the ad-hoc run's inventory"
                if isinstance(document, dict)
                else _last_lines(stderr) or "ansible gave no result"
            )
        elif result.get("unreachable"):
            failed[host] = "unreachable: " + str(result.get("msg", ""))[:MSG_LIMIT]
        elif result.get("failed") or result.get("rc", 0) != 0:
            reason = _last_lines(str(result.get("stderr") or "")) or str(result.get("msg", ""))
            failed[host] = f"rc={result.get('rc')}: {reason}"[:MSG_LIMIT]
        else:
            ok.append(host)
    return {"ok": ok, "failed": failed}


def run_host_copy(command: list[str], hosts, timeout: int) -> dict:
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=host_copy_env(),
            start_new_session=True,  # so a timeout kills ansible's workers and ssh too
        )
    except OSError as error:
        return {"ok": [], "failed": dict.fromkeys(hosts, f"cannot run ansible: {error}")}
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"ok": [], "failed": dict.fromkeys(hosts, f"timed out after {timeout} s")}
    return parse_host_copy(hosts, stdout, stderr)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "keelson_audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = None
        self._clock = None
        self._playbooks = []
        self._failures = {}
        self._contacted = set()

    def _enabled(self):
        return not self.get_option("disabled")

    def v2_playbook_on_start(self, playbook):
        if self._started is None:
            self._started = utc_now()
            self._clock = time.monotonic()
        name = getattr(playbook, "_file_name", None)
        if name:
            self._playbooks.append(os.path.abspath(name))

    def _note_contact(self, result):
        task = result._task
        if contacts_host(task.action, task.delegate_to):
            self._contacted.add(result._host.get_name())

    def v2_runner_on_ok(self, result):
        self._note_contact(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._note_contact(result)
        if not ignore_errors:
            self._note_failure(result)

    def v2_runner_on_unreachable(self, result):
        self._note_failure(result)

    def _note_failure(self, result):
        # The last one wins: a failed host runs no further task, so its last failure is
        # the one that failed it; earlier ones were rescued by a block.
        host = result._host.get_name()
        outcome = result._result
        msg = outcome.get("msg") or outcome.get("stderr") or ""
        self._failures[host] = {"task": result._task.get_name(), "msg": str(msg)[:MSG_LIMIT]}

    def v2_playbook_on_stats(self, stats):
        if not self._enabled():
            return
        try:
            record = self._record(stats)
            line = json.dumps(record)
            record["host_copy"] = self._host_copy(record, line)
            path = os.path.expanduser(self.get_option("log_path"))
            append_line(path, json.dumps(record))
        except Exception as error:  # an audit failure must never fail the run
            self._display.warning(f"keelson_audit: could not write the audit line: {error}")

    def _record(self, stats) -> dict:
        ended = utc_now()
        duration = time.monotonic() - self._clock if self._clock is not None else 0.0
        cliargs = context.CLIARGS
        hosts = {}
        for host in sorted(stats.processed):
            summary = stats.summarize(host)
            hosts[host] = {key: summary.get(name, 0) for key, name in STAT_KEYS.items()}
        failed_hosts = [host for host, counts in hosts.items() if counts["failed"] or counts["unreachable"]]
        names, app_image = extra_var_names(cliargs.get("extra_vars"))
        checkout = git_checkout(self._playbooks)
        return {
            "started": self._started or ended,
            "ended": ended,
            "duration_s": round(duration, 3),
            "user": getpass.getuser(),
            "sudo_user": os.environ.get("SUDO_USER") or None,
            "controller": socket.gethostname(),
            "commit": checkout["commit"],
            "dirty": checkout["dirty"],
            "playbook": checkout["playbooks"][0] if checkout["playbooks"] else None,
            "playbooks": checkout["playbooks"],
            "inventory": list(cliargs.get("inventory") or ()),
            "limit": cliargs.get("subset") or None,
            "check": bool(cliargs.get("check")),
            "extra_vars": names,
            "release": app_image,
            "result": "failed" if failed_hosts else "ok",
            "hosts": hosts,
            "failed_hosts": failed_hosts,
            "failures": {host: self._failures[host] for host in failed_hosts if host in self._failures},
        }

    def _host_copy(self, record: dict, line: str) -> dict | None:
        """Append the line on each host the run reached; None when there is nothing to do."""
        if not self.get_option("host_copy"):
            return None
        hosts = [
            host
            for host, counts in record["hosts"].items()
            if not counts["unreachable"] and host != "localhost" and host in self._contacted
        ]
        if not hosts:
            return None
        command = host_copy_command(
            hosts, line, self.get_option("host_log_path"), self.get_option("host_copy_become"), context.CLIARGS
        )
        outcome = run_host_copy(command, hosts, self.get_option("host_copy_timeout"))
        for host, reason in outcome["failed"].items():
            self._display.warning(f"keelson_audit: no audit copy on {host}: {reason}")
        return outcome
