"""Start, inspect and remove the lab fleet described by an Ansible inventory.

The inventory is the one place that knows the topology: which hosts exist,
which groups they are in, their addresses and Debian release.  This module
reads it through ``ansible-inventory`` and makes the containers match.
Everything the lab creates carries the label ``io.keelson.lab=<lab name>``,
and ``down`` removes exactly what carries it.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from keelson.lab import images

LABEL_LAB = "io.keelson.lab"
LABEL_HOST = "io.keelson.lab.host"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
FACT_CACHE = PROJECT_ROOT / ".cache" / "facts"

# What a systemd host needs to boot in a container on this kind of machine
# (--privileged does not work here; see docs/lab.md).
HOST_CAPS = ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"]
HOST_SECURITY_OPT = ["seccomp=unconfined"]
HOST_TMPFS = {"/run": "rw,exec", "/run/lock": "rw"}


class LabError(RuntimeError):
    """A problem with the lab a person can act on."""


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    release: str
    groups: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    def container_name(self, lab: str) -> str:
        return f"{lab}-{self.name}"


@dataclass(frozen=True)
class Fleet:
    name: str
    subnet: str
    inventory: Path
    hosts: tuple[LabHost, ...] = field(default=())

    @property
    def state_dir(self) -> Path:
        return self.inventory_dir / ".lab"

    @property
    def inventory_dir(self) -> Path:
        return self.inventory if self.inventory.is_dir() else self.inventory.parent

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def network_name(self) -> str:
        return f"{self.name}-net"

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no host {name!r} in {self.inventory} (hosts: {', '.join(h.name for h in self.hosts)})")


def _ansible_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise LabError(f"{name} not found: install the controller environment (make venv)")
    return found


def _parse_publish(spec: str) -> tuple[str, int, int]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise LabError(f"keelson_lab_publish entry {spec!r} is not ADDRESS:HOSTPORT:CONTAINERPORT")
    address, host_port, container_port = parts
    ipaddress.ip_address(address)
    return address, int(host_port), int(container_port)


def fleet_from_inventory_data(data: dict, inventory: Path) -> Fleet:
    """Build a Fleet from ``ansible-inventory --list`` output."""
    hostvars: dict[str, dict] = data.get("_meta", {}).get("hostvars", {})
    if not hostvars:
        raise LabError(f"{inventory} lists no hosts")
    groups: dict[str, list[str]] = {}
    for group, body in data.items():
        if group == "_meta" or not isinstance(body, dict):
            continue
        for host in body.get("hosts", []):
            groups.setdefault(host, []).append(group)
    first = next(iter(hostvars.values()))
    name = first.get("keelson_lab_name")
    subnet = first.get("keelson_lab_subnet")
    if not name or not subnet:
        raise LabError(f"{inventory} must set keelson_lab_name and keelson_lab_subnet for all hosts")
    network = ipaddress.ip_network(subnet)
    hosts = []
    for host, hv in sorted(hostvars.items()):
        address = hv.get("ansible_host")
        if not address:
            raise LabError(f"host {host}: ansible_host (its lab address) is not set")
        if ipaddress.ip_address(address) not in network:
            raise LabError(f"host {host}: {address} is outside keelson_lab_subnet {subnet}")
        if ipaddress.ip_address(address) in (network.network_address, network.network_address + 1):
            raise LabError(f"host {host}: {address} is the network or gateway address of {subnet}")
        publish = tuple(hv.get("keelson_lab_publish", []))
        for spec in publish:
            _parse_publish(spec)
        release = str(hv.get("keelson_lab_release", "13"))
        images.host_image(release)  # fails early on an unknown release
        hosts.append(
            LabHost(
                name=host,
                address=address,
                release=release,
                groups=tuple(sorted(g for g in groups.get(host, []) if g not in ("all", "ungrouped"))),
                publish=publish,
            )
        )
    addresses = [h.address for h in hosts]
    if len(set(addresses)) != len(addresses):
        raise LabError(f"{inventory}: two hosts share an address")
    return Fleet(name=name, subnet=subnet, inventory=inventory, hosts=tuple(hosts))


def load_fleet(inventory: Path) -> Fleet:
    inventory = inventory.resolve()
    if not inventory.exists():
        raise LabError(f"inventory {inventory} does not exist")
    result = subprocess.run(
        [_ansible_tool("ansible-inventory"), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"ansible-inventory failed for {inventory}:\n{result.stderr.strip()}")
    return fleet_from_inventory_data(json.loads(result.stdout), inventory)


def _labels(fleet: Fleet, host: LabHost | None = None) -> dict[str, str]:
    labels = {LABEL_LAB: fleet.name}
    if host is not None:
        labels[LABEL_HOST] = host.name
    return labels


def ensure_keypair(fleet: Fleet) -> Path:
    fleet.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not fleet.key_path.exists():
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"keelson-lab-{fleet.name}",
                "-f",
                str(fleet.key_path),
            ],
            check=True,
        )
    return fleet.key_path


def _ensure_network(client: docker.DockerClient, fleet: Fleet):
    for net in client.networks.list(names=[fleet.network_name]):
        if net.attrs.get("Labels", {}).get(LABEL_LAB) != fleet.name:
            raise LabError(
                f"network {fleet.network_name} exists but was not made by this lab; remove it or rename the lab"
            )
        return net
    network = ipaddress.ip_network(fleet.subnet)
    ipam = docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=fleet.subnet, gateway=str(network.network_address + 1))]
    )
    return client.networks.create(fleet.network_name, driver="bridge", ipam=ipam, labels=_labels(fleet))


def _file_tar(path: str, content: bytes, mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.size = len(content)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _create_host(client: docker.DockerClient, fleet: Fleet, host: LabHost, image: str):
    api = client.api
    name = host.container_name(fleet.name)
    volume = f"{name}-docker"
    client.volumes.create(volume, labels=_labels(fleet, host))
    port_bindings = {}
    ports = []
    for spec in host.publish:
        address, host_port, container_port = _parse_publish(spec)
        port_bindings[container_port] = (address, host_port)
        ports.append(container_port)
    host_config = api.create_host_config(
        cap_add=HOST_CAPS,
        security_opt=HOST_SECURITY_OPT,
        cgroupns="host",
        binds={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            volume: {"bind": "/var/lib/docker", "mode": "rw"},
        },
        tmpfs=HOST_TMPFS,
        port_bindings=port_bindings,
    )
    # The API form of `--security-opt systempaths=unconfined`: /proc/sys is
    # writable so Docker inside the host can set up container networking.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    networking = api.create_networking_config(
        {fleet.network_name: api.create_endpoint_config(ipv4_address=host.address)}
    )
    container = api.create_container(
        image,
        name=name,
        hostname=host.name,
        labels=_labels(fleet, host),
        host_config=host_config,
        networking_config=networking,
        ports=ports,
        stop_signal="SIGRTMIN+3",
    )
    api.start(container["Id"])
    return client.containers.get(container["Id"])


def _wait_booted(container, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        code, out = container.exec_run(["systemctl", "is-system-running"])
        state = out.decode().strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise LabError(f"{container.name}: systemd did not finish booting in {timeout:.0f}s (state {state})")


def _host_keys(container, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, out = container.exec_run(["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"])
        if code == 0 and out.strip():
            code, active = container.exec_run(["systemctl", "is-active", "ssh"])
            if active.decode().strip() == "active":
                return [line for line in out.decode().splitlines() if line.strip()]
        time.sleep(1)
    raise LabError(f"{container.name}: sshd did not come up with host keys in {timeout:.0f}s")


def ssh_command(fleet: Fleet, host: LabHost, user: str = "root") -> list[str]:
    return [
        "ssh",
        "-i",
        str(fleet.key_path),
        "-o",
        f"UserKnownHostsFile={fleet.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        f"{user}@{host.address}",
    ]


def _wait_ssh(fleet: Fleet, host: LabHost, user: str = "root", timeout: float = 60) -> None:
    """Wait until ``user`` can log in with the lab key."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            [*ssh_command(fleet, host, user=user), "true"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        last = result.stderr.strip()
        time.sleep(1)
    raise LabError(f"{host.name}: SSH login as {user} with the lab key failed: {last}")


