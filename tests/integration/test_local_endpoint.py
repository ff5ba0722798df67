"""The documented local endpoint (pneumonia.serving.local) over real HTTP and HTTPS on
loopback, and the committed OpenAPI document."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from tests import loopback
from tests.conftest import REPO_ROOT
from tests.integration.local_server import start_server

pytestmark = pytest.mark.integration


def request(url: str, data: bytes | None = None, headers=None, method=None, context=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def exchange(url: str, method: str, path: str, headers=(), body: bytes = b""):
    """(status, headers, JSON body) for a request sent with exactly these header names."""
    connection = http.client.HTTPConnection(*address(url), timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def raw_exchange(url: str, data: bytes):
    """(status, headers, body bytes) for bytes written as they are to the server's socket."""
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, response.read()


@pytest.fixture(scope="module")
def strict_url(model_dir):
    """A server that gives a client 2 s to send its request and serves 4 connections at once."""
    process, url = start_server(model_dir, "--timeout", "2", "--max-connections", "4")
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_health_and_predict_over_http(local_url, real_images):
    status, body = request(f"{local_url}/health")
    assert status == 200 and body["status"] == "ok"
    payload = json.dumps({"image": base64.b64encode(real_images[0]).decode()}).encode()
    status, from_json = request(
        f"{local_url}/predict", payload, {"Content-Type": "application/json"}
    )
    assert status == 200 and 0.0 <= from_json["probability_pneumonia"] <= 1.0
    # curl --data-binary @x.jpeg -H 'Content-Type: image/jpeg' .../predict
    status, from_binary = request(
        f"{local_url}/predict", real_images[0], {"Content-Type": "image/jpeg"}
    )
    assert (status, from_binary) == (200, from_json)


def test_errors_over_http_are_json(local_url):
    assert request(f"{local_url}/nowhere")[0] == 404
    assert request(f"{local_url}/predict")[0] == 405
    status, body = request(f"{local_url}/predict", b"{oops", {"Content-Type": "application/json"})
    assert status == 400 and "JSON" in body["error"]


def test_concurrent_clients_each_get_their_own_answer(local_url, real_images):
    answers = [
        request(f"{local_url}/predict", image, {"Content-Type": "image/jpeg"})[1]
        for image in real_images
    ]
    order = sorted(range(len(answers)), key=lambda i: answers[i]["probability_pneumonia"])
    low, high = order[0], order[-1]
    assert answers[low] != answers[high], "the two images need different answers"

    def client(worker: int) -> list[bool]:
        matches = []
        for turn in range(25):
            index = (low, high)[(worker + turn) % 2]
            status, body = request(
                f"{local_url}/predict", real_images[index], {"Content-Type": "image/jpeg"}
            )
            matches.append(status == 200 and body == answers[index])
        return matches

    with ThreadPoolExecutor(8) as pool:
        results = [match for matches in pool.map(client, range(8)) for match in matches]
    assert len(results) == 200 and all(results), f"{results.count(False)} crossed answers"


def test_sixteen_simultaneous_requests_are_all_served(local_url, real_images):
    # GIVEN 16 clients, the server's documented --max-connections, released at once
    start = threading.Barrier(16)

    def client(index: int) -> int:
        start.wait(timeout=30)
        data = real_images[index % len(real_images)]
        return request(f"{local_url}/predict", data, {"Content-Type": "image/jpeg"})[0]

    # WHEN they all connect and post together, THEN every one is answered, none reset
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(client, range(16)))
    assert statuses == [200] * 16


@pytest.mark.parametrize(
    ("lengths", "status"),
    [(["-1"], 400), (["abc"], 400), (["1_0"], 400), (["5", "6"], 400), (["99999999999"], 413)],
)
def test_a_bad_content_length_is_answered_in_json(local_url, lengths, status):
    headers = [("Content-Type", "image/jpeg")] + [("Content-Length", n) for n in lengths]
    # The client keeps its end open: a server that read to EOF would never answer.
    answer, _, body = exchange(local_url, "POST", "/predict", headers, b"\xff\xd8" * 64)
    assert answer == status and "Content-Length" in body["error"]


