"""HTTPS requests to the lab's edge, verified against the lab's CA (never -k).

The lab's public name (edge_domains) does not resolve; the connection goes to
the edge's lab address and TLS checks the certificate for the name."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from keelson.lab import fleet as lab_fleet
from tests.helpers import ROOT

DOMAIN = "lab.keelson.test"
CA_CERT = ROOT / "inventories" / "lab" / ".lab" / "ca" / "ca.crt"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for ``host``."""

    def __init__(self, address: str, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def tls_context(ca: Path = CA_CERT) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def edge_address(lab: lab_fleet.Fleet) -> str:
    return lab.host("lab-edge1").address


def request(
    lab: lab_fleet.Fleet,
    method: str,
    path: str,
    body: dict | bytes | None = None,
    *,
    context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> Response:
    """One HTTPS request through the edge."""
    conn = _PinnedConnection(edge_address(lab), DOMAIN, 443, context or tls_context(), timeout)
    headers = {"Host": DOMAIN}
    payload = None
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif body is not None:
        payload = body
        headers["Content-Type"] = "application/octet-stream"
    try:
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def plain_http(lab: lab_fleet.Fleet, path: str, timeout: float = 10) -> Response:
    """One plain-HTTP request to the edge's port 80."""
    conn = http.client.HTTPConnection(edge_address(lab), 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": DOMAIN})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
