"""Fixtures and hooks shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT


def in_ci() -> bool:
    """CI sets ``CI`` (GitHub, GitLab and most others do; `.ci/run` does too)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a test that skips did not run: report it as failed, with the reason it gave.

    Outside CI (a laptop without a Docker engine, say) a skip stays a skip, and the run's
    summary lists it (``-ra``)."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, so it did not run: {reason} (CI must provide what the test needs)"


def pytest_terminal_summary(terminalreporter):
    """Name every skipped test by its id (pytest's own summary gives a file and line per
    reason), one ``SKIPPED <test id> - <reason>`` line each: scripts/test.sh repeats them
    at the end of the log."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section("skipped tests (they did not run)")
    for report in skipped:
        terminalreporter.line(f"SKIPPED {report.nodeid} - {_skip_reason(report)}")
