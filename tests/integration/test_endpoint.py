"""The real Lambda handler, driven by recorded API Gateway REST proxy events, on real images."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests import hostile
from tests.images import encode, gradient
from tests.integration.conftest import probabilities_from_keras, reexported

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clear_metrics")]
EVENTS = Path(__file__).resolve().parents[1] / "events"


def event(name: str, **changes) -> dict:
    recorded = json.loads((EVENTS / f"{name}.json").read_text())
    recorded = copy.deepcopy(recorded)
    content_type = changes.pop("content_type", None)
    if content_type is not None:
        recorded["headers"]["Content-Type"] = content_type
        recorded["multiValueHeaders"]["Content-Type"] = [content_type]
    recorded.update(changes)
    return recorded


def json_event(payload) -> dict:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return event("predict_json", body=body)


def image_event(data: bytes, content_type: str = "image/jpeg") -> dict:
    return event("predict_binary", body=base64.b64encode(data).decode(), content_type=content_type)


def call(app_module, request: dict, context) -> tuple[int, dict]:
    response = app_module.lambda_handler(request, context)
    assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]
    return response["statusCode"], json.loads(response["body"])


def test_health_names_the_model_version(app_module, lambda_context, model_dir):
    status, body = call(app_module, event("health"), lambda_context)
    version = json.loads((model_dir / "model.json").read_text())["model_version"]
    assert (status, body) == (200, {"status": "ok", "modelVersion": version})


BROKEN_MODEL_CHILD = """
import json
from pneumonia.serving import app
from pneumonia.serving.local import LocalContext
context = LocalContext()
for name in ("health", "predict_binary"):
    request = json.load(open(f"tests/events/{name}.json"))
    response = app.lambda_handler(request, context)
    print("RESULT", response["statusCode"], response["body"])
"""


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(metadata: dict) -> None:
        target = metadata
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(metadata) if callable(value) else value

    return edit


# model.json edits that make it invalid, and file-level breakages
JSON_BREAKAGES = {
    "threshold not a number": _set("threshold", "0.5"),
    "threshold over 1": _set("threshold", 1.5),
    "labels not a pair": _set("labels", ["NORMAL"]),
    "image_size a string": _set("preprocessing", "image_size", "128"),
    "decision band without the threshold": _set(
        "decision_band", "low", lambda metadata: metadata["threshold"] + 0.01
    ),
    "an output the graph lacks": _set("outputs", "cam", "no_such_tensor"),
    "gate threshold not positive": _set("ood_gate", "threshold", 0),
    # valid model.json values, edited after the export: modelVersion no longer covers them
    "threshold edited after export": _set(
        "threshold", lambda metadata: metadata["threshold"] + 1e-3
    ),
    "gate turned off after export": _set("ood_gate", "threshold", 1e308),
    "image size edited after export": _set("preprocessing", "image_size", 96),
    "calibration edited after export": _set("calibration", "shift", 0.5),
}
BREAKAGES = [
    "no model.onnx",
    "corrupt model.onnx",
    "no model.json",
    "model.onnx from another export",
    "image size not the graph's, version recomputed",
    *JSON_BREAKAGES,
]


def _break(folder: Path, breakage: str) -> None:
    if breakage == "no model.onnx":
        (folder / "model.onnx").unlink()
    elif breakage == "corrupt model.onnx":
        (folder / "model.onnx").write_bytes(b"not a protobuf" * 100)
    elif breakage == "no model.json":
        (folder / "model.json").unlink()
    elif breakage == "image size not the graph's, version recomputed":
        # a model.json whose version is right for its fields, but whose preprocessing does
        # not make the graph's input shape: only the shape check can catch it
        reexported(folder, _set("preprocessing", "image_size", 96))
    elif breakage == "model.onnx from another export":  # a valid graph, other bytes
        import onnx

        graph = onnx.load(folder / "model.onnx")
        graph.doc_string = "another export"
        onnx.save(graph, folder / "model.onnx")
    else:
        metadata = json.loads((folder / "model.json").read_text())
        JSON_BREAKAGES[breakage](metadata)
        (folder / "model.json").write_text(json.dumps(metadata))


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_model_that_does_not_load_gives_503_not_a_crashed_function(model_dir, tmp_path, breakage):
    import os
    import shutil
    import subprocess
    import sys

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    _break(broken, breakage)
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_MODEL_CHILD],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "MODEL_DIR": str(broken), "POWERTOOLS_TRACE_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [line.split(" ", 2)[1:] for line in result.stdout.splitlines() if "RESULT" in line]
    unavailable = '{"error": "the model is not loaded", "reason": "model_unavailable"}'
    assert answers == [["503", unavailable]] * 2
    assert "model could not be loaded" in result.stdout  # the cause is logged


def test_predict_base64_json_returns_the_published_contract(
    app_module, lambda_context, real_images
):
    status, body = call(
        app_module,
        json_event({"image": base64.b64encode(real_images[0]).decode()}),
        lambda_context,
    )
    assert status == 200
    assert body["predicted_label"] in ("NORMAL", "PNEUMONIA")
    assert 0.0 <= body["probability_pneumonia"] <= 1.0
    assert body["modelVersion"].startswith("sha256-")
    expected = "PNEUMONIA" if body["probability_pneumonia"] >= body["threshold"] else "NORMAL"
    assert body["predicted_label"] == expected


def test_predict_binary_body_equals_json_body(app_module, lambda_context, real_images):
    for image in real_images:
        _, from_binary = call(app_module, image_event(image), lambda_context)
        _, from_json = call(
            app_module, json_event({"image": base64.b64encode(image).decode()}), lambda_context
        )
        assert from_binary == from_json


def test_endpoint_probability_equals_the_pipelines(
    app_module, lambda_context, real_images, keras_model
):
    expected = probabilities_from_keras(keras_model, real_images, app_module.MODEL.metadata)
    served = [
        call(app_module, image_event(image), lambda_context)[1]["probability_pneumonia"]
        for image in real_images
    ]
    np.testing.assert_allclose(served, expected, atol=1e-5)


def rgb(pixels):
    return Image.fromarray(np.stack([pixels] * 3, axis=-1))


def exif_rotated(xray: Image.Image) -> bytes:
    """Stored a quarter turn off, with the EXIF orientation (6) that turns it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(xray.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())


