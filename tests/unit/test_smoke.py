"""lambda/smoke.py: the API key from the environment only, and a published version invoked
directly with API Gateway's event shape (a fake Lambda client and a loopback HTTP server)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO_ROOT

IMAGE = REPO_ROOT / "tests" / "events" / "smoke.jpeg"
VERSION = "sha256-0123456789ab"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("smoke", REPO_ROOT / "lambda" / "smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answer(path: str) -> dict:
    if path.endswith("/health"):
        return {"status": "ok", "modelVersion": VERSION}
    return {"predicted_label": "NORMAL", "probability_pneumonia": 0.1, "modelVersion": VERSION}


@pytest.fixture
def endpoint():
    """A loopback server that answers like the endpoint and records each request's key."""
    keys: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def reply(self):
            keys.append(self.headers.get("x-api-key"))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(answer(self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", keys
    server.shutdown()
    server.server_close()


def test_the_api_key_comes_from_the_environment(smoke, endpoint, monkeypatch, capsys):
    url, keys = endpoint
    monkeypatch.setenv("API_KEY", "k-from-env")
    argv = ["--url", url, "--expect-version", VERSION, "--image", str(IMAGE)]
    assert smoke.main(argv) == 0
    assert keys == ["k-from-env", "k-from-env"]
    monkeypatch.delenv("API_KEY")
    assert smoke.main(argv) == 0
    assert keys[2:] == [None, None]
    assert "smoke test passed" in capsys.readouterr().out


def test_there_is_no_option_that_puts_the_key_on_a_command_line(smoke, capsys):
    with pytest.raises(SystemExit) as exit_:
        smoke.main(["--url", "http://127.0.0.1:9", "--api-key", "k", "--image", str(IMAGE)])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --api-key" in capsys.readouterr().err


class FakeLambda:
    """boto3's lambda client's `invoke`, answering as the handler behind API Gateway would."""

    def __init__(self, version: str = VERSION, error: str | None = None):
        self.calls: list[dict] = []
        self.version, self.error = version, error

    def invoke(self, FunctionName, Qualifier, Payload):  # boto3 keyword names
        event = json.loads(Payload)
        self.calls.append({"function": FunctionName, "qualifier": Qualifier, "event": event})
        if self.error:
            payload = {"errorType": "Runtime.ExitError", "errorMessage": "boom"}
            return {"StatusCode": 200, "FunctionError": self.error, "Payload": as_stream(payload)}
        body = {**answer(event["path"]), "modelVersion": self.version}
        payload = {"statusCode": 200, "headers": {}, "body": json.dumps(body)}
        return {"StatusCode": 200, "Payload": as_stream(payload)}


def as_stream(payload: dict) -> io.BytesIO:
    return io.BytesIO(json.dumps(payload).encode())


def test_a_published_version_is_invoked_directly_with_api_gateway_events(smoke):
    client = FakeLambda()
    send = smoke.invoking("pneumonia-endpoint", "7", client)
    assert smoke.smoke(send, VERSION, IMAGE) == []
    health, predict = client.calls
    assert {call["qualifier"] for call in client.calls} == {"7"}
    assert health["event"]["httpMethod"] == "GET" and health["event"]["path"] == "/health"
    assert health["event"]["body"] is None
    event = predict["event"]
    assert event["httpMethod"] == "POST" and event["path"] == "/predict"
    assert event["isBase64Encoded"] is True
    assert event["headers"]["Content-Type"] == "image/jpeg"
    assert base64.b64decode(event["body"]) == IMAGE.read_bytes()
    assert event["requestContext"]["requestId"]  # the handler's correlation id


def test_a_wrong_version_or_a_function_error_fails_the_direct_smoke_test(smoke):
    stale = smoke.smoke(smoke.invoking("f", "7", FakeLambda("sha256-old")), VERSION, IMAGE)
    assert stale[0] == f"/health serves sha256-old, expected {VERSION}"
    crashed = smoke.smoke(smoke.invoking("f", "7", FakeLambda(error="Unhandled")), None, IMAGE)
    assert crashed[0].startswith("/health answered 502") and "Unhandled" in crashed[0]


def test_direct_invocation_needs_a_version(smoke, capsys):
    with pytest.raises(SystemExit):
        smoke.main(["--function", "f", "--image", str(IMAGE)])
    assert "--function needs --qualifier" in capsys.readouterr().err
