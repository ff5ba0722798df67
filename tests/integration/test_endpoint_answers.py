"""What the endpoint answers beyond the label: decision, explanation, "not a chest X-ray",
DICOM in, and no tag value out. The real handler, real API Gateway event shapes, the
served graph exported by the pipeline's own code (tests/integration/conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import reexported
from tests.integration.test_endpoint import call, event, image_event, json_event
from tests.unit.test_dicom import SENTINELS as PLANTED
from tests.unit.test_dicom import make_dicom

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clear_metrics")]
SENTINELS = tuple(PLANTED.values())  # patient name, id, birth date, accession, institution


@pytest.fixture
def access_log(app_module):
    """The endpoint's structured log lines (Powertools' JSON formatter, extras included)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(app_module.logger.registered_formatter)
    app_module.logger.addHandler(handler)
    yield stream
    app_module.logger.removeHandler(handler)


@pytest.fixture
def xray(sample_data) -> np.ndarray:
    """A real chest X-ray's gray pixels, cropped to 4:5 (portrait, as films are)."""
    from pneumonia.images.decode import decode_gray

    path = sorted((sample_data / "train" / "PNEUMONIA").iterdir())[0]
    gray = decode_gray(path.read_bytes())
    return np.ascontiguousarray(gray[:, 11:-11])  # 224 x 202: aspect 0.90


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray, **tags) -> bytes:
    """A DX frontal DICOM of 8-bit pixels with an identity window (128/256), carrying the
    planted patient tags (tests.unit.test_dicom.make_dicom)."""
    return make_dicom(
        pixels, **{"WindowCenter": 128, "WindowWidth": 256, "ViewPosition": "PA", **tags}
    )


def test_the_answer_carries_a_decision_and_a_calibrated_probability(
    app_module, lambda_context, xray
):
    status, body = call(app_module, image_event(png_bytes(xray), "image/png"), lambda_context)
    assert status == 200, body
    metadata = app_module.MODEL.metadata
    p = body["probability_pneumonia"]
    assert body["predicted_label"] == metadata.label_for(p)
    assert body["decision"] == metadata.decision_for(p)
    band = metadata.decision_band
    expected = "NORMAL" if p < band.low else "PNEUMONIA" if p >= band.high else "INDETERMINATE"
    assert body["decision"] == expected
    assert body.get("explanation") is None  # only when asked for


