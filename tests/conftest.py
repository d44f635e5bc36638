"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs two workers, ``--dist loadgroup``):
    the end-to-end tests are one group, so they run on one worker, in their
    fixed order, against the one lab; and they are handed out first, so that
    worker starts on them at once while the other takes lint, unit and Molecule."""
    if not config.pluginmanager.hasplugin("xdist") or not getattr(config.option, "numprocesses", None):
        return
    e2e = [item for item in items if "tests/e2e/" in str(item.fspath)]
    for item in e2e:
        item.add_marker(pytest.mark.xdist_group("e2e"))
    rest = [item for item in items if item not in e2e]
    items[:] = e2e + rest
