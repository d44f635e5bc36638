# Keelson: fleet-derived firewall rules.
# MIT License (see LICENSE)
"""Turn the inventory (groups and host addresses) into firewall rules.

The firewall never lists addresses per host: a service says on which groups
it listens and from which groups (or the admin allowlist, or anyone) it may be
reached, and these filters work out the addresses from the inventory.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: keelson_firewall_rules
short_description: Work out the firewall rules of one host from the fleet's service table
description:
  - For each service whose C(on_groups) include the host, returns the ports and
    the source addresses (IPv4 and IPv6 separately) allowed to reach them.
  - C(from) is C(any), C(admin) (the admin allowlist) or a list of groups; a
    group's addresses are each member's C(firewall_address), else its
    C(ansible_host) when that is an IP address.
positional: services, host_groups, groups, hostvars, admin_sources
"""

import ipaddress

from ansible.errors import AnsibleFilterError

ANY = "any"
ADMIN = "admin"


def cidr_errors(values):
    """The entries of ``values`` that are not an IP address or network."""
    bad = []
    for value in values or []:
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            bad.append(value)
    return bad


def split_families(networks):
    """{"v4": [...], "v6": [...]}: networks sorted and split by IP version."""
    v4, v6 = _split(networks)
    return {"v4": v4, "v6": v6}


def allowed(addresses, networks):
    """True when every address lies in one of ``networks``."""
    nets = [ipaddress.ip_network(str(n), strict=False) for n in networks or []]
    for address in addresses:
        ip = ipaddress.ip_address(str(address))
        if not any(ip.version == n.version and ip in n for n in nets):
            return False
    return True


def _split(networks):
    v4, v6 = set(), set()
    for net in networks:
        parsed = ipaddress.ip_network(str(net), strict=False)
        (v4 if parsed.version == 4 else v6).add(parsed)
    return [str(n) for n in sorted(v4)], [str(n) for n in sorted(v6)]


def host_address(name, hostvars):
    """The address other hosts see this host coming from."""
    hv = hostvars.get(name, {})
    for key in ("firewall_address", "ansible_host"):
        value = hv.get(key)
        if value:
            try:
                return str(ipaddress.ip_address(str(value)))
            except ValueError:
                if key == "firewall_address":
                    raise AnsibleFilterError(f"host {name}: firewall_address {value!r} is not an IP address") from None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        raise AnsibleFilterError(
            f"host {name}: no IP address to allow it by (set firewall_address, or ansible_host to an IP)"
        ) from None


def fleet_addresses(group_names, groups, hostvars):
    """Sorted addresses of every member of the named groups."""
    members = set()
    for group in group_names:
        # A group the inventory does not define has no members: nobody is
        # allowed (a fleet without an edge simply has no lb sources).
        members.update(groups.get(group, []))
    addresses = {ipaddress.ip_address(host_address(h, hostvars)) for h in members}
    return [str(a) for a in sorted(addresses, key=lambda a: (a.version, a))]


def _ports(service):
    ports = service.get("ports")
    if not ports:
        raise AnsibleFilterError(f"service {service.get('name')!r} has no ports")
    result = []
    for port in ports:
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise AnsibleFilterError(f"service {service.get('name')!r}: port {port!r} is not a number") from None
        if not 1 <= number <= 65535:
            raise AnsibleFilterError(f"service {service.get('name')!r}: port {number} is outside 1-65535")
        result.append(number)
    return sorted(set(result))


def firewall_rules(services, host_groups, groups, hostvars, admin_sources, local_sources=None):
    """Rules for one host: [{name, proto, ports, any, v4, v6}], sorted by name.

    ``local_sources`` are the networks of this host's own containers: when the
    host is itself in a group a service allows, its containers are allowed too
    (their traffic to the host's address arrives from those networks, e.g.
    Prometheus scraping its own host, or the app reaching PostgreSQL on a
    single server).
    """
    bad = cidr_errors(admin_sources)
    if bad:
        raise AnsibleFilterError(f"firewall_admin_sources: not an address or CIDR: {bad}")
    bad = cidr_errors(local_sources or [])
    if bad:
        raise AnsibleFilterError(f"firewall_container_sources: not an address or CIDR: {bad}")
    mine = set(host_groups) | {"all"}
    rules = []
    for service in services:
        name = service.get("name")
        on = service.get("on_groups") or []
        if not mine.intersection(on):
            continue
        proto = service.get("proto", "tcp")
        if proto not in ("tcp", "udp"):
            raise AnsibleFilterError(f"service {name!r}: proto must be tcp or udp, not {proto!r}")
        sources = service.get("from")
        rule = {"name": name, "proto": proto, "ports": _ports(service), "any": False, "v4": [], "v6": []}
        if sources == ANY:
            rule["any"] = True
        elif sources == ADMIN:
            rule["v4"], rule["v6"] = _split(admin_sources)
        elif isinstance(sources, list) and sources:
            allowed_sources = fleet_addresses(sources, groups, hostvars)
            if local_sources and mine.intersection(sources):
                allowed_sources = allowed_sources + list(local_sources)
            rule["v4"], rule["v6"] = _split(allowed_sources)
        else:
            raise AnsibleFilterError(f"service {name!r}: from must be 'any', 'admin' or a non-empty list of groups")
        if rule["any"] or rule["v4"] or rule["v6"]:
            rules.append(rule)
    return sorted(rules, key=lambda r: r["name"])


class FilterModule:
    def filters(self):
        return {
            "keelson_firewall_rules": firewall_rules,
            "keelson_fleet_addresses": fleet_addresses,
            "keelson_cidr_errors": cidr_errors,
            "keelson_split_families": split_families,
            "keelson_fleet_allowed": allowed,
        }
