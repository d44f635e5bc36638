"""The ``keelson`` command line.

``keelson lab up|down|status|ssh|images`` drives the lab.  The fleet commands
(up, deploy, upgrade, rollback, backup, restore, onboard, down, prune, status,
logs, test, environment, tui) are thin wrappers over the playbooks: they pick
the inventory, build the ansible-playbook command (keelson.runner) and show
its progress; the playbooks do the work.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import docker
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from keelson import environment, logs, runner
from keelson import status as fleet_status
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


# --- the fleet: thin wrappers over the playbooks ------------------------------

env_app = typer.Typer(help="Environments: the inventories under inventories/ (or a path).", no_args_is_help=True)
app.add_typer(env_app, name="environment")
out = Console()

FleetInventoryOpt = Annotated[
    str | None,
    typer.Option(
        "--inventory",
        "-i",
        help="Inventory NAME (inventories/NAME) or path. Default: $KEELSON_INVENTORY, "
        "else the one chosen with `keelson environment use`, else lab.",
        show_default=False,
    ),
]
PassthroughArg = Annotated[
    list[str] | None, typer.Argument(help="After --: arguments passed to ansible-playbook as they are.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Confirm: really do it.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    # Text, not markup: messages quote ansible's output, which has [brackets].
    console.print(Text.assemble(("error:", "red"), " ", message))
    return typer.Exit(code)


def _inventory(option: str | None) -> environment.Inventory:
    try:
        return environment.open_inventory(option)
    except environment.InventoryError as exc:
        raise _fail(str(exc)) from None


def _confirmed(yes: bool, what: str, how: str) -> None:
    """Refuse (exit 2, nothing run) unless --yes, or the operator says yes on a terminal."""
    if yes:
        return
    if sys.stdin.isatty() and typer.confirm(f"{what}. Go on?", default=False, err=True):
        return
    raise _fail(f"{what}. Nothing was run; to do it, run again with {how}.")


def _play(argv: list[str]) -> None:
    """Run ansible-playbook with its output streamed and a live progress line; exit with its code."""
    console.print(Text.assemble(("keelson", "bold cyan"), " running: ", " ".join(argv)))
    env = environment.tool_env()
    if out.is_terminal:
        env["ANSIBLE_FORCE_COLOR"] = "1"
    with Live(Text("starting ansible-playbook…"), console=out, transient=True, refresh_per_second=8) as live:

        def show(line: str, progress: runner.Progress) -> None:
            out.print(Text.from_ansi(line), highlight=False)
            live.update(Text(progress.line(), style="bold cyan"))

        code, progress = runner.run(argv, show, env=env)
    _print_recap(progress, code)
    raise typer.Exit(code)


def _print_recap(progress: runner.Progress, code: int) -> None:
    if progress.recap:
        table = Table(title="recap")
        for column in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
            table.add_column(column)
        for host, counts in sorted(progress.recap.items()):
            bad = counts.get("failed", 0) or counts.get("unreachable", 0)
            table.add_row(
                f"[red]{host}[/]" if bad else host,
                *(str(counts.get(k, 0)) for k in ("ok", "changed", "failed", "unreachable", "skipped")),
            )
        out.print(table)
    style = "green" if code == 0 else "red"
    console.print(f"[{style}]ansible-playbook exit {code}[/]")


def _check_serial(serial: str | None) -> None:
    if serial is not None and not runner.SERIAL.match(serial):
        raise _fail(f"--serial {serial!r}: a number of hosts (1 or more) or a percentage (1%-100%)")


FullOpt = Annotated[
    bool,
    typer.Option(
        "--full",
        help="Converge every role in full, also where the host's converge stamp says nothing changed"
        " (docs/architecture.md, 'The fast path').",
    ),
]


@app.command("up")
def fleet_up(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Dry run: --check --diff.")] = False,
    full: FullOpt = False,
) -> None:
    """Converge the whole fleet: site.yml (provision, harden, stack)."""
    inv = _inventory(inventory)
    extra = {"connect_fast_path": "false"} if full else None
    _play(runner.playbook_command("up", inv.path, extra, check=check, passthrough=passthrough or ()))


@app.command()
def deploy(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Dry run: --check --diff.")] = False,
    full: FullOpt = False,
) -> None:
    """Deploy the application stack only: playbooks/stack.yml."""
    inv = _inventory(inventory)
    extra = {"connect_fast_path": "false"} if full else None
    _play(runner.playbook_command("deploy", inv.path, extra, check=check, passthrough=passthrough or ()))


@app.command()
def upgrade(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    image: Annotated[str | None, typer.Option(help="Release to ship (app_image). Default: the inventory's.")] = None,
    serial: Annotated[str | None, typer.Option(help="App hosts per batch, or a percentage (upgrade_serial).")] = None,
    backup: Annotated[bool, typer.Option(help="Back up the databases first (upgrade_backup).")] = True,
) -> None:
    """Rolling zero-downtime app upgrade: playbooks/upgrade.yml."""
    _check_serial(serial)
    inv = _inventory(inventory)
    extra: dict[str, object] = {}
    if image:
        extra["app_image"] = image
    if serial:
        extra["upgrade_serial"] = serial
    if not backup:
        extra["upgrade_backup"] = "false"
    _play(runner.playbook_command("upgrade", inv.path, extra, passthrough=passthrough or ()))


@app.command()
def rollback(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    image: Annotated[
        str | None, typer.Option(help="Go to this release (app_rollback_image). Default: each host's other slot.")
    ] = None,
    serial: Annotated[str | None, typer.Option(help="App hosts per batch, or a percentage (upgrade_serial).")] = None,
) -> None:
    """Return the app hosts to the previous release: playbooks/rollback.yml."""
    _check_serial(serial)
    inv = _inventory(inventory)
    extra: dict[str, object] = {}
    if image:
        extra["app_rollback_image"] = image
    if serial:
        extra["upgrade_serial"] = serial
    _play(runner.playbook_command("rollback", inv.path, extra, passthrough=passthrough or ()))


@app.command()
def backup(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    job: Annotated[str, typer.Option(help=f"Backup job: {', '.join(runner.BACKUP_JOBS)}.")] = "backup",
) -> None:
    """Run a backup job now on the db hosts: playbooks/backup.yml."""
    if job not in runner.BACKUP_JOBS:
        raise _fail(f"--job {job!r}: one of {', '.join(runner.BACKUP_JOBS)}")
    inv = _inventory(inventory)
    extra = {"backup_job": job} if job != "backup" else {}
    _play(runner.playbook_command("backup", inv.path, extra, passthrough=passthrough or ()))


@app.command()
def restore(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    snapshot: Annotated[
        str | None, typer.Option(help="restic snapshot of the dumps (backup_restore_snapshot). Default: newest.")
    ] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", help="Point in time, e.g. 2026-11-29T08:15:00Z (backup_restore_target_time)."),
    ] = None,
    offsite: Annotated[bool, typer.Option(help="From the offsite repository.")] = False,
    yes: YesOpt = False,
) -> None:
    """Restore the databases from a backup: playbooks/restore.yml (the current data is kept aside)."""
    if snapshot and time:
        raise _fail("--snapshot and --time exclude each other: a restore is of dumps or to a point in time")
    inv = _inventory(inventory)
    what = f"snapshot {snapshot}" if snapshot else f"the state at {time}" if time else "the newest dumps"
    _confirmed(
        yes,
        f"restore would STOP the app and REPLACE the databases of {', '.join(inv.group('db'))} "
        f"({inv.name}) with {what} from the {'offsite' if offsite else 'local'} repository",
        "--yes",
    )
    extra: dict[str, object] = {"restore_confirm": "yes"}
    if snapshot:
        extra["backup_restore_snapshot"] = snapshot
    if time:
        extra["backup_restore_target_time"] = time
    if offsite:
        extra["backup_restore_repository"] = "offsite"
    _play(runner.playbook_command("restore", inv.path, extra, passthrough=passthrough or ()))


@app.command()
def onboard(
    host: Annotated[str, typer.Argument(help="The new server, already in the inventory in its groups.")],
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
) -> None:
    """Bring a new server into the live fleet: playbooks/onboard.yml -l HOST."""
    inv = _inventory(inventory)
    try:
        inv.require_host(host)
    except environment.InventoryError as exc:
        raise _fail(f"{exc} (add the new server to the inventory first)") from None
    _play(runner.playbook_command("onboard", inv.path, limit=host, passthrough=passthrough or ()))


@app.command("down")
def fleet_down(passthrough: PassthroughArg = None, inventory: FleetInventoryOpt = None, yes: YesOpt = False) -> None:
    """Stop the application stack on every host, keeping its data: playbooks/down.yml."""
    inv = _inventory(inventory)
    _confirmed(yes, f"down would STOP the application stack on every host of {inv.name} (data is kept)", "--yes")
    _play(runner.playbook_command("down", inv.path, {"keelson_confirm": "yes"}, passthrough=passthrough or ()))


@app.command()
def prune(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go (--check --diff).")] = False,
    yes: YesOpt = False,
) -> None:
    """Remove old releases and unused images: playbooks/prune.yml."""
    inv = _inventory(inventory)
    if not dry_run:
        _confirmed(
            yes,
            f"prune would DELETE old releases and unused images on the hosts of {inv.name}",
            "--yes (or see what would go with --dry-run)",
        )
    # A dry run needs no confirmation (the playbook allows check mode without it).
    extra = {} if dry_run else {"keelson_confirm": "yes"}
    _play(runner.playbook_command("prune", inv.path, extra, check=dry_run, passthrough=passthrough or ()))


@app.command("status")
def fleet_status_command(
    passthrough: PassthroughArg = None,
    inventory: FleetInventoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Each host: reachable, app release, containers, last backup, certificates, alerts. Exit 1 unless all healthy."""
    inv = _inventory(inventory)
    with Live(Text("reading the fleet…"), console=console, transient=True) as live:
        try:
            report = fleet_status.collect(
                inv, lambda _line, p: live.update(Text(p.line(), style="cyan")), passthrough=tuple(passthrough or ())
            )
        except environment.InventoryError as exc:
            raise _fail(str(exc), 1) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(status_table(report))
        if report.fleet_alerts:
            console.print(Text.assemble(("Fleet-wide alerts: ", "red"), ", ".join(report.fleet_alerts)))
        if report.prometheus_error:
            console.print(Text.assemble(("Prometheus did not answer: ", "yellow"), report.prometheus_error))
    raise typer.Exit(0 if report.healthy else 1)


