"""Centralised logs: journald's remote store on the first ``monitoring`` host.

Every container's journal entries carry COM_DOCKER_COMPOSE_SERVICE,
COM_DOCKER_COMPOSE_PROJECT, CONTAINER_NAME and _HOSTNAME (the host name the
base role sets: the inventory name up to its first dot).  ``keelson logs``
reads them with journalctl over SSH, connecting the way Ansible does
(ansible_host, ansible_user, ansible_port, the key and the common SSH
arguments of the inventory).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from keelson.environment import ROOT, Inventory, InventoryError

REMOTE_JOURNAL = "/var/log/journal/remote"
_SERVICE_KEY = re.compile(r"^  ([A-Za-z0-9][A-Za-z0-9_.-]*):\s*(#.*)?$")


def stack_services(root: Path = ROOT) -> list[str]:
    """Service names of every compose template of the roles (the stack's services)."""
    names: set[str] = set()
    for template in sorted(root.glob("roles/*/templates/compose*.j2")):
        in_services = False
        for line in template.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith(("#", "{%", "{#")):
                continue
            if not line.startswith(" "):
                in_services = line.rstrip() == "services:"
                continue
            if in_services and (match := _SERVICE_KEY.match(line)):
                names.add(match.group(1))
    return sorted(names)


def check_service(service: str, services: list[str]) -> None:
    if service not in services:
        raise InventoryError(f"unknown service {service!r}; the stack's services: {', '.join(services)}")


def journal_host(inventory: Inventory, group: str = "monitoring") -> str:
    hosts = inventory.group(group)
    if not hosts:
        raise InventoryError(f"inventory {inventory.path} has no {group} host to read the logs from")
    return hosts[0]


def journalctl_args(service: str | None, host: str | None, lines: int, follow: bool) -> list[str]:
    args = ["journalctl", "-D", REMOTE_JOURNAL, "--no-pager", "-o", "cat"]
    if service:
        args.append(f"COM_DOCKER_COMPOSE_SERVICE={service}")
    if host:
        # base sets the short name (inventory_hostname_short): app1.example.com logs as app1.
        args.append(f"_HOSTNAME={host.split('.')[0]}")
    args += ["-n", str(lines)]
    if follow:
        args.append("-f")
    return args


def ssh_command(
    inventory: Inventory, service: str | None, host: str | None, lines: int = 100, follow: bool = False
) -> list[str]:
    """ssh to the journal host running journalctl there (with sudo unless we log in as root)."""
    if lines < 1:
        raise InventoryError(f"--lines must be 1 or more (got {lines})")
    if host is not None:
        inventory.require_host(host)
    target = journal_host(inventory)
    address = inventory.var(target, "ansible_host") or target
    user = inventory.var(target, "ansible_user")
    port = inventory.var(target, "ansible_port")
    key = inventory.var(target, "ansible_ssh_private_key_file")
    argv = ["ssh"]
    if port:
        argv += ["-p", str(port)]
    if key:
        argv += ["-i", str(key)]
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        value = inventory.var(target, name)
        if value:
            argv += shlex.split(str(value))
    argv.append(f"{user}@{address}" if user else str(address))
    remote = journalctl_args(service, host, lines, follow)
    if user != "root":
        remote = ["sudo", "-n", *remote]
    return [*argv, "--", shlex.join(remote)]
