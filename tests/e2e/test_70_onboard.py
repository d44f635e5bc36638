"""Onboarding a fourth app host into the live lab fleet, under load (docs/upgrades.md).

The new server (172.30.77.23; Debian 13, like every lab host that runs
containers) exists only in a copy of the lab inventory made here: the lab's
own inventory stays at five hosts.  The copy
shares the lab's group_vars and .lab state (key, known_hosts, CA, secrets)
through symlinks, so it is the same fleet with one more host; `lab down` at
the end of the session removes the new container with the others."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from keelson.lab import fleet as lab_fleet
from tests.e2e import runbooks
from tests.e2e.conftest import LAB_INVENTORY
from tests.e2e.probe import wait_for_prometheus
from tests.e2e.traffic import edge_servers, load, no_failures, serving

NEW = "lab-app3"
NEW_ADDRESS = "172.30.77.23"


@pytest.fixture(scope="module")
def grown(lab, first_converge, tmp_path_factory) -> Path:
    """The lab inventory plus NEW in group app, and NEW's container started (not converged)."""
    assert first_converge.returncode == 0, first_converge.output[-15000:]
    inventory = tmp_path_factory.mktemp("onboard") / "lab"
    inventory.mkdir()
    hosts = yaml.safe_load((LAB_INVENTORY / "hosts.yml").read_text())
    hosts["all"]["children"]["app"]["hosts"][NEW] = None
    hosts["all"]["hosts"][NEW] = {"ansible_host": NEW_ADDRESS, "keelson_lab_release": "13"}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inventory / "group_vars").symlink_to(LAB_INVENTORY / "group_vars")
    (inventory / ".lab").symlink_to(LAB_INVENTORY / ".lab")
    fleet = lab_fleet.load_fleet(inventory)
    assert fleet.name == lab.name and {h.name for h in fleet.hosts} == {h.name for h in lab.hosts} | {NEW}
    lab_fleet.up(fleet, log=lambda _m: None)
    return inventory


def test_onboarding_a_fourth_app_host_fails_no_request_and_it_serves_and_is_scraped(lab, grown, tmp_path):
    release = serving(lab, "lab-app1")
    assert len(release) == 1, release
    image = f"keelson-lab/app:{release.pop()}"
    # The inventory names the release the fleet runs (as an operator's would after the upgrade).
    hosts = yaml.safe_load((grown / "hosts.yml").read_text())
    hosts["all"]["hosts"][NEW]["app_image"] = image
    (grown / "hosts.yml").write_text(yaml.safe_dump(hosts))
    # As docs/runbooks/onboard.md says, through the keelson CLI.
    check = runbooks.run(
        "onboard", "keelson environment validate <environment>", inventory=grown, environment=str(grown)
    )
    assert check.returncode == 0, check.output[-3000:]
    with load(lab) as generator:
        run = runbooks.run(
            "onboard",
            "keelson onboard <new-host>",
            inventory=grown,
            summary_file=tmp_path / "onboard.json",
            new_host=NEW,
        )
        time.sleep(3)
    result = generator.result()
    assert run.returncode == 0, run.output[-10000:]
    no_failures(result)
    # The other hosts were updated by the second run: the db accepts the new host,
    # the edge knows its slots, Prometheus its targets.
    assert "Run site.yml on the other hosts (edge,monitoring)" in run.output
    # The new host serves traffic through the edge.
    deadline = time.monotonic() + 120
    while True:
        servers = edge_servers(lab)
        active = [s for name, s in servers.items() if name.startswith(f"{NEW}-") and s["status"].startswith("UP")]
        if active and int(active[0]["stot"]) > 0:
            break
        assert time.monotonic() < deadline, {n: (s["status"], s["stot"]) for n, s in servers.items()}
        with load(lab, seconds=5):
            time.sleep(5)
    # ... and Prometheus on the monitoring host scrapes its node-exporter.
    wait_for_prometheus(lab, f'up{{job="node",host="{NEW}"}}')
    status = runbooks.run("onboard", "keelson status", inventory=grown)
    assert NEW in status.output, status.output[-5000:]
