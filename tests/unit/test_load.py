"""keelson.load against real servers on 127.0.0.1: bounds, pacing, failures, reconnects, tally, TLS."""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keelson.load import LoadGenerator, main, parse_address

NAME = "edge.keelson.test"  # The certificate's name; it does not resolve, connect_address gets there.

# (server, path, request number) -> (status, JSON document or raw bytes)
Respond = Callable[["_HTTPServer", str, int], tuple[int, dict | bytes]]


def _ok(server: _HTTPServer, path: str, number: int) -> tuple[int, dict | bytes]:
    return 200, {"path": path, "number": number}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Headers and body are two writes: no delayed-ACK wait between them.
    server: _HTTPServer

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.count += 1
            server.hosts.add(self.headers.get("Host", ""))
            number = server.count
        status, document = server.respond(server, self.path, number)
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if server.close_after_response:
            # Closed without "Connection: close": the client finds out on its next request.
            self.close_connection = True

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, respond: Respond, close_after_response: bool, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond
        self.close_after_response = close_after_response
        self.context = context
        self.lock = threading.Lock()
        self.count = 0
        self.hosts: set[str] = set()
        self.sni: list[str | None] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self):
        sock, address = super().get_request()
        if self.context is not None:
            # The handshake happens in the handler's thread, on its first read.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        pass  # Refused handshakes and dropped connections are what some tests are about.


@pytest.fixture
def serve() -> Iterator[Callable[..., _HTTPServer]]:
    """Start HTTP(S) servers in threads; shut them down after the test."""
    servers: list[_HTTPServer] = []

    def start(
        respond: Respond = _ok, *, close_after_response: bool = False, context: ssl.SSLContext | None = None
    ) -> _HTTPServer:
        server = _HTTPServer(respond, close_after_response, context)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], int]]:
    """A TCP server whose connections are handled by ``behave(conn, stopping)``; returns its port."""
    stopping = threading.Event()
    listeners: list[socket.socket] = []

    def start(behave: Callable[[socket.socket, threading.Event], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)
        listeners.append(listener)

        def accept() -> None:
            while not stopping.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=_handle_raw, args=(behave, conn, stopping), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    stopping.set()
    for listener in listeners:
        listener.close()


def _handle_raw(behave: Callable[[socket.socket, threading.Event], None], conn: socket.socket, stopping) -> None:
    with conn, contextlib.suppress(OSError):
        behave(conn, stopping)


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def _url(server: _HTTPServer, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# Bounds.


@pytest.mark.parametrize(
    "bounds",
    [
        {"max_seconds": 5},
        {"max_requests": 5},
        {},
        {"max_requests": 0, "max_seconds": 5},
        {"max_requests": 5, "max_seconds": -1},
        {"max_requests": 5, "max_seconds": float("inf")},
        {"max_requests": 2.5, "max_seconds": 5},
        {"max_requests": True, "max_seconds": 5},
    ],
)
def test_both_bounds_are_required_and_positive(bounds):
    with pytest.raises(ValueError, match="max_"):
        LoadGenerator("http://127.0.0.1/", **bounds)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://127.0.0.1/", {}),
        ("http:///nohost", {}),
        ("http://127.0.0.1/", {"ca_file": "/ca.crt"}),
        ("http://127.0.0.1/", {"rate": 0}),
        ("http://127.0.0.1/", {"workers": 0}),
        ("http://127.0.0.1/", {"paths": []}),
        ("http://127.0.0.1/", {"paths": ["no-slash"]}),
        ("http://127.0.0.1/", {"ok_statuses": [200, 503]}),
    ],
)
def test_bad_options_are_refused_before_any_request(url, options):
    with pytest.raises(ValueError):
        LoadGenerator(url, max_requests=1, max_seconds=1, **options)


def test_max_requests_is_exact_across_workers(serve):
    server = serve()
    result = LoadGenerator(_url(server), workers=4, max_requests=37, max_seconds=20).run()
    assert (result.sent, result.ok, result.failed) == (37, 37, 0)
    assert server.count == 37
    assert result.stopped_by == "max_requests"
    assert result.status_counts == {200: 37}
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms


