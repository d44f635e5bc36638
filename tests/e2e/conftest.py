"""The end-to-end lab: brought up once per test run, used by every e2e test
in a fixed order, and removed at the end (nothing may be left behind)."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest
import testinfra

from keelson.lab import fleet as lab_fleet
from keelson.lab import services
from tests.helpers import ROOT, PlaybookRun, run_playbook

LAB_INVENTORY = ROOT / "inventories" / "lab"
DEPLOY_USER = "keelson"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> lab_fleet.Fleet:
    fleet = lab_fleet.load_fleet(LAB_INVENTORY)
    keep = os.environ.get("KEELSON_E2E_KEEP") == "1"
    # A fresh fleet every run: e2e proves convergence from bare servers.
    if os.environ.get("KEELSON_E2E_REUSE") != "1":
        lab_fleet.down(fleet.name, log=lambda _m: None)
    lab_fleet.up(fleet)
    # The stack's images (stand-ins and the app), delivered to hosts as archives.
    services.build_all(docker.from_env(timeout=1800))
    yield fleet
    if not keep:
        lab_fleet.down(fleet.name, state_dir=fleet.state_dir)
        left = lab_fleet.leftovers(fleet.name)
        assert not left, f"`lab down` left these behind: {left}"


@pytest.fixture(scope="session")
def summaries(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("summaries")


def lab_playbook(summaries: Path, name: str, playbook: str, *args: str, audit_hosts: bool = False) -> PlaybookRun:
    """Run a playbook against the lab inventory; the JSON summary is kept under ``name``."""
    return run_playbook(
        playbook, "-i", str(LAB_INVENTORY), *args, summary_file=summaries / f"{name}.json", audit_hosts=audit_hosts
    )


def assert_refused_before_any_change(run: PlaybookRun, message: str) -> None:
    """The run failed, said why, and changed nothing on any host."""
    assert run.returncode != 0
    assert message in run.output, run.output[-5000:]
    assert run.changed_tasks() == [], "nothing may change when the input is refused"


@pytest.fixture(scope="session")
def first_converge(lab, summaries) -> PlaybookRun:
    # Developing one e2e file against a kept, converged lab (KEELSON_E2E_REUSE=1):
    # KEELSON_E2E_CONVERGED=1 skips the site.yml run the tests would start with.
    if os.environ.get("KEELSON_E2E_REUSE") == "1" and os.environ.get("KEELSON_E2E_CONVERGED") == "1":
        return PlaybookRun(returncode=0, output="(converge skipped: KEELSON_E2E_CONVERGED=1)", summary={})
    return lab_playbook(summaries, "first", "site.yml")


@pytest.fixture(scope="session")
def testinfra_hosts(lab, first_converge):
    """Testinfra over plain SSH as the deploy user, with the lab's key and known_hosts
    (its ansible backend does not template the inventory's connection variables)."""
    options = f"-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    return {
        h.name: testinfra.get_host(
            f"ssh://{DEPLOY_USER}@{h.address}", ssh_identity_file=str(lab.key_path), ssh_extra_args=options, sudo=True
        )
        for h in lab.hosts
    }
