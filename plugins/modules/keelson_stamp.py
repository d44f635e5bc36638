#!/usr/bin/python
# Keelson: converge stamps, the fast path of a converge that has nothing to do.
# MIT License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: keelson_stamp
short_description: Record that a role fully converged a host, and tell whether the host is still as it left it
description:
  - A stamp is one JSON file per role under O(path) on the host, written at the end of a full,
    successful converge of that role. It holds the fingerprint of everything the run's input was
    (computed on the controller, see the C(keelson_fingerprint) lookup), the time, and a snapshot
    of what the role is responsible for on the host (O(watch)).
  - "O(state=read) reads every stamp and checks each one against the host as it is now: the
    watched files (content, mode, owner), services (active), packages (installed) and compose
    projects (the same containers, all running and none unhealthy). A stamp is C(current) when all
    of that still holds and it is younger than O(max_age) seconds; otherwise C(reason) says what
    differs. It also returns the host's machine id and OS release, which the fingerprint includes.
    Read-only; runs in check mode too."
  - O(state=present) writes the stamp of O(role) (atomically, mode 0600). O(state=absent) removes it,
    which a role does before it changes anything, so a converge that fails half-way leaves no stamp.
  - A role skips its work only when its stamp is current and its fingerprint equals the run's;
    the decision is made once per run by the C(connect) role (fact C(connect_stamp_current_roles)),
    this module only reports.
options:
  state:
    description: C(read) all stamps, write (C(present)) or remove (C(absent)) the stamp of O(role).
    type: str
    choices: [read, present, absent]
    default: read
  role:
    description: The role the stamp belongs to (C(present), C(absent)); a plain name.
    type: str
  fingerprint:
    description: The run's fingerprint (C(present)).
    type: str
  watch:
    description:
      - What the role is responsible for (C(present)). Keys C(files) (paths; a directory counts with
        everything under it; a missing path is recorded as missing), C(services) (systemd units that
        must stay active), C(packages) (Debian packages that must stay installed) and
        C(compose_projects) (compose project names, a trailing C(*) for a prefix, whose containers must
        stay the same and running) and
        C(commands) (read-only commands, split like a shell would, whose exit status and output must
        stay the same, e.g. C(nft -s -t list table inet keelson) for a ruleset in the kernel).
    type: dict
    default: {}
  max_age:
    description: Seconds after which a stamp is no longer current (C(read)), so that a full converge
      runs at least that often (certificate renewals, checks of unwatched state).
    type: int
    default: 86400
  path:
    description: The directory of the stamps.
    type: path
    default: /var/lib/keelson/stamps
"""

EXAMPLES = r"""
- name: Read the stamps
  keelson_stamp:
    state: read
  register: __stamps

- name: Record a full converge of the base role
  keelson_stamp:
    state: present
    role: base
    fingerprint: "{{ connect_stamp_fingerprint }}"
    watch:
      files: [/etc/sudoers.d/keelson, /etc/systemd/journald.conf.d]
      services: [chrony.service]
      packages: [chrony, sudo]
"""

RETURN = r"""
machine_id:
  description: The content of /etc/machine-id (C(read)).
  type: str
  returned: always
os_release:
  description: ID and VERSION_ID from /etc/os-release, e.g. C(debian 13) (C(read)).
  type: str
  returned: always
stamps:
  description: Per role, C(fingerprint), C(recorded_at) (seconds since the epoch), C(current) and C(reason) (C(read)).
  type: dict
  returned: always
"""

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
WATCH_KEYS = ("files", "services", "packages", "compose_projects", "commands")


def file_digest(path: str) -> str:
    """A digest of a path: content, mode and owner of a file, link target, or a whole tree."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    head = f"{stat.S_IFMT(st.st_mode):o}:{stat.S_IMODE(st.st_mode):o}:{st.st_uid}:{st.st_gid}"
    if stat.S_ISLNK(st.st_mode):
        return hashlib.sha256(f"{head}:{os.readlink(path)}".encode()).hexdigest()
    if stat.S_ISDIR(st.st_mode):
        digest = hashlib.sha256(head.encode())
        for name in sorted(os.listdir(path)):
            digest.update(f"\0{name}\0{file_digest(os.path.join(path, name))}".encode())
        return digest.hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return hashlib.sha256(head.encode()).hexdigest()
    digest = hashlib.sha256(head.encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 127, str(err)
    return proc.returncode, proc.stdout


def inactive_services(units: list[str]) -> list[str]:
    if not units:
        return []
    _rc, out = run(["systemctl", "is-active", *units])
    states = out.split()
    if len(states) != len(units):
        return list(units)
    return [unit for unit, state in zip(units, states, strict=True) if state != "active"]


def missing_packages(names: list[str]) -> list[str]:
    if not names:
        return []
    _rc, out = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *names])
    installed = {line.split()[0].split(":")[0] for line in out.splitlines() if line.endswith(" installed")}
    return [name for name in names if name not in installed]


def compose_state(project: str) -> dict:
    """Containers of a compose project (a trailing * matches every project with that prefix):
    container id -> ok / not ok, or {"error": ...} when Docker cannot be asked."""
    if shutil.which("docker") is None:
        return {"error": "docker not found"}
    rc, out = run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            '{{.ID}}\t{{.Label "com.docker.compose.project"}}\t{{.State}}\t{{.Status}}',
        ]
    )
    if rc != 0:
        return {"error": f"docker ps failed ({rc})"}
    containers = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or not fnmatch.fnmatchcase(fields[1], project):
            continue
        cid, _name, state, status = fields
        healthy = "(unhealthy)" not in status and "(health: starting)" not in status
        containers[cid] = "ok" if state == "running" and healthy else "not ok"
    return containers


