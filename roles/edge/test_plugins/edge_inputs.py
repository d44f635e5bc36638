# Keelson: Jinja tests used by the input checks of role edge.
# MIT License (see LICENSE)
"""Jinja tests for edge inputs, with the standard library only.

``ansible.utils.ipaddr`` needs ``netaddr``, which the controller environment
does not have; :mod:`ipaddress` answers the same question exactly.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def ip_address(value):
    """True for a single IPv4/IPv6 address (no network, no host name)."""
    if not isinstance(value, str) or not value or value != value.strip():
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def hostname(value):
    """True for a DNS host name (RFC 1123 labels, at least two, not all-numeric TLD, no IP)."""
    if not isinstance(value, str) or not value or len(value) > 253 or ip_address(value):
        return False
    labels = value.rstrip(".").split(".")
    if len(labels) < 2 and value != "localhost":
        return False
    if labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


class TestModule:
    """Jinja tests: ``edge_ip`` and ``edge_hostname``."""

    def tests(self):
        return {"edge_ip": ip_address, "edge_hostname": hostname}
