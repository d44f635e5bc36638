"""Reading the lab's topology from an Ansible inventory."""

from __future__ import annotations

from pathlib import Path

import pytest

from keelson.lab import fleet

INV = Path("/nonexistent/inventory")


def _data(hostvars: dict, groups: dict | None = None) -> dict:
    data = {"_meta": {"hostvars": hostvars}, "all": {"children": list(groups or {})}}
    for group, hosts in (groups or {}).items():
        data[group] = {"hosts": hosts}
    return data


def _hv(address: str, **extra) -> dict:
    return {"ansible_host": address, "keelson_lab_name": "t", "keelson_lab_subnet": "10.99.0.0/24", **extra}


def test_groups_addresses_and_releases_come_from_the_inventory():
    data = _data(
        {"h1": _hv("10.99.0.11", keelson_lab_release="12"), "h2": _hv("10.99.0.12")},
        {"lb": ["h1"], "monitoring": ["h1"], "app": ["h2"]},
    )
    lab = fleet.fleet_from_inventory_data(data, INV)
    assert lab.name == "t"
    assert [(h.name, h.address, h.release, h.groups) for h in lab.hosts] == [
        ("h1", "10.99.0.11", "12", ("lb", "monitoring")),
        ("h2", "10.99.0.12", "13", ("app",)),
    ]
    assert lab.host("h2").container_name("t") == "t-h2"


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"h1": _hv("10.98.0.5")}, "outside keelson_lab_subnet"),
        ({"h1": _hv("10.99.0.1")}, "gateway"),
        ({"h1": _hv("10.99.0.5"), "h2": _hv("10.99.0.5")}, "share an address"),
        ({"h1": {"ansible_host": "10.99.0.5"}}, "keelson_lab_name"),
        ({"h1": _hv("10.99.0.5", keelson_lab_publish=["8443:443"])}, "ADDRESS:HOSTPORT:CONTAINERPORT"),
        ({"h1": {k: v for k, v in _hv("10.99.0.5").items() if k != "ansible_host"}}, "ansible_host"),
        ({}, "lists no hosts"),
    ],
)
def test_bad_lab_inventories_are_refused_with_a_reason(hostvars, message):
    with pytest.raises(fleet.LabError, match=message):
        fleet.fleet_from_inventory_data(_data(hostvars), INV)


def test_unknown_release_is_refused():
    with pytest.raises(ValueError, match="no lab host image"):
        fleet.fleet_from_inventory_data(_data({"h1": _hv("10.99.0.5", keelson_lab_release="10")}), INV)


def test_unknown_host_names_the_known_ones():
    lab = fleet.fleet_from_inventory_data(_data({"h1": _hv("10.99.0.5")}), INV)
    with pytest.raises(fleet.LabError, match="hosts: h1"):
        lab.host("nope")


def test_the_shipped_lab_inventory_has_every_group(project_root):
    lab = fleet.load_fleet(project_root / "inventories" / "lab")
    members: dict[str, list[str]] = {}
    for host in lab.hosts:
        for group in host.groups:
            members.setdefault(group, []).append(host.name)
    assert {"lb", "app", "db", "monitoring", "backup"} <= set(members)
    assert len(members["app"]) == 2
    assert {h.release for h in lab.hosts} == {"12", "13"}, "the lab must mix Debian 12 and 13"
    assert lab.state_dir == project_root / "inventories" / "lab" / ".lab"
    assert any(h.publish for h in lab.hosts if "lb" in h.groups), "the edge's HTTPS port must be published"
