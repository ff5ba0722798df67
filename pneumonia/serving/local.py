"""Serve the Lambda handler at http(s)://127.0.0.1:PORT as `sam local start-api` does, no Docker.

Each HTTP request becomes an API Gateway REST proxy event (binary media types
image/jpeg, image/png and application/octet-stream arrive base64-encoded, as the
SAM template configures them); the handler's response goes back as HTTP.

    MODEL_DIR=models python -m pneumonia.serving.local --port 8080
    python -m pneumonia.serving.local --port 8443 --certfile cert.pem --keyfile key.pem

As in a Lambda execution environment, the handler runs one event at a time; reading
requests and writing responses run in parallel, one thread per connection, at most
--max-connections of them (further connections wait in the listen queue). A client gets
--timeout seconds for the TLS handshake and as many again to send its whole request.
Every method reaches the handler (405 or 404 from the app); errors are JSON {"error": ...},
http.server's own (malformed request line, over-long header) included. Header names are
case-insensitive. A request without Content-Length has an empty body, as HTTP/1.1 says;
one with Transfer-Encoding gets 411, and a Content-Length that is not one number, 400.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "application/dicom", "application/octet-stream")
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
TIMEOUT_S = 20.0  # for the TLS handshake, then for the whole request, then for each write
MAX_CONNECTIONS = 16
BACKLOG = 128  # connections the kernel queues while all of MAX_CONNECTIONS are busy


@dataclass
class LocalContext:
    """The attributes of a Lambda context that Powertools reads."""

    function_name: str = "pneumonia-endpoint-local"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:pneumonia-endpoint"
    aws_request_id: str = ""
    timeout_ms: int = 10_000  # the function's timeout, as the template sets it

    def get_remaining_time_in_millis(self) -> int:
        """Time left before the function's timeout (idempotency records expire by it)."""
        return self.timeout_ms


def header(headers: Iterable[tuple[str, str]], name: str, default: str = "") -> str:
    """The last value of a header, its name in any case (HTTP header names are case-insensitive)."""
    values = [value for key, value in headers if key.lower() == name.lower()]
    return values[-1] if values else default


def to_event(
    method: str,
    target: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
) -> dict:
    """An API Gateway REST (v1) proxy event for one HTTP request.

    `headers`: a mapping, or (name, value) pairs as received. Names keep their case; the
    event's `headers` holds the last value of each, `multiValueHeaders` all of them, as
    API Gateway passes them on.
    """
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    media_type = header(pairs, "Content-Type").split(";")[0].strip().lower()
    binary = media_type in BINARY_MEDIA_TYPES
    request_id = str(uuid.uuid4())
    multi_value: dict[str, list[str]] = {}
    for key, value in pairs:
        multi_value.setdefault(key, []).append(value)
    return {
        "resource": url.path,
        "path": url.path,
        "httpMethod": method,
        "headers": {key: values[-1] for key, values in multi_value.items()},
        "multiValueHeaders": multi_value,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": url.path,
            "httpMethod": method,
            "path": url.path,
            "stage": "local",
            "requestId": request_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": header(pairs, "User-Agent") or None},
            "protocol": "HTTP/1.1",
        },
        "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace"))
        if body
        else None,
        "isBase64Encoded": binary and bool(body),
    }


class DeadlineReader(io.RawIOBase):
    """A socket's reads, all of them over by a deadline: a client trickling bytes runs out too."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        """Reads from `sock` until `seconds` from now."""
        self.sock = sock
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        """Always: this stream is for reading."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Receive into `buffer` with what is left of the deadline; TimeoutError once it passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


def content_length(values: list[str]) -> int | None:
    """The body's length from a request's Content-Length values; None unless one number.

    No Content-Length (and no Transfer-Encoding) means no body, as HTTP/1.1 has it.
    """
    if not values:
        return 0
    numbers = {value.strip() for value in values}
    if len(numbers) != 1 or not re.fullmatch(r"[0-9]+", number := numbers.pop()):
        return None
    return int(number) if len(number) < 19 else sys.maxsize  # int() refuses 4,300+ digits