def status_table(report: fleet_status.FleetStatus) -> Table:
    table = Table(title=f"{report.inventory}: {'healthy' if report.healthy else 'NOT healthy'}")
    for column in fleet_status.COLUMNS:
        table.add_column(column)
    for host in report.hosts:
        cells = fleet_status.row(host)
        style = "" if host.healthy else "red"
        table.add_row(*(Text(cells[c]) for c in fleet_status.COLUMNS), style=style)
    return table


@app.command("logs")
def fleet_logs(
    service: Annotated[str | None, typer.Argument(help="A service of the stack (app, postgres, haproxy…).")] = None,
    inventory: FleetInventoryOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Only this host's containers.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new entries.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Entries to show.")] = 100,
) -> None:
    """Containers' logs from the central journal on the first monitoring host (journalctl over ssh)."""
    services_known = logs.stack_services()
    try:
        if service is not None:
            logs.check_service(service, services_known)
        inv = environment.open_inventory(inventory)
        argv = logs.ssh_command(inv, service, host, lines=lines, follow=follow)
    except environment.InventoryError as exc:
        raise _fail(str(exc)) from None
    proc = runner.launch(argv, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    raise typer.Exit(code)


@app.command("test")
def run_tests(
    args: Annotated[list[str] | None, typer.Argument(help="After --: arguments for pytest (scripts/test.sh).")] = None,
) -> None:
    """The whole test suite, as the README says: make test (scripts/test.sh with arguments)."""
    argv = ["scripts/test.sh", *args] if args else ["make", "test"]
    console.print(Text.assemble(("keelson", "bold cyan"), " running: ", " ".join(argv)))
    proc = runner.launch(argv, env=dict(os.environ))
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
    raise typer.Exit(proc.wait())


@env_app.command("list")
def env_list() -> None:
    """The inventories under inventories/, their host counts, and which one is current."""
    current = environment.choice(None)
    table = Table(title="environments")
    for column in ("", "name", "hosts", "path"):
        table.add_column(column)
    for name in environment.names():
        path = environment.INVENTORIES / name
        count = environment.host_count(path)
        mark = "*" if name == current else ""
        table.add_row(mark, name, "?" if count is None else str(count), str(path.relative_to(environment.ROOT)))
    out.print(table)
    source = (
        f"${environment.ENV_VAR}"
        if os.environ.get(environment.ENV_VAR)
        else "keelson environment use"
        if environment.stored()
        else "default"
    )
    console.print(f"current: {current} (from {source})")


@env_app.command("use")
def env_use(name: Annotated[str, typer.Argument(help="Inventory NAME or path.")]) -> None:
    """Validate an inventory, then make it the default of every command."""
    try:
        inv = environment.use(name)
    except environment.InventoryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"using {inv.name}: {len(inv.hosts)} hosts (stored in {environment.STATE_FILE})")
    if os.environ.get(environment.ENV_VAR):
        console.print(f"[yellow]note:[/] ${environment.ENV_VAR} is set and still wins over this choice")


@env_app.command("validate")
def env_validate(name: Annotated[str, typer.Argument(help="Inventory NAME or path.")]) -> None:
    """Check an inventory: it parses, has hosts in lb, app, db, monitoring, and an address for each host."""
    try:
        inv = environment.validate(environment.path_of(name))
    except environment.InventoryError as exc:
        raise _fail(str(exc)) from None
    groups = ", ".join(f"{g}={len(inv.group(g))}" for g in (*environment.REQUIRED_GROUPS, *environment.OPTIONAL_GROUPS))
    console.print(f"[green]ok[/] {inv.path}: {len(inv.hosts)} hosts ({groups})")


@app.command()
def tui(
    inventory: FleetInventoryOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between status refreshes.")] = 30.0,
) -> None:
    """Interactive view: host status, logs, and deploy/upgrade/rollback/backup behind a confirmation."""
    if interval < 5:
        raise _fail("--interval must be 5 seconds or more (each refresh runs a playbook)")
    inv = _inventory(inventory)
    # Textual loads only for the TUI (it is slow to import for every other command).
    from keelson.tui import KeelsonApp  # noqa: PLC0415

    KeelsonApp(inv, interval=interval).run()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
