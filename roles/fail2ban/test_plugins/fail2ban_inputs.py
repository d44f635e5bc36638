# Keelson: Jinja tests used by the input checks of role fail2ban.
# MIT License (see LICENSE)
"""Jinja tests for fail2ban inputs, with the standard library only.

``ansible.utils.ipaddr`` needs the ``netaddr`` Python package, which the
controller environment does not have; :mod:`ipaddress` answers the same
question exactly.
"""

from __future__ import annotations

import ipaddress
import re

_PORT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def ip_or_cidr(value):
    """True for an IPv4/IPv6 address or network (``10.0.0.1``, ``10.0.0.0/8``, ``2001:db8::/32``).

    Host bits may be set (``10.1.2.3/8``), as fail2ban accepts that.  Host
    names, ranges and anything with whitespace are not IPs.
    """
    if not isinstance(value, str) or not value or value != value.strip() or " " in value:
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _port_ok(item):
    if _PORT_NAME.match(item):
        return True
    bounds = item.split(":")
    if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
        return False
    numbers = [int(b) for b in bounds]
    return all(1 <= n <= 65535 for n in numbers) and numbers == sorted(numbers)


def port_spec(value):
    """True for a fail2ban port list: comma-separated numbers, ranges ``a:b`` or service names."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 1 <= value <= 65535
    if not isinstance(value, str) or not value.strip():
        return False
    return all(_port_ok(item.strip()) for item in value.split(","))


class TestModule:
    """Jinja tests: ``fail2ban_ip_or_cidr`` and ``fail2ban_port_spec``."""

    def tests(self):
        return {
            "fail2ban_ip_or_cidr": ip_or_cidr,
            "fail2ban_port_spec": port_spec,
        }
