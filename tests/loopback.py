"""A real HTTP(S) server on 127.0.0.1, in a thread, whose routes can lie, redirect and stall.

Each route is a function of the request handler that writes the whole answer;
`Loopback.hits` counts the requests per path (query left out).
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class Loopback:
    """Routes, hit counts and the base URL of one running server."""

    def __init__(self, server: http.server.ThreadingHTTPServer, scheme: str) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.stop = threading.Event()  # set at the end: stalling routes give up
        self._server = server
        self._scheme = scheme

    def url(self, path: str) -> str:
        return f"{self._scheme}://127.0.0.1:{self._server.server_port}{path}"


@contextmanager
def serve(tls: ssl.SSLContext | None = None) -> Iterator[Loopback]:
    """Run a server until the block ends; `tls` (a server context) makes it https."""
    state: dict[str, Loopback] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked answers need it

        def do_GET(self) -> None:
            loopback = state["loopback"]
            path = urllib.parse.urlsplit(self.path).path
            loopback.hits[path] += 1
            self.close_connection = True
            route = loopback.routes.get(path)
            if route is None:
                self.send_error(404)
                return
            with suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                route(self)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    loopback = Loopback(server, "https" if tls else "http")
    state["loopback"] = loopback
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield loopback
    finally:
        loopback.stop.set()
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- routes


def body(data: bytes, announce: int | None = None) -> Route:
    """200 with `data`, announcing `announce` bytes (default: the truth), then close."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) if announce is None else announce))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def chunked(data: bytes, finish: bool = True) -> Route:
    """200, chunked in 100-byte chunks; without the final empty chunk when not `finish`."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for start in range(0, len(data), 100):
            piece = data[start : start + 100]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        if finish:
            handler.wfile.write(b"0\r\n\r\n")

    return route


def redirect(location: str, code: int = 302) -> Route:
    """A redirect to `location`."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def trickle(size: int, interval_s: float, stop: threading.Event) -> Route:
    """200 announcing `size` bytes, then one byte every `interval_s` until done or `stop`."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        for _ in range(size):
            if stop.wait(interval_s):
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()

    return route


def stall(size: int, sent: bytes, stop: threading.Event) -> Route:
    """200 announcing `size` bytes, `sent`, then silence until `stop` (at most 30 s)."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        handler.wfile.write(sent)
        handler.wfile.flush()
        stop.wait(30)

    return route


# ---------------------------------------------------------------- TLS


def self_signed_files(folder: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) in `folder`: a fresh self-signed certificate for 127.0.0.1 and
    localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def self_signed_tls(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A (server, client) pair of contexts: a fresh self-signed certificate for 127.0.0.1
    that the client context, and nothing else, trusts."""
    cert_file, key_file = self_signed_files(folder)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