def test_max_seconds_stops_an_unpaced_run(serve):
    server = serve()
    begun = time.monotonic()
    result = LoadGenerator(_url(server), workers=2, max_requests=10**7, max_seconds=1).run()
    assert time.monotonic() - begun < 3
    assert result.stopped_by == "max_seconds"
    assert result.sent > 10
    assert result.sent == result.ok == server.count
    assert 0.9 < result.duration_s < 3


def test_rate_paces_the_whole_load_not_each_worker(serve):
    server = serve()
    result = LoadGenerator(_url(server), workers=4, rate=20, max_requests=1000, max_seconds=1.5).run()
    assert 20 <= result.sent <= 40, result.summary()
    assert result.stopped_by == "max_seconds"
    assert server.count == result.sent


def test_the_context_manager_stops_the_load_when_it_exits(serve):
    server = serve()
    with LoadGenerator(_url(server), rate=50, max_requests=10**6, max_seconds=60) as load:
        time.sleep(0.5)
        assert load.result().stopped_by == "running"
    result = load.result()
    assert result.stopped_by == "stop"
    assert 5 <= result.sent <= 40
    assert result.sent == server.count
    assert result.duration_s < 2


def test_a_generator_runs_once(serve):
    load = LoadGenerator(_url(serve()), max_requests=1, max_seconds=5)
    load.run()
    with pytest.raises(RuntimeError):
        load.start()


# Failures.


def _by_path(server: _HTTPServer, path: str, number: int) -> tuple[int, dict | bytes]:
    return {"/boom": 500, "/missing": 404}.get(path, 200), {"path": path}


def test_5xx_and_4xx_are_failures_with_path_and_status(serve):
    server = serve(_by_path)
    load = LoadGenerator(_url(server), workers=3, paths=["/ok", "/boom", "/missing"], max_requests=9, max_seconds=20)
    result = load.run()
    assert (result.sent, result.ok, result.failed) == (9, 3, 6)
    assert result.status_counts == {200: 3, 404: 3, 500: 3}
    expected = [("/boom", 500, None)] * 3 + [("/missing", 404, None)] * 3
    assert sorted((f["path"], f["status"], f["error"]) for f in result.failures) == expected
    assert result.timeline[0].failed == 6


def test_ok_statuses_can_accept_a_4xx_but_5xx_still_fails(serve):
    server = serve(_by_path)
    load = LoadGenerator(
        _url(server), paths=["/ok", "/boom", "/missing"], ok_statuses={200, 404}, max_requests=9, max_seconds=20
    )
    result = load.run()
    assert (result.ok, result.failed) == (6, 3)
    assert {f["path"] for f in result.failures} == {"/boom"}


def test_connection_refused_is_a_failure_with_the_reason():
    port = _closed_port()
    result = LoadGenerator(f"http://127.0.0.1:{port}/", workers=2, max_requests=4, max_seconds=10).run()
    assert (result.sent, result.ok, result.failed) == (4, 0, 4)
    assert result.error_counts == {"ConnectionRefusedError": 4}
    assert all("ConnectionRefusedError" in f["error"] and f["status"] is None for f in result.failures)
    assert result.p50_ms is None
    assert result.connections == 0


def test_a_timeout_is_a_failure(raw_server):
    def silent(conn: socket.socket, stopping: threading.Event) -> None:
        _read_request(conn)
        stopping.wait(10)

    port = raw_server(silent)
    result = LoadGenerator(f"http://127.0.0.1:{port}/", workers=1, timeout=0.3, max_requests=2, max_seconds=10).run()
    assert result.failed == 2
    assert result.error_counts == {"TimeoutError": 2}


def test_a_trickling_response_cannot_hold_the_run_past_its_bound(raw_server):
    """Each byte comes within the timeout, so only the bound ends it: aborted timeout + 1 s after it."""

    def trickle(conn: socket.socket, stopping: threading.Event) -> None:
        _read_request(conn)
        while not stopping.wait(0.1):
            conn.sendall(b"H")

    port = raw_server(trickle)
    begun = time.monotonic()
    result = LoadGenerator(f"http://127.0.0.1:{port}/", workers=1, timeout=0.5, max_requests=1, max_seconds=0.5).run()
    assert time.monotonic() - begun < 4
    assert result.failed == 1
    assert result.failures[0]["error"].startswith("aborted")


