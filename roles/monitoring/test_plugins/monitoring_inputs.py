# Keelson: Jinja tests used by the input checks of role monitoring.
# MIT License (see LICENSE)
"""Jinja tests for monitoring inputs, with the standard library only.

``ansible.utils.ipaddr`` needs the ``netaddr`` Python package, which the
controller environment does not have; :mod:`ipaddress` answers the same
question exactly.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def ip_address(value):
    """True for an IPv4 or IPv6 address (``0.0.0.0``, ``192.0.2.10``, ``::``)."""
    if not isinstance(value, str) or value != value.strip():
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def ip_network(value):
    """True for an IPv4/IPv6 network in CIDR form with no host bits set (``172.23.254.0/24``)."""
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def http_url(value):
    """True for an absolute http(s) URL with a host (``https://hooks.example.com/x``)."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class TestModule:
    """Jinja tests: ``monitoring_ip_address``, ``monitoring_ip_network``, ``monitoring_http_url``."""

    def tests(self):
        return {
            "monitoring_ip_address": ip_address,
            "monitoring_ip_network": ip_network,
            "monitoring_http_url": http_url,
        }