def test_without_content_length_the_body_is_empty_and_chunked_is_refused(local_url):
    status, _, body = exchange(local_url, "POST", "/predict", [("Content-Type", "image/jpeg")])
    assert status == 400 and "empty" in body["error"]
    chunked = [("Content-Type", "image/jpeg"), ("Transfer-Encoding", "chunked")]
    status, _, body = exchange(local_url, "POST", "/predict", chunked, b"2\r\nab\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]


def test_header_names_are_case_insensitive(local_url, real_images):
    expected = request(f"{local_url}/predict", real_images[2], {"Content-Type": "image/jpeg"})
    lower = [("content-type", "image/jpeg"), ("content-length", str(len(real_images[2])))]
    status, _, body = exchange(local_url, "POST", "/predict", lower, real_images[2])
    assert (status, body) == expected and status == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("TRACE", "/predict", 405, "POST"),
        ("QUERY", "/health", 405, "GET"),
        ("OPTIONS", "/predict", 405, "POST"),
        ("TRACE", "/nowhere", 404, None),
    ],
)
def test_every_method_reaches_the_app(local_url, method, path, status, allow):
    answer, headers, body = exchange(local_url, method, path)
    assert (answer, headers["Allow"]) == (status, allow) and "error" in body
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /health extra HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/7.0\r\n\r\n", 505),
        (b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_malformed_requests_are_answered_in_json(local_url, data, status):
    answer, headers, body = raw_exchange(local_url, data)
    assert answer == status and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server writes until it closes the connection (10 s at most)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_slow_clients_are_cut_off_while_others_are_served(strict_url):
    stalled_headers = socket.create_connection(address(strict_url))
    stalled_headers.sendall(b"POST /predict HTTP/1.1\r\nContent-Type: image/jpeg\r\n")
    stalled_body = socket.create_connection(address(strict_url))
    stalled_body.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\nab")
    trickle = socket.create_connection(address(strict_url))
    cut_off: dict[str, tuple[float, bytes]] = {}

    def wait(name: str, sock: socket.socket) -> None:
        with sock:
            data = read_until_closed(sock)
        cut_off[name] = (time.monotonic(), data)

    def trickle_forever() -> None:  # a byte every 0.2 s: no read waits long, the request never ends
        endless = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000
        with trickle:
            trickle.settimeout(0.2)
            try:
                for index in range(len(endless)):
                    trickle.send(endless[index : index + 1])
                    try:
                        if trickle.recv(65536) == b"":
                            break
                    except TimeoutError:
                        pass
            except OSError:  # reset by the server: cut off too
                pass
        cut_off["trickle"] = (time.monotonic(), b"")

    started = time.monotonic()
    waiters = [
        threading.Thread(target=wait, args=("headers", stalled_headers)),
        threading.Thread(target=wait, args=("body", stalled_body)),
        threading.Thread(target=trickle_forever),
    ]
    for waiter in waiters:
        waiter.start()
    assert request(f"{strict_url}/health")[0] == 200
    served = time.monotonic()
    for waiter in waiters:
        waiter.join(timeout=15)
    assert set(cut_off) == {"headers", "body", "trickle"}
    for name, (when, _) in cut_off.items():
        assert served < when < started + 8, f"{name} was cut off after {when - started:.1f} s"
    assert cut_off["headers"][1] == b""  # no request yet: nothing to answer
    assert cut_off["body"][1].startswith(b"HTTP/1.0 408 ")
    assert json.loads(cut_off["body"][1].split(b"\r\n\r\n", 1)[1])["error"]


def test_connection_threads_are_bounded(strict_url):
    idle = [socket.create_connection(address(strict_url)) for _ in range(4)]
    try:
        time.sleep(0.2)  # accepted: every connection thread is taken
        started = time.monotonic()
        assert request(f"{strict_url}/health")[0] == 200
        # served once an idle connection timed out (2 s) and freed its thread
        assert time.monotonic() - started > 1.5
    finally:
        for sock in idle:
            sock.close()


self_signed = loopback.self_signed_files


def test_https_with_a_given_certificate(model_dir, tmp_path, real_images):
    cert, key = self_signed(tmp_path)
    process, url = start_server(model_dir, "--certfile", str(cert), "--keyfile", str(key))
    try:
        assert url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        local = url.replace("127.0.0.1", "localhost")
        status, body = request(
            f"{local}/predict", real_images[1], {"Content-Type": "image/jpeg"}, context=context
        )
        assert status == 200 and body["predicted_label"] in ("NORMAL", "PNEUMONIA")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_idle_connection_does_not_hold_up_https_clients(model_dir, tmp_path):
    cert, key = self_signed(tmp_path)
    process, url = start_server(model_dir, "--certfile", str(cert), "--keyfile", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        local = url.replace("127.0.0.1", "localhost")
        with socket.create_connection(address(url)):  # connected, never says a word
            time.sleep(0.2)
            req = urllib.request.Request(f"{local}/health")
            with urllib.request.urlopen(req, timeout=10, context=context) as response:
                assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_openapi_document_is_current_and_valid(app_module):
    from openapi_spec_validator import validate

    from pneumonia.serving import openapi

    committed = json.loads((REPO_ROOT / "lambda" / "openapi.json").read_text())
    assert committed == openapi.document(), "run `python -m pneumonia.serving.openapi`"
    validate(committed)
    predict = committed["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert set(predict["requestBody"]["content"]) == {
        "application/json",
        "image/jpeg",
        "image/png",
        "application/dicom",
    }
    assert [p["name"] for p in predict["parameters"]] == ["explain"]


def test_smoke_script_passes_on_a_healthy_endpoint_and_fails_on_a_wrong_version(
    local_url, model_dir
):
    version = json.loads((model_dir / "model.json").read_text())["model_version"]
    smoke = [
        sys.executable,
        str(REPO_ROOT / "lambda" / "smoke.py"),
        "--url",
        local_url,
        "--image",
        str(REPO_ROOT / "tests" / "events" / "smoke.jpeg"),
    ]
    healthy = subprocess.run([*smoke, "--expect-version", version], capture_output=True, text=True)
    assert healthy.returncode == 0, healthy.stdout
    stale = subprocess.run(
        [*smoke, "--expect-version", "sha256-000000000000"], capture_output=True, text=True
    )
    assert stale.returncode == 1 and "expected sha256-000000000000" in stale.stdout
