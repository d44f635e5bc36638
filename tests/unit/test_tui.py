"""keelson tui, driven by Textual's pilot: the host table shows the shared status
data, logs follow the selected host and service, and every action asks first and
then runs the command the CLI would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from textual.widgets import DataTable, RichLog, Select, Static

from keelson import environment, runner, status
from keelson.tui import ConfirmScreen, KeelsonApp
from tests.unit.test_cli import (
    PROM_ALERTS,
    PROM_QUERIES,
    Launches,
    host_files,
    printing,
    prometheus,
    real_playbook,
    write_inventory,
)


@pytest.fixture
def launches(monkeypatch) -> Launches:
    recorder = Launches()
    monkeypatch.setattr(runner, "launch", recorder)
    return recorder


@pytest.fixture
def fleet(tmp_path):
    """A real inventory (parsed by ansible-inventory) and the hosts' status files."""
    with prometheus(PROM_ALERTS, PROM_QUERIES) as (port, _):
        inventory = environment.load(write_inventory(tmp_path / "inv", port))
        files_dir = tmp_path / "status"
        files_dir.mkdir()
        for host, data in host_files(app2_health="unhealthy").items():
            (files_dir / f"{host}.json").write_text(json.dumps(data))
        url = status.prometheus_url(inventory)

        def collect() -> status.FleetStatus:
            files = status.read_host_files(files_dir, inventory.hosts)
            return status.build(inventory, files, status.Prometheus(url), url)

        yield inventory, collect


def run(app: KeelsonApp, scenario) -> None:
    async def main():
        async with app.run_test(size=(160, 50)) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def cell(app: KeelsonApp, host: str, column: str) -> str:
    return str(app.query_one("#hosts", DataTable).get_cell(host, column))


def text_of(log: RichLog) -> str:
    return "\n".join(strip.text for strip in log.lines)


def test_hosts_table_shows_the_status(fleet, launches):
    inventory, collect = fleet
    launches.start = printing("log line")
    app = KeelsonApp(inventory, interval=3600, collect=collect, services=["app", "postgres"])

    async def scenario(pilot):
        await settle(pilot)
        assert cell(app, "app2", "containers") == "0/1 bad: keelson-app-green-app-1 unhealthy"
        assert cell(app, "app2", "alerts") == "AppSlotDown"
        assert cell(app, "app1", "release") == "app:v2 (green)"
        assert cell(app, "db1", "reachable") == "NO"
        assert cell(app, "db1", "backup age") == "1.5h"
        assert cell(app, "edge1", "cert days") == "42.2" or cell(app, "edge1", "cert days") == "42.3"
        assert "NOT healthy" in str(app.query_one("#statusline", Static).render())

    run(app, scenario)


def test_logs_follow_the_selected_host_and_service(fleet, launches):
    inventory, collect = fleet
    launches.start = printing("GET /readyz 200")
    app = KeelsonApp(inventory, interval=3600, collect=collect, services=["app", "postgres"])

    async def scenario(pilot):
        await settle(pilot)
        first = launches.argvs[-1]
        assert first[0] == "ssh" and "_HOSTNAME=app1" in first[-1]
        assert "COM_DOCKER_COMPOSE_SERVICE" not in first[-1]  # all services at first
        assert "GET /readyz 200" in text_of(app.query_one("#logs", RichLog))
        app.query_one("#hosts", DataTable).focus()
        await pilot.press("down")
        await settle(pilot)
        assert "_HOSTNAME=app2" in launches.argvs[-1][-1]
        app.query_one("#service", Select).value = "postgres"
        await settle(pilot)
        assert "COM_DOCKER_COMPOSE_SERVICE=postgres _HOSTNAME=app2" in launches.argvs[-1][-1]
        # never a playbook: logs only read the journal
        assert all(argv[0] == "ssh" for argv in launches.argvs)

    run(app, scenario)


@pytest.mark.parametrize("action", ["deploy", "upgrade", "rollback", "backup"])
def test_actions_ask_first_and_no_runs_nothing(action, fleet, launches):
    inventory, collect = fleet
    launches.start = printing("log line")
    app = KeelsonApp(inventory, interval=3600, collect=collect, services=["app"])

    async def scenario(pilot):
        await settle(pilot)
        before = len(launches.argvs)
        app.query_one("#hosts", DataTable).focus()
        await pilot.press(action[0])
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert runner.PLAYBOOKS[action] in str(app.screen.query_one("#command", Static).render())
        await pilot.press("n")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert launches.argvs[before:] == []

    run(app, scenario)


def test_confirmed_action_runs_the_clis_command(fleet, launches, tmp_path):
    inventory, collect = fleet
    started: list[list[str]] = []

    def start(argv):
        if argv[0] == "ssh":
            return printing("log line")(argv)
        started.append(argv)
        return real_playbook(tmp_path, fail=False)

    launches.start = start
    app = KeelsonApp(inventory, interval=3600, collect=collect, services=["app"])

    async def scenario(pilot):
        await settle(pilot)
        app.query_one("#hosts", DataTable).focus()
        await pilot.press("b")
        await pilot.pause()
        await pilot.click("#yes")
        await pilot.pause()
        for _ in range(200):  # a real ansible-playbook run: a few seconds
            await settle(pilot)
            if app.running_action is None:
                break
            await asyncio.sleep(0.1)
        assert started == [runner.playbook_command("backup", inventory.path)]
        output = text_of(app.query_one("#output", RichLog))
        assert "TASK [Say hello]" in output
        assert "backup: exit 0" in output
        assert "backup finished: exit 0" in str(app.query_one("#statusline", Static).render())

    run(app, scenario)


def test_a_failing_status_is_shown_not_raised(tmp_path, launches):
    launches.start = printing("log line")
    inventory = environment.Inventory(path=Path(tmp_path), groups={"all": ["h1"]}, hostvars={})

    def collect():
        raise environment.InventoryError("playbooks/status.yml failed (exit 1)")

    app = KeelsonApp(inventory, interval=3600, collect=collect, services=["app"])

    async def scenario(pilot):
        await settle(pilot)
        assert "status failed: playbooks/status.yml failed" in str(app.query_one("#statusline", Static).render())
        assert cell(app, "h1", "reachable") == "…"

    run(app, scenario)
