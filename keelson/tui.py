"""``keelson tui``: the fleet's status, its logs and the day-2 actions in one screen.

The data comes from the same places as the CLI: :func:`keelson.status.collect`
(playbooks/status.yml + Prometheus) refreshed in a worker, the central journal
through :func:`keelson.logs.ssh_command`, and the actions run
:func:`keelson.runner.run` with the command :func:`keelson.runner.playbook_command`
builds, each behind a confirmation.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, RichLog, Select, Static

from keelson import logs, runner, status
from keelson.environment import Inventory, InventoryError, tool_env

ALL_SERVICES = "*"
# key → (command, what it does), in the footer's order
ACTIONS = {
    "deploy": "deploy the application stack (playbooks/stack.yml)",
    "upgrade": "upgrade the app hosts to the inventory's app_image, batch by batch (playbooks/upgrade.yml)",
    "rollback": "return every app host to its previous release (playbooks/rollback.yml)",
    "backup": "run a backup of the databases now (playbooks/backup.yml)",
}


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no for one action, showing the exact command it will run."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 90; height: auto; border: thick $error; padding: 1 2; background: $surface; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 2; }
    """
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, argv: list[str]) -> None:
        super().__init__()
        self.question = question
        self.argv = argv

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.question, style="bold"), id="question")
            yield Static(Text(" ".join(self.argv), style="dim"), id="command")
            with Horizontal():
                yield Button("Yes, run it (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class KeelsonApp(App):
    """Hosts (live status), logs of the selected host/service, actions behind a confirmation."""

    TITLE = "keelson"
    CSS = """
    #hosts { height: 1fr; }
    #bottom { height: 2fr; }
    #logs-pane { width: 3fr; }
    #output { width: 2fr; border-left: solid $primary; }
    #statusline { height: 1; background: $boost; }
    """
    BINDINGS = [
        Binding("d", "confirm('deploy')", "deploy"),
        Binding("u", "confirm('upgrade')", "upgrade"),
        Binding("r", "confirm('rollback')", "rollback"),
        Binding("b", "confirm('backup')", "backup"),
        Binding("l", "load_logs", "logs"),
        Binding("s", "refresh_status", "refresh"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        inventory: Inventory,
        interval: float = 30.0,
        collect: Callable[[], status.FleetStatus] | None = None,
        services: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.inventory = inventory
        self.interval = interval
        self.collect = collect or (lambda: status.collect(inventory))
        self.services = services if services is not None else logs.stack_services()
        self.report: status.FleetStatus | None = None
        self.selected_host: str | None = None
        self.running_action: str | None = None
        self.last_action = ""
        self.sub_title = str(inventory.path)

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="bottom"):
            with Vertical(id="logs-pane"):
                yield Select(
                    [("all services", ALL_SERVICES), *((s, s) for s in self.services)],
                    value=ALL_SERVICES,
                    allow_blank=False,
                    id="service",
                )
                yield RichLog(id="logs", wrap=True, max_lines=5000)
            yield RichLog(id="output", wrap=True, max_lines=5000)
        yield Static("", id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#hosts", DataTable)
        for column in status.COLUMNS:
            table.add_column(column, key=column)
        for host in self.inventory.hosts:
            table.add_row(host, *(["…"] * (len(status.COLUMNS) - 1)), key=host)
        self.set_status_line("reading the fleet…")
        self.action_refresh_status()
        self.set_interval(self.interval, self.action_refresh_status)

    def set_status_line(self, text: str) -> None:
        self.query_one("#statusline", Static).update(Text(text))

    # --- status ------------------------------------------------------------

    def action_refresh_status(self) -> None:
        self.refresh_status()

    @work(thread=True, exclusive=True, group="status")
    def refresh_status(self) -> None:
        try:
            report = self.collect()
        except (InventoryError, OSError) as exc:
            self.call_from_thread(self.set_status_line, f"status failed: {exc}")
            return
        self.call_from_thread(self.show_status, report)

    def show_status(self, report: status.FleetStatus) -> None:
        self.report = report
        table = self.query_one("#hosts", DataTable)
        for host in report.hosts:
            cells = status.row(host)
            style = "" if host.healthy else "red"
            if host.host not in table.rows:
                table.add_row(*(Text(cells[c], style=style) for c in status.COLUMNS), key=host.host)
                continue
            for column in status.COLUMNS:
                table.update_cell(host.host, column, Text(cells[column], style=style))
        verdict = "healthy" if report.healthy else "NOT healthy"
        prom = f"; Prometheus: {report.prometheus_error}" if report.prometheus_error else ""
        if report.fleet_alerts:
            prom = f"; fleet-wide alerts: {', '.join(report.fleet_alerts)}{prom}"
        last = f"; {self.last_action}" if self.last_action else ""
        self.set_status_line(f"fleet {verdict}{prom}{last}")

    # --- logs --------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#hosts")
    def host_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selected_host = event.row_key.value
        self.action_load_logs()

    @on(Select.Changed, "#service")
    def service_changed(self) -> None:
        self.action_load_logs()

    def log_request(self) -> tuple[str | None, str | None]:
        value = self.query_one("#service", Select).value
        return (None if value == ALL_SERVICES else str(value)), self.selected_host

    def action_load_logs(self) -> None:
        if self.selected_host is not None:
            self.load_logs(*self.log_request())

    @work(thread=True, exclusive=True, group="logs")
    def load_logs(self, service: str | None, host: str | None) -> None:
        pane = self.query_one("#logs", RichLog)
        self.call_from_thread(pane.clear)
        self.call_from_thread(pane.write, Text(f"{service or 'all services'} on {host}", style="bold"))
        try:
            argv = logs.ssh_command(self.inventory, service, host, lines=200)
            proc = runner.launch(argv, env=dict(os.environ))
        except (InventoryError, OSError) as exc:
            self.call_from_thread(pane.write, Text(str(exc), style="red"))
            return
        assert proc.stdout is not None
        for line in proc.stdout:
            self.call_from_thread(pane.write, line.rstrip("\n"))
        code = proc.wait()
        if code:
            self.call_from_thread(pane.write, Text(f"(ssh/journalctl exit {code})", style="red"))

    # --- actions -------------------------------------------------------------

    def action_confirm(self, name: str) -> None:
        if self.running_action:
            self.notify(f"{self.running_action} is still running", severity="warning")
            return
        argv = runner.playbook_command(name, self.inventory.path)
        question = f"{name}: {ACTIONS[name]} on {self.inventory.path}?"

        def answered(yes: bool | None) -> None:
            if yes:
                self.running_action = name
                self.start_action(name, argv)
            else:
                self.notify(f"{name} cancelled")

        self.push_screen(ConfirmScreen(question, argv), answered)

    @work(thread=True, exclusive=True, group="action")
    def start_action(self, name: str, argv: list[str]) -> None:
        pane = self.query_one("#output", RichLog)
        self.call_from_thread(pane.write, Text(f"$ {' '.join(argv)}", style="bold"))

        def line(text: str, progress: runner.Progress) -> None:
            self.call_from_thread(pane.write, text)
            self.call_from_thread(self.set_status_line, f"{name}: {progress.line()}")

        try:
            code, _ = runner.run(argv, line, env=tool_env())
        except OSError as exc:
            code = 127
            self.call_from_thread(pane.write, Text(str(exc), style="red"))
        self.call_from_thread(self.finish_action, name, code)

    def finish_action(self, name: str, code: int) -> None:
        self.running_action = None
        self.last_action = f"{name} finished: exit {code}"
        self.set_status_line(self.last_action)
        self.query_one("#output", RichLog).write(Text(f"{name}: exit {code}", style="green" if code == 0 else "red"))
        self.action_refresh_status()