class EventHandler(BaseHTTPRequestHandler):
    """One HTTP request as an API Gateway event to `handle_event`, its answer back as HTTP.

    `make_handler` binds `handle_event` and `deadline_s` in a subclass.
    """

    server_version = "pneumonia-local"
    deadline_s: float = TIMEOUT_S

    @staticmethod
    def handle_event(event: dict, context: LocalContext) -> dict:
        """The Lambda handler; bound by `make_handler`."""
        raise NotImplementedError

    def setup(self) -> None:
        """The connection's streams; the whole request must arrive within `deadline_s`."""
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self.deadline_s))

    def __getattr__(self, name: str) -> Callable[[], None]:
        """do_GET, do_TRACE, do_QUERY, ...: every method goes to the app, which answers."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        event = to_event(self.command, self.path, self.headers.items(), body)
        context = LocalContext(aws_request_id=event["requestContext"]["requestId"])
        response = self.handle_event(event, context)
        headers = dict(response.get("headers") or {})
        for key, values in (response.get("multiValueHeaders") or {}).items():
            headers[key] = ", ".join(values)
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        self._reply(response["statusCode"], headers, data)

    def _read_body(self) -> bytes | None:
        """The request body, or None once a JSON error has been answered."""
        if self.headers.get_all("Transfer-Encoding"):
            self._error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
            return None
        length = content_length(self.headers.get_all("Content-Length") or [])
        if length is None:
            self._error(HTTPStatus.BAD_REQUEST, "Content-Length is not one number")
            return None
        if length > MAX_REQUEST_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Content-Length over 10 MiB")
            return None
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            self._error(HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time")
            return None
        if len(body) < length:
            self._error(HTTPStatus.BAD_REQUEST, "the body is shorter than Content-Length")
            return None
        return body

    def _error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True
        headers = {"Content-Type": "application/json", "Connection": "close"}
        reason = status.phrase.lower().replace(" ", "_").replace("-", "_")
        self._reply(status, headers, json.dumps({"error": message, "reason": reason}).encode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, header too long, ...), in JSON."""
        if self.request_version == "HTTP/0.9":  # or no version read yet: answer with a
            self.request_version = "HTTP/1.0"  # status line and headers all the same
        text = message or HTTPStatus(code).phrase
        self._error(HTTPStatus(code), f"{text}: {explain}" if explain else text)

    def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.connection.settimeout(self.deadline_s)  # for each write; reading may have left less
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the Lambda handler logs each request."""


def make_handler(
    lambda_handler: Callable[[dict, Any], dict], timeout: float = TIMEOUT_S
) -> type[BaseHTTPRequestHandler]:
    """A request handler class that hands each request to `lambda_handler`, one at a time."""
    one_event_at_a_time = threading.Lock()  # Powertools' resolver keeps the event on a global

    def handle_event(event: dict, context: LocalContext) -> dict:
        with one_event_at_a_time:
            return lambda_handler(event, context)

    return type(
        "Handler",
        (EventHandler,),
        {"handle_event": staticmethod(handle_event), "deadline_s": timeout},
    )


class LocalServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once; TLS in that thread.

    The accepting thread only accepts: a client that connects and says nothing holds up
    its own thread for `timeout` seconds, never the others.
    """

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Bind `address`; `tls` makes it https, `timeout` bounds each TLS handshake."""
        self.tls = tls
        self.handshake_timeout = timeout
        self.slots = threading.BoundedSemaphore(max_connections)
        # The listen backlog (socketserver's 5 by default) holds what connects while every
        # slot is taken; below max_connections, a burst of clients gets connection resets.
        self.request_queue_size = max(BACKLOG, max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Take a connection slot (waiting for one), then start the connection's thread."""
        self.slots.acquire()  # when all are taken, wait; new connections queue in the backlog
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread: serve it, then give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: the TLS handshake (within the timeout), then the request."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # a failed or timed-out handshake: the socket is closed
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            self.shutdown_request(connection)


def serve(
    port: int,
    host: str = "127.0.0.1",
    certfile: str | None = None,
    keyfile: str | None = None,
    timeout: float = TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """A started-but-not-running server for the handler in pneumonia.serving.app."""
    from pneumonia.serving.app import lambda_handler  # loads the model (MODEL_DIR)

    tls = None
    if certfile:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certfile, keyfile)
    handler = make_handler(lambda_handler, timeout)
    return LocalServer((host, port), handler, tls, timeout, max_connections)


def main() -> None:
    """Command line: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--certfile", help="PEM certificate: serve https")
    parser.add_argument("--keyfile", help="PEM private key of the certificate")
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S,
        help="seconds a client has for the TLS handshake, then for its whole request",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="connections served at once; more wait to be accepted",
    )
    args = parser.parse_args()
    server = serve(
        args.port, args.host, args.certfile, args.keyfile, args.timeout, args.max_connections
    )
    scheme = "https" if args.certfile else "http"
    print(f"serving on {scheme}://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