@pytest.mark.parametrize("how", ["query", "json"])
def test_explain_adds_a_heatmap_with_the_images_aspect_ratio(app_module, lambda_context, xray, how):
    data = png_bytes(xray)
    if how == "query":
        request = image_event(data, "image/png")
        request["queryStringParameters"] = {"explain": "true"}
        request["multiValueQueryStringParameters"] = {"explain": ["true"]}
    else:
        request = json_event({"image": base64.b64encode(data).decode(), "explain": True})
    status, body = call(app_module, request, lambda_context)
    assert status == 200, body
    heat = cv2.imdecode(
        np.frombuffer(base64.b64decode(body["explanation"]["heatmap_png"]), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert heat.dtype == np.uint8 and heat.ndim == 2  # 8-bit grayscale
    assert heat.shape == xray.shape  # under 512 px: the image's own size and aspect ratio
    # The same image without explain: the same numbers, no explanation.
    plain = call(app_module, image_event(data, "image/png"), lambda_context)[1]
    assert plain["probability_pneumonia"] == body["probability_pneumonia"]
    assert plain.get("explanation") is None


def test_the_heatmap_is_the_graphs_activation_map(app_module, lambda_context, xray):
    """The PNG is the ReLU of the graph's `cam` output, max-normalised, stretched to the image."""
    from pneumonia.serving.classifier import prepare

    model = app_module.MODEL
    _, pixels = prepare(png_bytes(xray), model.metadata.preprocessing)
    (cam,) = model.session.run(
        [model.metadata.outputs.cam], {"image": pixels[np.newaxis].astype(np.float32)}
    )
    request = json_event({"image": base64.b64encode(png_bytes(xray)).decode(), "explain": True})
    body = call(app_module, request, lambda_context)[1]
    sent = cv2.imdecode(
        np.frombuffer(base64.b64decode(body["explanation"]["heatmap_png"]), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    # By hand (docs/serving.md): ReLU, divided by the maximum, bilinear to the image's size
    # (under 512 px a side here), times 255, rounded.
    height, width = xray.shape
    assert max(height, width) <= 512
    positive = np.maximum(cam[0].astype(np.float32), 0)
    stretched = cv2.resize(
        positive / positive.max(), (width, height), interpolation=cv2.INTER_LINEAR
    )
    expected = np.clip(np.rint(stretched * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(sent, expected)


def test_explain_must_be_a_boolean(app_module, lambda_context, xray):
    request = json_event({"image": base64.b64encode(png_bytes(xray)).decode(), "explain": "yes"})
    status, body = call(app_module, request, lambda_context)
    assert (status, body["reason"]) == (400, "invalid_request")
    request = image_event(png_bytes(xray), "image/png")
    request["queryStringParameters"] = {"explain": "maybe"}
    assert call(app_module, request, lambda_context)[0] == 400


def colour_photo() -> bytes:
    rng = np.random.default_rng(0)
    rgb = np.zeros((240, 240, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 240)[None, :]
    rgb[..., 1] = np.linspace(255, 0, 240)[:, None]
    rgb[..., 2] = rng.integers(0, 255, (240, 240))
    return png_bytes(rgb)


@pytest.mark.parametrize(
    "payload, why",
    [
        (colour_photo(), "colour"),
        (png_bytes(np.full((300, 300), 128, np.uint8)), "uniform"),
        (png_bytes(np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (200, 1))), "aspect"),
    ],
    ids=["colour photograph", "blank", "a long strip"],
)
def test_what_is_not_a_chest_xray_gets_422_and_a_metric(
    app_module, lambda_context, payload, why, capsys
):
    status, body = call(app_module, image_event(payload, "image/png"), lambda_context)
    assert status == 422
    assert body["reason"] == "not_a_chest_xray"
    assert why in body["error"]
    emitted = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    assert any(
        record.get("NotAChestXray") == [1.0] or record.get("NotAChestXray") == 1.0
        for record in emitted
    )


REFUSING_CHILD = """
import base64, json, sys
from pneumonia.serving import app
from pneumonia.serving.local import LocalContext
data = open(sys.argv[1], "rb").read()
event = json.load(open("tests/events/predict_binary.json"))
event["body"] = base64.b64encode(data).decode()
event["headers"]["Content-Type"] = "image/png"
event["multiValueHeaders"]["Content-Type"] = ["image/png"]
response = app.lambda_handler(event, LocalContext(aws_request_id="1"))
print("RESULT", response["statusCode"], response["body"])
"""


def test_the_learned_check_refuses_above_its_threshold(model_dir, tmp_path, xray):
    """The same graph with the gate's threshold below every distance: an X-ray is refused
    by the learned check (the threshold is read from model.json, the distance from the graph)."""
    strict = tmp_path / "model"
    shutil.copytree(model_dir, strict)
    reexported(strict, lambda fields: fields["ood_gate"].update(threshold=1e-6))
    (tmp_path / "xray.png").write_bytes(png_bytes(xray))
    result = subprocess.run(
        [sys.executable, "-c", REFUSING_CHILD, str(tmp_path / "xray.png")],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "MODEL_DIR": str(strict), "POWERTOOLS_TRACE_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    _, status, body = line.split(" ", 2)
    assert status == "422", result.stderr[-2000:]
    assert json.loads(body)["reason"] == "not_a_chest_xray"
    assert "feature distance" in json.loads(body)["error"]


def test_a_dicom_gets_the_same_answer_as_the_png_of_its_pixels(app_module, lambda_context, xray):
    png_answer = call(app_module, image_event(png_bytes(xray), "image/png"), lambda_context)[1]
    dicom = dicom_bytes(xray)
    raw = call(app_module, image_event(dicom, "application/dicom"), lambda_context)
    assert raw[0] == 200, raw[1]
    as_json = call(
        app_module, json_event({"image": base64.b64encode(dicom).decode()}), lambda_context
    )
    assert as_json[0] == 200, as_json[1]
    for answer in (raw[1], as_json[1]):
        assert abs(answer["probability_pneumonia"] - png_answer["probability_pneumonia"]) <= 1e-4
        assert answer["decision"] == png_answer["decision"]


@pytest.mark.parametrize(
    "tags, status, reason",
    [
        ({"Modality": "CT"}, 422, "wrong_modality"),
        ({"ViewPosition": "LL"}, 422, "lateral_view"),
        ({"NumberOfFrames": 2}, 422, "multi_frame"),
        ({"PatientAge": "045Y"}, 422, "outside_training_population"),
        # No PatientAge: the exam date less the birth date (1901, a sentinel).
        ({"StudyDate": "20240110"}, 422, "outside_training_population"),
    ],
    ids=["CT", "lateral", "two frames", "adult by PatientAge", "adult by dates"],
)
def test_dicom_refusals_name_the_reason_and_no_tag_value_leaks(
    app_module, lambda_context, xray, tags, status, reason, capsys, caplog, access_log
):
    caplog.set_level(logging.DEBUG)
    pixels = np.concatenate([xray, xray]) if "NumberOfFrames" in tags else xray
    if "NumberOfFrames" in tags:
        tags = {**tags, "Rows": xray.shape[0]}
    request = image_event(dicom_bytes(pixels, **tags), "application/dicom")
    answer_status, body = call(app_module, request, lambda_context)
    assert (answer_status, body["reason"]) == (status, reason)
    captured = capsys.readouterr()
    logged = access_log.getvalue()
    assert '"message":"rejected"' in logged
    everything = json.dumps(body) + captured.out + captured.err + caplog.text + logged
    for sentinel in SENTINELS:
        assert sentinel not in everything
    for value in tags.values():  # the age, or the dates it came from, never echoed
        if isinstance(value, str) and value not in ("CT", "LL"):
            assert value not in everything and value.lstrip("0").rstrip("Y") not in body["error"]


def test_an_accepted_dicom_leaves_no_tag_value_in_the_logs(
    app_module, lambda_context, xray, capsys, caplog, access_log
):
    caplog.set_level(logging.DEBUG)
    request = image_event(dicom_bytes(xray), "application/dicom")
    request["queryStringParameters"] = {"explain": "true"}
    status, body = call(app_module, request, lambda_context)
    assert status == 200
    captured = capsys.readouterr()
    logged = access_log.getvalue()
    everything = json.dumps(body) + captured.out + captured.err + caplog.text + logged
    assert '"message":"request"' in logged  # the access log line was written and searched
    for sentinel in SENTINELS:
        assert sentinel not in everything


def test_an_undecodable_transfer_syntax_is_415_and_named(app_module, lambda_context, xray):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(xray)))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 64])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    status, body = call(
        app_module, image_event(buffer.getvalue(), "application/dicom"), lambda_context
    )
    assert (status, body["reason"]) == (415, "unsupported_transfer_syntax")
    assert "1.2.840.10008.1.2.4.100" in body["error"]


def test_every_error_answer_has_a_reason(app_module, lambda_context):
    for request in (
        json_event("{not json"),
        json_event({"image": ""}),
        event("predict_json", path="/nowhere", resource="/nowhere"),
    ):
        status, body = call(app_module, request, lambda_context)
        assert 400 <= status < 500
        assert isinstance(body.get("reason"), str) and body["reason"]


def test_a_twelve_bit_dicom_windowed_back_to_the_picture_gets_the_same_answer(
    app_module, lambda_context, xray
):
    """12-bit stored values (x16, with an offset undone by the rescale intercept) and a
    window spanning the picture: within 0.03 of the PNG's probability."""
    stored = xray.astype(np.uint16) * 16 + 8  # 12 bits: 8..4088
    dicom = make_dicom(
        stored,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=2048 - 1000,
        WindowWidth=4096,
    )
    png_answer = call(app_module, image_event(png_bytes(xray), "image/png"), lambda_context)[1]
    status, body = call(app_module, image_event(dicom, "application/dicom"), lambda_context)
    assert status == 200, body
    assert abs(body["probability_pneumonia"] - png_answer["probability_pneumonia"]) <= 0.03


def emitted_metrics(out: str) -> dict:
    """The CloudWatch embedded-metric blobs printed to stdout, merged by metric name."""
    merged: dict = {}
    for line in out.splitlines():
        if '"_aws"' in line:
            record = json.loads(line)
            names = [m["Name"] for d in record["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
            merged |= {name: record[name] for name in names}
    return merged


def test_each_request_emits_its_probability_decision_and_latency_as_metrics(
    app_module, lambda_context, xray, capsys
):
    data = png_bytes(xray)
    status, body = call(app_module, image_event(data, "image/png"), lambda_context)
    assert status == 200
    out = capsys.readouterr().out
    emitted = emitted_metrics(out)
    assert emitted["ProbabilityPneumonia"] in (
        body["probability_pneumonia"],
        [body["probability_pneumonia"]],
    )
    assert emitted[f"Decision{body['decision'].title()}"] in (1.0, [1.0])
    assert "Latency" in emitted
    assert base64.b64encode(data)[:40].decode() not in out
