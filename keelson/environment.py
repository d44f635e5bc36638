"""Which inventory the ``keelson`` commands work on, and whether it is usable.

An environment is an inventory: a NAME means ``inventories/NAME``, anything with a
slash is a path.  Resolution order: the ``--inventory`` option, the
``KEELSON_INVENTORY`` variable, the one stored by ``keelson environment use``
(``.keelson/environment`` at the repository root), else ``lab``.

Everything about the inventory comes from ``ansible-inventory`` itself (the one
place that knows the fleet), never from reading its YAML here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from keelson.lab.fleet import PROJECT_ROOT

ROOT = PROJECT_ROOT
INVENTORIES = ROOT / "inventories"
STATE_FILE = ROOT / ".keelson" / "environment"
ENV_VAR = "KEELSON_INVENTORY"
DEFAULT = "lab"
BIN = Path(sys.executable).parent

# Groups every Keelson fleet has (the stack's playbooks refuse to run without
# them); ``backup`` (the offsite SFTP host) is optional: a single server sends
# its offsite copy elsewhere (inventories/single has none).
REQUIRED_GROUPS = ("lb", "app", "db", "monitoring")
OPTIONAL_GROUPS = ("backup",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SIMPLE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class InventoryError(Exception):
    """The inventory cannot be used; the message says why and what to do."""


def ansible_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Ansible's tools: this venv first on PATH, our ansible.cfg."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    if env.get("KEELSON_MITOGEN") == "1":
        env.update(mitogen_env())
    return env


def mitogen_env() -> dict[str, str]:
    """The settings that run plays with Mitogen's linear strategy (opt-in: KEELSON_MITOGEN=1;
    docs/architecture.md, "Speed")."""
    try:
        import ansible_mitogen  # noqa: PLC0415  (optional, imported only when asked for)
    except ImportError as exc:
        raise RuntimeError("KEELSON_MITOGEN=1 needs the mitogen package in the venv (make venv)") from exc
    strategies = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(strategies), "ANSIBLE_STRATEGY": "mitogen_linear"}


def tool_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`ansible_env`, and an inventory that does not parse is an error (not an
    empty fleet)."""
    env = ansible_env(base)
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "true"
    return env


def stored(state_file: Path | None = None) -> str | None:
    """The environment chosen with ``keelson environment use``, if any."""
    state_file = state_file or STATE_FILE
    try:
        value = state_file.read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


def choice(option: str | None, env: Mapping[str, str] | None = None, state_file: Path | None = None) -> str:
    """The inventory asked for, before it is checked: option, variable, stored, default."""
    env = os.environ if env is None else env
    return option or env.get(ENV_VAR) or stored(state_file) or DEFAULT


def path_of(value: str, inventories: Path = INVENTORIES) -> Path:
    """``NAME`` → ``inventories/NAME``; a value with a slash (or ``.``) is a path.  Must exist."""
    if "/" in value or value.startswith("."):
        path = Path(value).expanduser().resolve()
        if not path.exists():
            raise InventoryError(f"inventory {value}: {path} does not exist")
        return path
    if not _NAME.match(value):
        raise InventoryError(f"inventory {value!r}: not a name of inventories/* nor a path")
    path = inventories / value
    if not path.exists():
        known = ", ".join(names(inventories)) or "none"
        raise InventoryError(f"no inventory named {value!r} ({path} does not exist); known: {known}")
    return path


def resolve(option: str | None, env: Mapping[str, str] | None = None, state_file: Path | None = None) -> Path:
    return path_of(choice(option, env, state_file))