def test_failure_records_are_capped_but_the_counts_are_not(serve):
    server = serve(lambda *_: (503, {}))
    result = LoadGenerator(_url(server), workers=4, max_requests=250, max_seconds=20).run()
    assert result.failed == 250
    assert len(result.failures) == 200
    assert result.status_counts == {503: 250}


# Keep-alive and reconnects.


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_stale_kept_alive_connection_is_reopened_not_failed(serve, pki, tls):
    server = serve(close_after_response=True, context=pki.server_context() if tls else None)
    url = f"https://{NAME}:{server.port}/" if tls else _url(server)
    options = {"ca_file": str(pki.ca), "connect_address": "127.0.0.1"} if tls else {}
    result = LoadGenerator(url, workers=1, max_requests=20, max_seconds=20, **options).run()
    assert (result.ok, result.failed) == (20, 0), result.summary()
    # Every request after the first found its connection closed by the server.
    assert result.reconnects == 19
    assert result.connections == 20
    assert server.count == 20


def test_keepalive_reuses_one_connection_per_worker(serve):
    server = serve()
    result = LoadGenerator(_url(server), workers=2, max_requests=20, max_seconds=20).run()
    assert result.ok == 20
    assert result.connections <= 2  # One worker may have taken them all before the other started.
    assert result.reconnects == 0


def test_without_keepalive_every_request_opens_a_connection(serve):
    server = serve()
    result = LoadGenerator(_url(server), workers=2, keepalive=False, max_requests=10, max_seconds=20).run()
    assert (result.ok, result.connections, result.reconnects) == (10, 10, 0)


def test_a_post_is_not_resent_on_a_stale_connection(serve):
    server = serve(close_after_response=True)
    result = LoadGenerator(_url(server), method="POST", workers=1, max_requests=3, max_seconds=20).run()
    # The second request finds the connection closed: failed, not resent; the third opens a new one.
    assert (result.ok, result.failed, result.reconnects) == (2, 1, 0)
    assert result.failures[0]["error"].startswith("RemoteDisconnected")


def test_a_new_connection_closed_before_the_response_is_a_failure(raw_server):
    def hang_up(conn: socket.socket, stopping: threading.Event) -> None:
        _read_request(conn)

    port = raw_server(hang_up)
    result = LoadGenerator(f"http://127.0.0.1:{port}/", workers=1, max_requests=3, max_seconds=10).run()
    assert (result.failed, result.reconnects) == (3, 0)
    assert result.error_counts == {"RemoteDisconnected": 3}


# What the responses said, and when.


def test_the_tally_shows_a_json_field_changing_mid_run(serve):
    def release(server: _HTTPServer, path: str, number: int) -> tuple[int, dict | bytes]:
        return 200, {"release": "v1" if number <= 10 else "v2"}

    server = serve(release)
    load = LoadGenerator(_url(server), workers=1, rate=20, max_requests=30, max_seconds=20, tally_json_field="release")
    result = load.run()
    assert result.tally == {"v1": 10, "v2": 20}
    v1_first, v1_last = result.tally_spans["v1"]
    v2_first, v2_last = result.tally_spans["v2"]
    assert v1_first < 0.5 and v1_last < v2_first <= v2_last
    # About 1.5 s at 20 req/s: the switch is in the first second, the last one is all v2.
    assert result.timeline[0].values["v1"] == 10
    assert "v1" not in result.timeline[-1].values
    assert sum(bucket.values.get("v2", 0) for bucket in result.timeline) == 20
    assert sum(bucket.ok for bucket in result.timeline) == 30


def test_the_tally_names_responses_without_the_field(serve):
    def odd(server: _HTTPServer, path: str, number: int) -> tuple[int, dict | bytes]:
        return 200, {"/text": b"plain text", "/other": {"name": "x"}, "/num": {"release": 2}}[path]

    server = serve(odd)
    load = LoadGenerator(
        _url(server), paths=["/text", "/other", "/num"], max_requests=3, max_seconds=10, tally_json_field="release"
    )
    assert load.run().tally == {"2": 1, "<missing>": 1, "<not json>": 1}


# TLS: a name reached by address, verified against the test CA.


