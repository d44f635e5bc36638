# Keelson: the fingerprint of a run's input, for converge stamps.
# MIT License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
name: keelson_fingerprint
short_description: One hash of everything a converge reads on the controller
description:
  - Returns one SHA-256 (hex) over the project (C(ansible.cfg), C(site.yml), C(playbooks/), C(roles/),
    C(plugins/) next to the Ansible configuration in use), every inventory source of the run (with
    every file under an inventory directory, including the secrets a lab keeps there, but not an
    SSH C(known_hosts) file), the extra
    variables given on the command line (the content of C(@file) ones), the controller paths in
    O(paths), the image IDs of O(images) in the controller's Docker, and the terms.
  - A role's converge stamp records this value; a later run skips the role on a host only when
    its fingerprint is the same, so any change to code, inventory, secrets, extra variables or
    images makes every role converge in full again. Conservative by design.
  - Files larger than 1 MiB count by size and modification time, not content.
options:
  _terms:
    description: Further strings to include (e.g. the machine IDs of the fleet).
    type: list
    elements: str
    default: []
  paths:
    description: Further controller files or directories to include.
    type: list
    elements: str
    default: []
  ignore_extra_vars:
    description: Names of extra variables that are not input (they only steer the run, like
      C(connect_fast_path)); they are left out of the fingerprint.
    type: list
    elements: str
    default: [connect_fast_path]
  images:
    description: Image names whose ID in the controller's Docker is included (a missing image or no
      Docker counts as its own value).
    type: list
    elements: str
    default: []
"""

import hashlib
import json
import os
import subprocess

import yaml
from ansible import constants as C
from ansible import context
from ansible.parsing.splitter import parse_kv
from ansible.plugins.lookup import LookupBase

PROJECT_ENTRIES = ("ansible.cfg", "site.yml", "playbooks", "roles", "plugins")
SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".molecule"}
# SSH client state kept next to an inventory (the lab's): rewritten whenever the lab starts,
# never read by a role.  A rebuilt host shows in the fingerprint through its machine id.
SKIP_FILES = {"known_hosts", "known_hosts.old"}
BIG_FILE = 1 << 20


def _digest_path(digest, path: str) -> None:
    """Feed a file or a directory tree (names, modes, contents) into `digest`."""
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")) or name in SKIP_FILES:
                    continue
                _digest_file(digest, os.path.join(root, name), os.path.relpath(os.path.join(root, name), path))
    else:
        _digest_file(digest, path, os.path.basename(path))


def _digest_file(digest, path: str, label: str) -> None:
    digest.update(b"\0file\0" + label.encode(errors="surrogateescape") + b"\0")
    try:
        st = os.stat(path)
    except OSError:
        digest.update(b"missing")
        return
    digest.update(f"{st.st_mode:o}:{st.st_size}".encode())
    if st.st_size > BIG_FILE:
        digest.update(f":{st.st_mtime_ns}".encode())
        return
    try:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    except OSError as err:
        digest.update(f"unreadable:{err.errno}".encode())


def _image_ids(images: list[str]) -> list[str]:
    if not images:
        return []
    try:
        proc = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", *images],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ["no docker"]
    # One line per image found; a missing image makes the command fail and is counted as such.
    return [f"rc={proc.returncode}", *proc.stdout.split()]


def _without(extra: str, ignored: set[str]) -> str:
    """An extra-vars argument without the ignored variables (key=value or JSON/YAML text)."""
    if not ignored or extra.startswith("@"):
        return extra
    text = extra.strip()
    if text.startswith(("{", "[")):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return extra
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ignored}
            return json.dumps(data, sort_keys=True, default=str) if data else ""
        return extra
    pairs = {k: v for k, v in parse_kv(text).items() if k not in ignored}
    return json.dumps(pairs, sort_keys=True) if pairs else ""


def fingerprint(
    project: str,
    inventories: list[str],
    extra_vars: list[str],
    paths: list[str],
    images: list[str],
    terms: list[str],
    ignore_extra_vars: tuple[str, ...] = ("connect_fast_path",),
) -> str:
    digest = hashlib.sha256(b"keelson-fingerprint-1")
    for entry in PROJECT_ENTRIES:
        digest.update(f"\0project\0{entry}".encode())
        _digest_path(digest, os.path.join(project, entry))
    for source in inventories:
        digest.update(f"\0inventory\0{source}".encode())
        if os.path.exists(source):
            _digest_path(digest, source)
    for raw in extra_vars:
        value = _without(raw, set(ignore_extra_vars))
        if not value:
            continue
        digest.update(b"\0extra\0" + value.encode(errors="surrogateescape"))
        if value.startswith("@"):
            _digest_path(digest, os.path.expanduser(value[1:]))
    for path in paths:
        digest.update(f"\0path\0{path}".encode())
        _digest_path(digest, path)
    for line in _image_ids(sorted(images)):
        digest.update(f"\0image\0{line}".encode())
    for term in terms:
        digest.update(b"\0term\0" + str(term).encode(errors="surrogateescape"))
    return digest.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        config = C.CONFIG_FILE or os.path.join(os.getcwd(), "ansible.cfg")
        project = os.path.dirname(os.path.abspath(config))
        variables = variables or {}
        inventories = [os.path.abspath(str(s)) for s in variables.get("ansible_inventory_sources", [])]
        extra_vars = [str(v) for v in (context.CLIARGS.get("extra_vars") or ())]
        return [
            fingerprint(
                project,
                inventories,
                extra_vars,
                [str(p) for p in self.get_option("paths")],
                [str(i) for i in self.get_option("images")],
                [str(t) for t in (terms or [])],
                tuple(str(n) for n in self.get_option("ignore_extra_vars")),
            )
        ]
