"""Serve the Lambda handler at http(s)://127.0.0.1:PORT as `sam local start-api` does, no Docker.

Each HTTP request becomes an API Gateway REST proxy event (binary media types
image/jpeg, image/png and application/octet-stream arrive base64-encoded, as the
SAM template configures them); the handler's response goes back as HTTP.

    MODEL_DIR=models python lambda/local.py --port 8080
    MODEL_DIR=models python lambda/local.py --port 8443 --certfile cert.pem --keyfile key.pem
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


@dataclass
class LocalContext:
    """The attributes of a Lambda context that Powertools reads."""

    function_name: str = "pneumonia-endpoint-local"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:pneumonia-endpoint"
    aws_request_id: str = ""


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict:
    """An API Gateway REST (v1) proxy event for one HTTP request."""
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    media_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    binary = media_type in BINARY_MEDIA_TYPES
    request_id = str(uuid.uuid4())
    return {
        "resource": url.path,
        "path": url.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
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
            "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent")},
            "protocol": "HTTP/1.1",
        },
        "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace"))
        if body
        else None,
        "isBase64Encoded": binary and bool(body),
    }


def make_handler(lambda_handler):
    class Handler(BaseHTTPRequestHandler):
        server_version = "pneumonia-local"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._reply(
                    413,
                    {"Content-Type": "application/json"},
                    json.dumps({"error": "request over 10 MiB"}).encode(),
                )
                return
            body = self.rfile.read(length) if length else b""
            event = to_event(self.command, self.path, dict(self.headers.items()), body)
            context = LocalContext(aws_request_id=event["requestContext"]["requestId"])
            response = lambda_handler(event, context)
            headers = dict(response.get("headers") or {})
            for key, values in (response.get("multiValueHeaders") or {}).items():
                headers[key] = ", ".join(values)
            payload = response.get("body") or ""
            data = (
                base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
            )
            self._reply(response["statusCode"], headers, data)

        def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args) -> None:  # the handler logs each request
            pass

    return Handler


def serve(
    port: int, host: str = "127.0.0.1", certfile: str | None = None, keyfile: str | None = None
) -> ThreadingHTTPServer:
    """A started-but-not-running server for the handler in lambda/app.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from app import lambda_handler

    server = ThreadingHTTPServer((host, port), make_handler(lambda_handler))
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--certfile", help="PEM certificate: serve https")
    parser.add_argument("--keyfile", help="PEM private key of the certificate")
    args = parser.parse_args()
    server = serve(args.port, args.host, args.certfile, args.keyfile)
    scheme = "https" if args.certfile else "http"
    print(f"serving on {scheme}://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