MODES = {  # mode: (encode the real X-ray in it, content type, lossless)
    "L": (lambda xray: encode(xray, "PNG"), "image/png", False),  # it is the original
    "RGB": (lambda xray: encode(xray.convert("RGB"), "JPEG"), "image/jpeg", False),
    "RGBA": (lambda xray: encode(xray.convert("RGBA"), "PNG"), "image/png", True),
    "P": (  # an adaptive palette: the default web palette has six grays
        lambda xray: encode(
            xray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG"
        ),
        "image/png",
        False,
    ),
    "I;16": (
        lambda xray: encode(Image.fromarray(np.asarray(xray).astype(np.uint16) * 257), "PNG"),
        "image/png",
        True,
    ),
    "EXIF": (exif_rotated, "image/jpeg", False),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_is_served(app_module, lambda_context, real_images, mode):
    """A real X-ray in each mode is served; the lossless ones score as its grayscale original."""
    to_bytes, content_type, lossless = MODES[mode]
    xray = Image.open(io.BytesIO(real_images[0])).convert("L")
    status, body = call(app_module, image_event(to_bytes(xray), content_type), lambda_context)
    assert status == 200, (mode, body)
    assert 0.0 <= body["probability_pneumonia"] <= 1.0
    if lossless:
        grayscale = image_event(encode(xray, "PNG"), "image/png")
        _, original = call(app_module, grayscale, lambda_context)
        assert body["probability_pneumonia"] == pytest.approx(
            original["probability_pneumonia"], abs=1e-6
        )


def small_jpeg() -> bytes:
    return encode(Image.fromarray(gradient()), "JPEG")


@pytest.mark.parametrize(
    ("request_event", "status", "message"),
    [
        (json_event("{not json"), 400, "not valid JSON"),
        (json_event({"picture": "abc"}), 400, '"image"'),
        (json_event({"image": 42}), 400, '"image"'),
        (json_event({"image": "***not base64***"}), 400, "base64"),
        (json_event({"image": base64.b64encode(b"hello world").decode()}), 400, "not a recognised"),
        (json_event({"image": ""}), 400, "empty"),
        (image_event(small_jpeg()[:-80]), 400, "cannot be decoded"),
        (image_event(encode(Image.fromarray(gradient()), "GIF"), "image/gif"), 415, "image/gif"),
        (image_event(encode(Image.fromarray(gradient()), "GIF")), 415, "GIF"),
        (
            json_event({"image": base64.b64encode(encode(rgb(gradient()), "BMP")).decode()}),
            415,
            "BMP",
        ),
        (event("predict_json", content_type="text/plain", body="hello"), 415, "text/plain"),
        (json_event({"image": "A" * 6_000_000}), 413, "limit"),
        (event("health", httpMethod="DELETE"), 405, "GET"),
        (event("predict_json", httpMethod="GET"), 405, "POST"),
        (event("health", path="/admin", resource="/admin"), 404, "/admin"),
    ],
)
def test_client_errors_get_a_4xx_json_error(
    app_module, lambda_context, request_event, status, message
):
    got_status, body = call(app_module, request_event, lambda_context)
    assert got_status == status, body
    assert sorted(body) == ["error", "reason"] and message in body["error"]


@pytest.mark.parametrize(
    ("request_event", "status", "reason"),
    [
        (json_event("{not json"), 400, "invalid_json"),
        (json_event({"image": "not base64!"}), 400, "invalid_base64"),
        (
            event("predict_json", content_type="text/plain", body="hello"),
            415,
            "unsupported_media_type",
        ),
        (event("health", httpMethod="DELETE"), 405, "method_not_allowed"),
        (event("health", path="/admin", resource="/admin"), 404, "not_found"),
        (
            event("predict_binary", queryStringParameters={"explain": "maybe"}),
            400,
            "invalid_request",
        ),
    ],
)
def test_each_client_error_names_its_stable_reason(
    app_module, lambda_context, request_event, status, reason
):
    got_status, body = call(app_module, request_event, lambda_context)
    assert (got_status, body["reason"]) == (status, reason), body


def test_a_huge_declared_image_is_rejected_from_its_header(app_module, lambda_context):
    # 30000 x 30000 px (900 MP) in a few kB; decoding it would take ~900 MB.
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    started = time.perf_counter()
    status, body = call(app_module, image_event(bomb, "image/png"), lambda_context)
    elapsed = time.perf_counter() - started
    assert status == 413 and "pixels" in body["error"]
    assert elapsed < 0.5, "the pixels were decoded"


@pytest.mark.parametrize("name", list(hostile.PAYLOADS))
def test_hostile_payloads_get_a_200_or_a_4xx_json_answer(app_module, lambda_context, name):
    builder, content_type = hostile.PAYLOADS[name]
    status, body = call(app_module, image_event(builder(), content_type), lambda_context)
    assert status == 200 or (400 <= status < 500 and sorted(body) == ["error", "reason"]), body
    if "scans" in name or "chunks" in name:
        assert status == 422, body


@pytest.mark.parametrize("name", list(hostile.DICOM_PAYLOADS))
def test_hostile_dicom_payloads_get_their_4xx(app_module, lambda_context, name):
    builder, reason = hostile.DICOM_PAYLOADS[name]
    status, body = call(app_module, image_event(builder(), "application/dicom"), lambda_context)
    expected = {"too_large": 413, "too_complex": 422, "colour": 422, "corrupt": 400}[reason]
    assert (status, body["reason"]) == (expected, reason), body


def test_bit_flipped_images_never_cause_a_5xx(app_module, lambda_context, real_images):
    rng = np.random.default_rng(0)
    for image in real_images:
        for _ in range(10):
            damaged = bytearray(image)
            for position in rng.integers(0, len(damaged), 20):
                damaged[position] ^= 1 << int(rng.integers(0, 8))
            status, body = call(app_module, image_event(bytes(damaged)), lambda_context)
            # decoded and judged (a damaged picture may no longer look like an X-ray), or 400
            assert status in (200, 400) or body["reason"] == "not_a_chest_xray", body


def test_logs_carry_outcome_but_never_image_data(app_module, lambda_context, real_images):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(app_module.logger.registered_formatter)
    app_module.logger.addHandler(handler)
    encoded = base64.b64encode(real_images[0]).decode()
    try:
        call(app_module, json_event({"image": encoded}), lambda_context)
        call(app_module, json_event({"image": encoded[:-7] + "!!!"}), lambda_context)
    finally:
        app_module.logger.removeHandler(handler)
    logs = stream.getvalue()
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    requests = [r for r in records if r.get("message") == "request"]
    assert len(requests) == 2
    assert {r["status"] for r in requests} == {200, 400}
    assert all("latency_ms" in r and "body_bytes" in r for r in requests)
    assert requests[0]["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert encoded[:64] not in logs and encoded[-64:] not in logs


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=4096),
    content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream"]),
)
def test_fuzzed_binary_bodies_never_cause_a_5xx(app_module, lambda_context, body, content_type):
    status, payload = call(app_module, image_event(body, content_type), lambda_context)
    assert 400 <= status < 500 or status == 200, payload


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.text(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: st.lists(children) | st.dictionaries(st.text(max_size=8), children),
            max_leaves=10,
        ).map(json.dumps),
        st.binary(max_size=2048).map(lambda b: json.dumps({"image": base64.b64encode(b).decode()})),
    )
)
def test_fuzzed_json_bodies_never_cause_a_5xx(app_module, lambda_context, body):
    status, payload = call(app_module, json_event(body), lambda_context)
    assert 400 <= status < 500, payload


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "LA"]),
    format=st.sampled_from(["PNG", "JPEG"]),
    seed=st.integers(0, 2**16),
)
def test_fuzzed_decode_path_serves_any_valid_image(
    app_module, lambda_context, width, height, mode, format, seed
):
    if format == "JPEG" and mode not in ("L", "RGB"):
        mode = "RGB"
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = (
        image.convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype(np.uint16) * 257)
    )
    content_type = "image/png" if format == "PNG" else "image/jpeg"
    status, body = call(
        app_module, image_event(encode(image, format), content_type), lambda_context
    )
    # Decoded in every mode and size, then judged: random pixels are not a chest X-ray.
    assert status == 200 or (status, body["reason"]) == (422, "not_a_chest_xray"), body