class _PKI:
    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.ca, self.cert, self.key = ca, cert, key

    def server_context(self, sni: list[str | None] | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        if sni is not None:
            context.sni_callback = lambda _sock, name, _context: sni.append(name)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> _PKI:
    """A CA and a certificate for NAME signed by it (cryptography if installed, else openssl)."""
    directory = tmp_path_factory.mktemp("pki")
    try:
        import cryptography  # noqa: F401, PLC0415
    except ImportError:
        return _pki_openssl(directory)
    return _pki_cryptography(directory)


def _pki_cryptography(directory: Path) -> _PKI:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keelson test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = _PKI(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


def _pki_openssl(directory: Path) -> _PKI:
    pki = _PKI(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key, csr, ext = directory / "ca.key", directory / "server.csr", directory / "server.ext"
    ext.write_text(
        f"subjectAltName=DNS:{NAME}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    new_ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_extensions = ["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"]
    ca_extensions += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    ca = ["req", "-x509", *new_ec_key, "-keyout", ca_key, "-out", pki.ca, "-days", "1", "-subj", "/CN=keelson test CA"]
    request = ["req", "-new", *new_ec_key, "-keyout", pki.key, "-out", csr, "-subj", f"/CN={NAME}"]
    sign = ["x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey", ca_key, "-CAcreateserial", "-out", pki.cert]
    for argv in ([*ca, *ca_extensions], request, [*sign, "-days", "1", "-extfile", ext]):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, cwd=directory)
    return pki


def test_tls_to_an_address_with_the_urls_name_verified(serve, pki):
    sni: list[str | None] = []
    server = serve(context=pki.server_context(sni))
    address = ("127.0.0.1", server.port)
    load = LoadGenerator(
        f"https://{NAME}/", ca_file=str(pki.ca), connect_address=address, max_requests=5, max_seconds=10
    )
    result = load.run()
    assert (result.ok, result.failed) == (5, 0), result.summary()
    assert set(sni) == {NAME}
    assert server.hosts == {NAME}


def test_tls_to_an_address_url_with_server_hostname_and_host_header(serve, pki):
    sni: list[str | None] = []
    server = serve(context=pki.server_context(sni))
    url = f"https://127.0.0.1:{server.port}/"
    tls = {"ca_file": str(pki.ca), "server_hostname": NAME, "host_header": NAME}
    result = LoadGenerator(url, max_requests=3, max_seconds=10, **tls).run()
    assert (result.ok, result.failed) == (3, 0), result.summary()
    assert set(sni) == {NAME}
    assert server.hosts == {NAME}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "CERTIFICATE_VERIFY_FAILED"),  # the system's CAs do not know the test CA
        ({"server_hostname": "other.keelson.test"}, "Hostname mismatch"),  # not the certificate's name
    ],
)
def test_tls_refuses_an_unverified_server(serve, pki, options, reason):
    server = serve(context=pki.server_context())
    if "server_hostname" in options:
        options = {**options, "ca_file": str(pki.ca)}
    result = LoadGenerator(
        f"https://{NAME}:{server.port}/", connect_address="127.0.0.1", max_requests=2, max_seconds=10, **options
    ).run()
    assert result.failed == 2
    assert all(reason in f["error"] for f in result.failures), result.failures
    assert server.count == 0


# Command line.


def test_the_command_line_prints_the_result_as_json(serve, capsys):
    server = serve()
    bounds = ["--requests", "5", "--seconds", "10", "--rate", "100"]
    code = main([f"http://{NAME}/", "--connect", f"127.0.0.1:{server.port}", *bounds, "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["sent"], printed["ok"], printed["stopped_by"]) == (5, 5, "max_requests")
    assert printed["status_counts"] == {"200": 5}


def test_the_command_line_summary_and_its_refusals(serve, capsys):
    server = serve(_by_path)
    assert main([_url(server, "/boom"), "--requests", "2", "--seconds", "10"]) == 0
    out = capsys.readouterr().out
    assert "sent 2, ok 0, failed 2" in out
    assert "/boom: HTTP 500" in out
    with pytest.raises(SystemExit) as exit_info:
        main([_url(server), "--requests", "0", "--seconds", "10"])
    assert exit_info.value.code == 2
    assert "max_requests must be a positive" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("10.0.0.1:8443", ("10.0.0.1", 8443)),
        ("edge", "edge"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::1]:443", ("::1", 443)),
    ],
)
def test_connect_addresses_parse(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["10.0.0.1:0", "10.0.0.1:http", "[::1]x"])
def test_bad_connect_addresses_are_refused(text):
    with pytest.raises(ValueError):
        parse_address(text)
