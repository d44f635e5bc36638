"""Firewall rules derived from the inventory (plugins/filter/keelson_fleet.py)."""

from __future__ import annotations

import sys

import pytest
from ansible.errors import AnsibleFilterError

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "filter"))
import keelson_fleet as kf  # noqa: E402

GROUPS = {
    "all": ["edge1", "app1", "app2", "db1", "backup1"],
    "lb": ["edge1"],
    "monitoring": ["edge1"],
    "app": ["app1", "app2"],
    "db": ["db1"],
    "backup": ["backup1"],
    "empty": [],
}
HOSTVARS = {
    "edge1": {"ansible_host": "203.0.113.10", "firewall_address": "10.0.0.11"},
    "app1": {"ansible_host": "10.0.0.21"},
    "app2": {"ansible_host": "2001:db8::22"},
    "db1": {"ansible_host": "10.0.0.31"},
    "backup1": {"ansible_host": "backup1.example.net"},
}
SERVICES = [
    {"name": "http", "ports": [443, 80], "on_groups": ["lb"], "from": "any"},
    {"name": "app", "ports": ["8000"], "on_groups": ["app"], "from": ["lb"]},
    {"name": "postgres", "ports": [5432], "on_groups": ["db"], "from": ["app"]},
    {"name": "node-exporter", "ports": [9100], "on_groups": ["all"], "from": ["monitoring"]},
    {"name": "ui", "ports": [9090], "on_groups": ["monitoring"], "from": "admin"},
    {"name": "nobody", "ports": [1234], "on_groups": ["db"], "from": ["empty"]},
]
ADMIN = ["192.0.2.0/24", "2001:db8:ad::/48"]


def rules(host_groups, services=SERVICES, hostvars=HOSTVARS):
    return {r["name"]: r for r in kf.firewall_rules(services, host_groups, GROUPS, hostvars, ADMIN)}


def test_each_host_gets_only_its_groups_services():
    assert set(rules(["lb", "monitoring"])) == {"http", "node-exporter", "ui"}
    assert set(rules(["app"])) == {"app", "node-exporter"}
    assert set(rules(["db"])) == {"postgres", "node-exporter"}, "a service nobody may reach opens nothing"


def test_sources_come_from_the_inventory_split_by_family():
    db = rules(["db"])["postgres"]
    assert (db["v4"], db["v6"], db["any"]) == (["10.0.0.21/32"], ["2001:db8::22/128"], False)
    assert rules(["app"])["app"]["v4"] == ["10.0.0.11/32"], "firewall_address wins over ansible_host"
    assert rules(["lb"])["http"] == {
        "name": "http",
        "proto": "tcp",
        "ports": [80, 443],
        "any": True,
        "v4": [],
        "v6": [],
    }
    ui = rules(["monitoring"])["ui"]
    assert (ui["v4"], ui["v6"]) == (["192.0.2.0/24"], ["2001:db8:ad::/48"])


def test_a_group_the_inventory_lacks_allows_nobody():
    services = [{"name": "x", "ports": [1], "on_groups": ["db"], "from": ["nosuchgroup"]}]
    assert rules(["db"], services) == {}
    assert kf.fleet_addresses(["nosuchgroup", "db"], GROUPS, HOSTVARS) == ["10.0.0.31"]


def test_a_host_without_an_ip_address_is_an_error_naming_it():
    services = [{"name": "sftp", "ports": [22], "on_groups": ["db"], "from": ["backup"]}]
    with pytest.raises(AnsibleFilterError, match="backup1: no IP address"):
        rules(["db"], services)


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"name": "x", "ports": [0], "on_groups": ["db"], "from": "any"}, "outside 1-65535"),
        ({"name": "x", "ports": [70000], "on_groups": ["db"], "from": "any"}, "outside 1-65535"),
        ({"name": "x", "ports": ["ssh"], "on_groups": ["db"], "from": "any"}, "not a number"),
        ({"name": "x", "ports": [], "on_groups": ["db"], "from": "any"}, "no ports"),
        ({"name": "x", "ports": [1], "on_groups": ["db"], "from": []}, "from must be"),
        ({"name": "x", "ports": [1], "proto": "sctp", "on_groups": ["db"], "from": "any"}, "tcp or udp"),
    ],
)
def test_bad_services_are_refused(service, message):
    with pytest.raises(AnsibleFilterError, match=message):
        rules(["db"], [service])


def test_bad_admin_sources_are_named():
    assert kf.cidr_errors(["10.0.0.0/8", "10.0.0.300", "example.com", "::1"]) == ["10.0.0.300", "example.com"]
    with pytest.raises(AnsibleFilterError, match="10.0.0.300"):
        kf.firewall_rules(SERVICES, ["db"], GROUPS, HOSTVARS, ["10.0.0.300"])


def test_allowed_checks_every_address_against_the_networks():
    assert kf.allowed(["192.0.2.7"], ADMIN)
    assert kf.allowed(["2001:db8:ad::1"], ADMIN)
    assert not kf.allowed(["198.51.100.1"], ADMIN)
    assert not kf.allowed(["192.0.2.7", "198.51.100.1"], ADMIN)
    assert not kf.allowed(["192.0.2.7"], [])


def test_split_families_sorts_and_dedupes():
    assert kf.split_families(["10.0.0.2", "10.0.0.1/32", "::1", "10.0.0.2/32"]) == {
        "v4": ["10.0.0.1/32", "10.0.0.2/32"],
        "v6": ["::1/128"],
    }


def test_a_hosts_own_containers_are_allowed_where_the_host_itself_is():
    local = ["172.31.254.0/24"]
    single = kf.firewall_rules(SERVICES, ["app", "db", "monitoring"], GROUPS, HOSTVARS, ADMIN, local)
    by_name = {r["name"]: r for r in single}
    assert "172.31.254.0/24" in by_name["postgres"]["v4"], "app containers reach PostgreSQL on a single server"
    assert "172.31.254.0/24" in by_name["node-exporter"]["v4"], "Prometheus scrapes its own host"
    # A host that is not in the allowed group does not open to its own containers.
    db_only = {r["name"]: r for r in kf.firewall_rules(SERVICES, ["db"], GROUPS, HOSTVARS, ADMIN, local)}
    assert "172.31.254.0/24" not in db_only["postgres"]["v4"]
    with pytest.raises(AnsibleFilterError, match="firewall_container_sources"):
        kf.firewall_rules(SERVICES, ["db"], GROUPS, HOSTVARS, ADMIN, ["not-a-net"])