def _wait_sshd(host: LabHost, timeout: float = 60) -> None:
    """Wait until sshd answers with its banner (no login: root may be locked out by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.address, 22), timeout=5) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise LabError(f"{host.name}: sshd does not answer on {host.address}:22")


def login_user(fleet: Fleet, host: LabHost, candidates: tuple[str, ...] = ("keelson", "root")) -> str:
    """The first of ``candidates`` that can log in (the deploy user once it exists, root before)."""
    for user in candidates:
        probe = subprocess.run(
            [*ssh_command(fleet, host, user=user), "true"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return user
    raise LabError(f"{host.name}: none of {', '.join(candidates)} can log in with the lab key")


def _forget_facts(host: LabHost) -> None:
    # A new container is a new server: facts cached for an earlier one with
    # the same name must not be reused.
    # ansible-core names cache files "<host>" or "s<serializer>_<host>".
    pattern = re.compile(rf"(s\d+_)?{re.escape(host.name)}")
    if FACT_CACHE.is_dir():
        for path in FACT_CACHE.iterdir():
            if pattern.fullmatch(path.name):
                path.unlink()


def up(fleet: Fleet, log: Callable[[str], None] = print) -> None:
    """Make the containers match the inventory; reuse hosts that already run."""
    client = docker.from_env()
    tags = {
        release: images.build_host_image(client, images.host_image(release), log=log)
        for release in sorted({h.release for h in fleet.hosts})
    }
    key = ensure_keypair(fleet)
    pubkey = key.with_suffix(".pub").read_bytes()
    _ensure_network(client, fleet)
    known: list[str] = []
    created: list[LabHost] = []
    for host in fleet.hosts:
        name = host.container_name(fleet.name)
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            container = None
        if container is not None and (
            container.labels.get(LABEL_LAB) != fleet.name
            or container.image.id != client.images.get(tags[host.release]).id
        ):
            if container.labels.get(LABEL_LAB) != fleet.name:
                raise LabError(f"container {name} exists but was not made by this lab")
            log(f"{host.name}: image changed, recreating")
            container.remove(force=True, v=True)
            container = None
        if container is None:
            log(f"{host.name}: starting (Debian {host.release}, {host.address})")
            container = _create_host(client, fleet, host, tags[host.release])
            _forget_facts(host)
            created.append(host)
        elif container.status != "running":
            container.start()
        _wait_booted(container)
        container.put_archive("/", _file_tar("root/.ssh/authorized_keys", pubkey, 0o600))
        for line in _host_keys(container):
            keytype, keydata = line.split()[:2]
            known.append(f"{host.address},{host.name} {keytype} {keydata}")
    tmp = fleet.known_hosts.with_suffix(".tmp")
    tmp.write_text("\n".join(known) + "\n")
    os.replace(tmp, fleet.known_hosts)
    for host in fleet.hosts:
        # A new host only has root with the lab key; a converged one may have
        # root logins turned off, so only sshd itself is checked there.
        if host in created:
            _wait_ssh(fleet, host)
        else:
            _wait_sshd(host)
    log(f"lab {fleet.name}: {len(fleet.hosts)} hosts up; inventory {fleet.inventory}")


def down(name: str, log: Callable[[str], None] = print, state_dir: Path | None = None) -> int:
    """Remove every container, volume and network labelled for lab ``name``."""
    client = docker.from_env()
    selector = {"label": f"{LABEL_LAB}={name}"}
    removed = 0
    for container in client.containers.list(all=True, filters=selector):
        log(f"removing container {container.name}")
        container.remove(force=True, v=True)
        removed += 1
    for volume in client.volumes.list(filters=selector):
        log(f"removing volume {volume.name}")
        volume.remove(force=True)
        removed += 1
    for network in client.networks.list(filters=selector):
        log(f"removing network {network.name}")
        network.remove()
        removed += 1
    if state_dir is not None:
        (state_dir / "known_hosts").unlink(missing_ok=True)
    return removed


def leftovers(name: str) -> list[str]:
    """Names of anything still labelled for lab ``name`` (empty after down)."""
    client = docker.from_env()
    selector = {"label": f"{LABEL_LAB}={name}"}
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
    found += [f"volume {v.name}" for v in client.volumes.list(filters=selector)]
    found += [f"network {n.name}" for n in client.networks.list(filters=selector)]
    return found


@dataclass(frozen=True)
class HostStatus:
    host: str
    container: str
    state: str
    system: str
    address: str
    release: str
    groups: tuple[str, ...]


def status(fleet: Fleet) -> list[HostStatus]:
    client = docker.from_env()
    rows = []
    for host in fleet.hosts:
        name = host.container_name(fleet.name)
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            rows.append(HostStatus(host.name, name, "absent", "-", host.address, host.release, host.groups))
            continue
        system = "-"
        if container.status == "running":
            _, out = container.exec_run(["systemctl", "is-system-running"])
            system = out.decode().strip()
        rows.append(HostStatus(host.name, name, container.status, system, host.address, host.release, host.groups))
    return rows
