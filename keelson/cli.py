"""The ``keelson`` command line: ``keelson lab up|down|status|ssh|images``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import docker
import typer
from rich.console import Console
from rich.table import Table

from keelson.lab import fleet as lab_fleet
from keelson.lab import images, services

app = typer.Typer(help="Keelson: provision, harden and run a Docker Compose fleet.", no_args_is_help=True)
lab = typer.Typer(help="The lab: a fleet of systemd servers in containers on this machine.", no_args_is_help=True)
app.add_typer(lab, name="lab")
console = Console(stderr=True)

DEFAULT_INVENTORY = lab_fleet.PROJECT_ROOT / "inventories" / "lab"
InventoryOpt = Annotated[
    Path, typer.Option("--inventory", "-i", help="Lab inventory (hosts, groups, addresses, releases).")
]


def _log(message: str) -> None:
    console.print(f"[bold cyan]lab[/] {message}")


def _load(inventory: Path) -> lab_fleet.Fleet:
    try:
        return lab_fleet.load_fleet(inventory)
    except lab_fleet.LabError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _docker() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        console.print(f"[red]error:[/] no Docker engine answers ({exc}); run `sudo scripts/prereqs.sh` first")
        raise typer.Exit(2) from None
    return client


@lab.command()
def up(inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """Build the host and service images if needed and start every host of the inventory."""
    fleet = _load(inventory)
    _docker()
    try:
        lab_fleet.up(fleet, log=_log)
    except lab_fleet.LabError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _build_services()


def _build_services() -> None:
    """The stack's images (stand-ins for the upstream ones, and the app), cached by content.

    Its own client: the SDK's build call does not stream, so it needs a long timeout.
    """
    try:
        services.build_all(docker.from_env(timeout=1800), log=_log)
    except (docker.errors.DockerException, OSError, ValueError) as exc:
        console.print(f"[red]error:[/] building the service images failed: {exc}")
        raise typer.Exit(1) from None


@lab.command()
def down(inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """Remove every container, volume and network this lab created."""
    fleet = _load(inventory)
    _docker()
    count = lab_fleet.down(fleet.name, log=_log, state_dir=fleet.state_dir)
    left = lab_fleet.leftovers(fleet.name)
    if left:
        console.print(f"[red]error:[/] still present: {', '.join(left)}")
        raise typer.Exit(1)
    _log(f"lab {fleet.name}: removed {count} objects, nothing left")


@lab.command()
def status(inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """Show each lab host: container state, systemd state, address, groups."""
    fleet = _load(inventory)
    _docker()
    table = Table(title=f"lab {fleet.name} ({fleet.subnet})")
    for column in ("host", "container", "state", "systemd", "address", "debian", "groups"):
        table.add_column(column)
    for row in lab_fleet.status(fleet):
        table.add_row(row.host, row.container, row.state, row.system, row.address, row.release, ",".join(row.groups))
    Console().print(table)


@lab.command()
def ssh(
    host: Annotated[str, typer.Argument(help="Inventory name of the host.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command to run instead of a shell.")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Default: the deploy user if it can log in, else root.")
    ] = None,
) -> None:
    """Open an SSH session to a lab host with the lab's key and known_hosts."""
    fleet = _load(inventory)
    try:
        target = fleet.host(host)
        user = user or lab_fleet.login_user(fleet, target)
    except lab_fleet.LabError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    argv = lab_fleet.ssh_command(fleet, target, user=user)
    if not command:
        argv.insert(1, "-t")
    os.execvp(argv[0], [*argv, *(command or [])])


@lab.command("images")
def build_images(
    release: Annotated[list[str] | None, typer.Option("--release", "-r", help="Debian release (12, 13).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False,
) -> None:
    """Build the lab's host images and the stack's service images (cached by a hash of their definition)."""
    client = _docker()
    for rel in release or sorted(images.HOST_IMAGES):
        try:
            images.build_host_image(client, images.host_image(rel), force=force, log=_log)
        except ValueError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    _build_services()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