def command_digest(command: str) -> str:
    rc, out = run(shlex.split(command))
    return hashlib.sha256(f"{rc}\0{out}".encode()).hexdigest()


def snapshot(watch: dict) -> dict:
    """What is recorded at `present`: file digests and compose containers."""
    return {
        "files": {path: file_digest(path) for path in watch.get("files", [])},
        "services": list(watch.get("services", [])),
        "packages": list(watch.get("packages", [])),
        "compose_projects": {name: compose_state(name) for name in watch.get("compose_projects", [])},
        "commands": {command: command_digest(command) for command in watch.get("commands", [])},
    }


def differences(recorded: dict) -> list[str]:
    """What no longer holds of a recorded snapshot (empty: the host is as the converge left it)."""
    found = []
    for path, digest in recorded.get("files", {}).items():
        if file_digest(path) != digest:
            found.append(f"{path} changed")
    for unit in inactive_services(recorded.get("services", [])):
        found.append(f"{unit} is not active")
    for name in missing_packages(recorded.get("packages", [])):
        found.append(f"package {name} is not installed")
    for project, containers in recorded.get("compose_projects", {}).items():
        now = compose_state(project)
        if now != containers or any(status != "ok" for status in now.values()) or "error" in now:
            found.append(f"compose project {project} is not as recorded (containers replaced, stopped or unhealthy)")
    for command, digest in recorded.get("commands", {}).items():
        if command_digest(command) != digest:
            found.append(f"the output of '{command}' changed")
    return found


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def os_release() -> str:
    fields = {}
    for line in read_text("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip().strip('"')
    return f"{fields.get('ID', '')} {fields.get('VERSION_ID', '')}".strip()


def read_stamps(directory: str, max_age: int, now: float) -> dict:
    stamps = {}
    if not os.path.isdir(directory):
        return stamps
    for name in sorted(os.listdir(directory)):
        role, ext = os.path.splitext(name)
        if ext != ".json" or not ROLE_RE.match(role):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                data = json.load(handle)
            fingerprint = str(data["fingerprint"])
            recorded_at = float(data["recorded_at"])
            recorded = dict(data["snapshot"])
        except (OSError, ValueError, KeyError, TypeError):
            stamps[role] = {"fingerprint": "", "recorded_at": 0, "current": False, "reason": "unreadable stamp"}
            continue
        age = now - recorded_at
        if age > max_age or age < -300:
            reasons = [f"stamp is {int(age)} s old (max_age {max_age})"]
        else:
            reasons = differences(recorded)
        stamps[role] = {
            "fingerprint": fingerprint,
            "recorded_at": recorded_at,
            "current": not reasons,
            "reason": "; ".join(reasons),
        }
    return stamps


def write_stamp(directory: str, role: str, fingerprint: str, watch: dict, now: float) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    data = {"role": role, "fingerprint": fingerprint, "recorded_at": now, "snapshot": snapshot(watch)}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{role}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, os.path.join(directory, f"{role}.json"))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["read", "present", "absent"], "default": "read"},
            "role": {"type": "str"},
            "fingerprint": {"type": "str", "no_log": False},
            "watch": {"type": "dict", "default": {}},
            "max_age": {"type": "int", "default": 86400},
            "path": {"type": "path", "default": "/var/lib/keelson/stamps"},
        },
        required_if=[("state", "present", ["role", "fingerprint"]), ("state", "absent", ["role"])],
        supports_check_mode=True,
    )
    params = module.params
    state, role, directory = params["state"], params["role"], params["path"]
    now = time.time()
    if role is not None and not ROLE_RE.match(role):
        module.fail_json(msg=f"role must be a plain role name (lower case, digits, _), got {role!r}")
    result = {"changed": False}
    if state == "read":
        result.update(
            machine_id=read_text("/etc/machine-id").strip(),
            os_release=os_release(),
            stamps=read_stamps(directory, params["max_age"], now),
        )
        module.exit_json(**result)

    target = os.path.join(directory, f"{role}.json")
    # Writing or removing a stamp is bookkeeping, not a change to the host's configuration: it
    # never reports changed, so a second converge stays at changed=0.
    if state == "absent":
        if os.path.exists(target) and not module.check_mode:
            os.unlink(target)
        module.exit_json(**result)

    watch = params["watch"] or {}
    unknown = sorted(set(watch) - set(WATCH_KEYS))
    if unknown:
        module.fail_json(msg=f"watch takes the keys {', '.join(WATCH_KEYS)}; unknown: {', '.join(unknown)}")
    for key in WATCH_KEYS:
        value = watch.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            module.fail_json(msg=f"watch.{key} must be a list of non-empty strings, got {value!r}")
    for path in watch.get("files", []):
        if not os.path.isabs(path):
            module.fail_json(msg=f"watch.files must be absolute paths, got {path!r}")
    # Recording a stamp is bookkeeping, not a change to the host's configuration: it never
    # reports changed, so a second converge stays at changed=0.
    if not module.check_mode:
        write_stamp(directory, role, params["fingerprint"], watch, now)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
