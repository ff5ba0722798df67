"""The documented local endpoint (lambda/local.py) over real HTTP and HTTPS on loopback; the
OpenAPI document, the SAM template and the Dockerfile checked by their tools."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def start_server(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "lambda" / "local.py"), "--port", "0", *extra],
        env={**os.environ, "MODEL_DIR": str(model_dir), "POWERTOOLS_TRACE_DISABLED": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving on (\S+)", line)
    assert match, f"no address announced: {line!r}"
    return process, match.group(1)


def request(url: str, data: bytes | None = None, headers=None, method=None, context=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def local_url(model_dir):
    process, url = start_server(model_dir)
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


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


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


def test_openapi_document_is_current_and_valid(app_module):
    from openapi_spec_validator import validate

    sys.path.insert(0, str(REPO_ROOT / "lambda"))
    import openapi

    committed = json.loads((REPO_ROOT / "lambda" / "openapi.json").read_text())
    assert committed == openapi.document(), "run `python lambda/openapi.py`"
    validate(committed)
    predict = committed["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415"} <= set(predict["responses"])
    assert set(predict["requestBody"]["content"]) == {"application/json", "image/jpeg", "image/png"}


@pytest.mark.parametrize(
    ("tool", "checked"), [("cfn-lint", "lambda/template.yaml"), ("hadolint", "lambda/Dockerfile")]
)
def test_infrastructure_passes_its_linter(tool, checked):
    linter = Path(sys.executable).parent / tool
    result = subprocess.run([linter, str(REPO_ROOT / checked)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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


@pytest.mark.parametrize("workflow", ["ci.yml", "deploy.yml"])
def test_workflows_match_githubs_schema_and_pass_zizmor(workflow):
    path = REPO_ROOT / ".github" / "workflows" / workflow
    bin_dir = Path(sys.executable).parent
    schema = subprocess.run(
        [bin_dir / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    audit = subprocess.run(
        [bin_dir / "zizmor", "--offline", "--no-progress", str(path)],
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