def names(inventories: Path = INVENTORIES) -> list[str]:
    return sorted(p.name for p in inventories.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Inventory:
    """What ``ansible-inventory --list`` says about one inventory."""

    path: Path
    groups: dict[str, list[str]]
    hostvars: dict[str, dict] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        # hostvars lists only hosts that have variables: the groups list them all.
        return sorted(set(self.groups.get("all", [])) | set(self.hostvars))

    @property
    def name(self) -> str:
        return self.path.name if self.path.parent == INVENTORIES else str(self.path)

    def group(self, name: str) -> list[str]:
        return self.groups.get(name, [])

    def host_groups(self, host: str) -> list[str]:
        return sorted(g for g, members in self.groups.items() if host in members and g not in ("all", "ungrouped"))

    def require_host(self, host: str) -> None:
        if host not in self.hosts:
            raise InventoryError(f"no host {host!r} in {self.path}; hosts: {', '.join(self.hosts)}")

    def inventory_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def var(self, host: str, name: str, default=None):
        """A host variable with plain ``{{ var }}`` references resolved (inventory_dir,
        other variables of the host).  Anything more Jinja than that is refused."""
        value = self.hostvars.get(host, {}).get(name, default)
        return self._render(host, name, value, depth=0)

    def _render(self, host: str, name: str, value, depth: int):
        if not isinstance(value, str) or "{{" not in value:
            return value
        if depth > 5:
            raise InventoryError(f"host {host}: {name} refers to itself")
        known = {"inventory_dir": str(self.inventory_dir()), "inventory_hostname": host}

        def repl(match: re.Match) -> str:
            ref = match.group(1)
            if ref in known:
                return known[ref]
            if ref in self.hostvars.get(host, {}):
                return str(self._render(host, ref, self.hostvars[host][ref], depth + 1))
            raise InventoryError(f"host {host}: {name} uses {{{{ {ref} }}}}, which the inventory does not define")

        rendered = _SIMPLE_VAR.sub(repl, value)
        if "{{" in rendered or "{%" in rendered:
            raise InventoryError(
                f"host {host}: {name} is a template keelson cannot evaluate ({value!r}); set it to a plain value"
            )
        return rendered


def _flatten(data: dict) -> dict[str, list[str]]:
    """Group → every host in it, children included (ansible-inventory nests them)."""
    cache: dict[str, set[str]] = {}

    def members(group: str, seen: frozenset = frozenset()) -> set[str]:
        if group in cache:
            return cache[group]
        entry = data.get(group, {})
        hosts = set(entry.get("hosts", []))
        for child in entry.get("children", []):
            if child not in seen:
                hosts |= members(child, seen | {group})
        cache[group] = hosts
        return hosts

    groups = {g for g in data if g != "_meta"}
    for entry in list(data.values()):
        if isinstance(entry, dict):
            groups.update(entry.get("children", []))
    return {g: sorted(members(g)) for g in sorted(groups)}


def _ansible_inventory(path: Path, *args: str) -> str:
    env = tool_env()
    # Cached facts would be merged into every host's variables: slow and not ours.
    env["ANSIBLE_CACHE_PLUGIN"] = "memory"
    try:
        proc = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(path), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InventoryError(f"inventory {path}: ansible-inventory did not run: {exc}") from None
    if proc.returncode != 0:
        detail = " ".join(line.strip() for line in proc.stderr.splitlines() if "ERROR" in line) or proc.stderr.strip()
        hint = ""
        if "vault" in proc.stderr.lower():
            hint = " (vault-encrypted variables: set ANSIBLE_VAULT_PASSWORD_FILE to your vault password file)"
        raise InventoryError(f"inventory {path} does not parse: {detail[-600:]}{hint}")
    return proc.stdout


def load(path: Path) -> Inventory:
    """Parse the inventory with ``ansible-inventory --list``."""
    try:
        data = json.loads(_ansible_inventory(path, "--list"))
    except json.JSONDecodeError as exc:
        raise InventoryError(f"inventory {path}: ansible-inventory printed no JSON ({exc})") from None
    return Inventory(path=path, groups=_flatten(data), hostvars=data.get("_meta", {}).get("hostvars", {}))


def has_address(host: str, hostvars: dict) -> bool:
    """A host is reachable by name only if it has ansible_host, is an IP or a DNS name."""
    if hostvars.get("ansible_host"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "." in host
    return True


def problems(inventory: Inventory) -> list[str]:
    """Everything that keeps the playbooks from working on this inventory."""
    found = []
    if not inventory.hosts:
        found.append("it has no hosts")
    for group in REQUIRED_GROUPS:
        if group not in inventory.groups:
            found.append(f"group {group!r} is missing")
        elif not inventory.group(group):
            found.append(f"group {group!r} has no hosts")
    for host in inventory.hosts:
        if not has_address(host, inventory.hostvars.get(host, {})):
            found.append(f"host {host!r} has no address (set ansible_host, or name it by its DNS name or IP)")
    return found


def validate(path: Path) -> Inventory:
    inventory = load(path)
    found = problems(inventory)
    if found:
        raise InventoryError(f"inventory {path} is not usable: " + "; ".join(found))
    return inventory


def open_inventory(option: str | None, env: Mapping[str, str] | None = None) -> Inventory:
    """Resolve and validate: the one entry point every fleet command uses."""
    return validate(resolve(option, env))


def use(value: str, state_file: Path | None = None) -> Inventory:
    """Validate, then store as the current environment (a name stays a name)."""
    state_file = state_file or STATE_FILE
    inventory = validate(path_of(value))
    stored_value = value if "/" not in value and not value.startswith(".") else str(inventory.path)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(stored_value + "\n")
    return inventory


def host_count(path: Path) -> int | None:
    """Hosts of an inventory, from ``--graph`` (which needs no vault password); None if it fails."""
    try:
        graph = _ansible_inventory(path, "--graph")
    except InventoryError:
        return None
    return len({line.split("--", 1)[1] for line in graph.splitlines() if "--" in line and "--@" not in line})
