"""The keelson CLI refuses bad input with a message and a non-zero exit."""

from __future__ import annotations

from typer.testing import CliRunner

from keelson.cli import app
from tests.helpers import ROOT

runner = CliRunner()


def test_missing_inventory_is_named():
    result = runner.invoke(app, ["lab", "status", "-i", "/nonexistent/inventory"])
    assert result.exit_code == 2
    assert "/nonexistent/inventory does not exist" in result.output


def test_unknown_host_lists_the_known_ones():
    result = runner.invoke(app, ["lab", "ssh", "no-such-host", "-i", str(ROOT / "inventories" / "lab")])
    assert result.exit_code == 2
    assert "no host 'no-such-host'" in result.output
    assert "lab-db1" in result.output


def test_unknown_release_is_refused(monkeypatch):
    class NoDocker:
        def ping(self):
            return True

    monkeypatch.setattr("keelson.cli.docker.from_env", NoDocker)
    result = runner.invoke(app, ["lab", "images", "--release", "11"])
    assert result.exit_code == 2
    assert "no lab host image for Debian '11'" in result.output


def test_help_lists_the_lab_commands():
    result = runner.invoke(app, ["lab", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "ssh", "images"):
        assert command in result.output
