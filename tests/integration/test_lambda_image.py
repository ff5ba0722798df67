"""The Lambda image without Docker: its task root, as the Dockerfile lays it out, run in a fresh
virtual environment holding only lambda/requirements.txt (no TensorFlow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import probabilities_from_keras

pytestmark = pytest.mark.integration

RUN_HANDLER = r"""
import base64, importlib, importlib.util, json, sys
assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is importable"
assert importlib.util.find_spec("keras") is None, "Keras is importable"
module, _, function = sys.argv[1].rpartition(".")  # the image's CMD, from the task root
lambda_handler = getattr(importlib.import_module(module), function)
event = json.load(open(sys.argv[2]))

class Context:
    function_name = "pneumonia-endpoint"; memory_limit_in_mb = 1769; aws_request_id = "req-1"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:pneumonia-endpoint"

results = []
for path in sys.argv[3:]:
    event["body"] = base64.b64encode(open(path, "rb").read()).decode()
    response = lambda_handler(event, Context())
    results.append({"status": response["statusCode"], **json.loads(response["body"])})
print("RESULTS " + json.dumps(results))
"""


def dockerfile() -> str:
    return (REPO_ROOT / "lambda" / "Dockerfile").read_text()


def names_a_reason_head(model_dir: Path) -> bool:
    """Whether the model.json in `model_dir` names a reason.onnx (the pipeline's always does)."""
    return json.loads((model_dir / "model.json").read_text()).get("reason") is not None


def test_the_image_copies_the_reason_head_the_pipeline_writes():
    copies = [line.split()[1:-1] for line in dockerfile().splitlines() if line.startswith("COPY ")]
    assert any("models/reason.onnx" in sources for sources in copies)


def task_root_from_dockerfile(destination: Path, model_dir: Path) -> Path:
    """Copy what each COPY line of lambda/Dockerfile copies, files and package folders (models/
    from `model_dir`)."""
    for line in dockerfile().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, target = line.split()[1:]
        target_dir = destination / target.replace("${LAMBDA_TASK_ROOT}", "").strip("/")
        target_dir.mkdir(parents=True, exist_ok=True)
        for source in sources:
            origin = (
                model_dir / Path(source).name
                if source.startswith("models/")
                else (REPO_ROOT / source)
            )
            if source == "models/reason.onnx" and not names_a_reason_head(model_dir):
                continue  # a test model without the reason head: nothing to copy, none read
            if source.endswith("/"):  # a package folder, as Docker copies it (no bytecode)
                shutil.copytree(
                    origin,
                    target_dir,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
            else:
                shutil.copyfile(origin, target_dir / Path(source).name)
    return destination


WHEELHOUSE = REPO_ROOT / ".wheelhouse"  # made by `make install`


@pytest.fixture(scope="module")
def lambda_venv(tmp_path_factory) -> Path:
    """A fresh venv with exactly lambda/requirements.txt, from the local wheelhouse: offline."""
    if not any(WHEELHOUSE.glob("onnxruntime-*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run `make install` (it downloads them once)")
    venv = tmp_path_factory.mktemp("lambda-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    requirements = str(REPO_ROOT / "lambda" / "requirements.txt")
    offline = ["--no-index", "--find-links", str(WHEELHOUSE)]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *offline, "-r", requirements],
        check=True,
        timeout=900,
    )
    return python


def test_the_image_serves_real_images_without_tensorflow(
    lambda_venv, tmp_path, model_dir, sample_data, keras_model, app_module
):
    root = task_root_from_dockerfile(tmp_path / "task", model_dir)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    # The serving library by package folder, the model and the pins: no stage, no model or
    # evaluation package (TensorFlow), no ops.
    serving_packages = ("images", "decision", "serving")
    assert files == {
        "model/model.json",
        "model/model.onnx",
        "requirements.txt",
        "pneumonia/__init__.py",
        *(
            path.relative_to(REPO_ROOT).as_posix()
            for package in serving_packages
            for path in (REPO_ROOT / "pneumonia" / package).glob("*.py")
        ),
        "pneumonia/serving/page.html",  # GET /: the page, read at the first request
    }
    command = re.search(r'^CMD \["([\w.]+)"\]$', dockerfile(), re.M).group(1)
    images = (
        sorted((sample_data / "train" / "PNEUMONIA").iterdir())[:2]
        + sorted((sample_data / "train" / "NORMAL").iterdir())[:2]
    )
    # The same picture as DICOM, uncompressed and JPEG lossless (decoded by GDCM in its child
    # process): pydicom and its decoders work in the image's environment.
    from pneumonia.images.decode import decode_gray
    from tests.unit.test_dicom import gdcm_transcode, make_dicom

    pixels = decode_gray(images[0].read_bytes())
    # No birth date: GDCM stamps today as the content date, and 1901 would make an adult.
    dicom = make_dicom(pixels, WindowCenter=128, WindowWidth=256, PatientBirthDate="")
    for name, data in (
        ("plain.dcm", dicom),
        ("lossless.dcm", gdcm_transcode(dicom, "JPEGLosslessProcess14_1", tmp_path)),
    ):
        (tmp_path / name).write_bytes(data)
        images.append(tmp_path / name)
    event = REPO_ROOT / "tests" / "events" / "predict_binary.json"
    result = subprocess.run(
        [str(lambda_venv), "-c", RUN_HANDLER, command, str(event), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={
            "LAMBDA_TASK_ROOT": str(root),  # as the runtime sets it: the model is in ./model
            "PYTHONPATH": str(root),  # the runtime's import path
            "POWERTOOLS_TRACE_DISABLED": "true",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(re.search(r"^RESULTS (.*)$", result.stdout, re.M).group(1))
    assert [r["status"] for r in results] == [200] * 6, results
    expected = probabilities_from_keras(
        keras_model, [p.read_bytes() for p in images], app_module.MODEL.metadata
    )
    np.testing.assert_allclose([r["probability_pneumonia"] for r in results], expected, atol=1e-5)


def test_the_scoring_handler_loads_in_the_images_environment(lambda_venv, tmp_path, model_dir):
    # template.yaml's ScoreFunction runs the same image with this handler: its imports
    # (boto3, Powertools' batch and idempotency utilities) and the model must load there.
    root = task_root_from_dockerfile(tmp_path / "task", model_dir)
    check = (
        "import importlib.util; "
        "assert importlib.util.find_spec('tensorflow') is None; "
        "from pneumonia.serving import fanout; "
        "print('VERSION', fanout.MODEL.metadata.model_version, callable(fanout.lambda_handler))"
    )
    result = subprocess.run(
        [str(lambda_venv), "-c", check],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={
            "LAMBDA_TASK_ROOT": str(root),
            "PYTHONPATH": str(root),
            "AWS_DEFAULT_REGION": "eu-west-1",
            "IDEMPOTENCY_TABLE": "answers",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = json.loads((model_dir / "model.json").read_text())["model_version"]
    assert f"VERSION {version} True" in result.stdout


def in_image_venv(python: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in the image's venv, from the repository, nothing else on PATH."""
    return subprocess.run(
        [str(python), "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_batch_scoring_runs_with_the_images_pins_alone(
    lambda_venv, tmp_path, model_dir, sample_data
):
    # python -m pneumonia.batch in a venv of lambda/requirements.txt (no TensorFlow, no dev
    # extras), from the repository: what a site runs on a backlog without the pipeline.
    folder = tmp_path / "backlog"
    folder.mkdir()
    for path in sorted((sample_data / "train" / "NORMAL").iterdir())[:3]:
        shutil.copyfile(path, folder / path.name)
    output = tmp_path / "rows.jsonl"
    result = in_image_venv(
        lambda_venv,
        *("pneumonia.batch", str(folder), "--output", str(output)),
        *("--model-dir", str(model_dir), "--workers", "1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok"]


def test_a_sites_recalibration_runs_with_the_images_pins_alone(
    lambda_venv, tmp_path, repo, sample_data
):
    # python -m pneumonia.recalibrate in a venv of lambda/requirements.txt (no scikit-learn,
    # no TensorFlow, no PyYAML): what a hospital's data team runs beside the endpoint.
    output = tmp_path / "site"
    result = in_image_venv(
        lambda_venv,
        *("pneumonia.recalibrate", str(sample_data / "train"), "--output", str(output)),
        *("--model-dir", str(repo / "models"), "--site", "children-north", "--bootstrap", "100"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((output / "model.json").read_text())
    assert written["site"] == "children-north" and written["recalibration"]["scale"] > 0
    assert (output / "model.onnx").read_bytes() == (repo / "models/model.onnx").read_bytes()


INVOKE = r"""
import importlib, json, sys
module, _, function = sys.argv[1].rpartition(".")
lambda_handler = getattr(importlib.import_module(module), function)

class Context:
    function_name = "pneumonia-endpoint"; memory_limit_in_mb = 1769; aws_request_id = "req-2"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:pneumonia-endpoint"

sys.stdout.write("PAYLOAD " + json.dumps(lambda_handler(json.load(sys.stdin), Context())) + "\n")
"""


class ImageLambda:
    """lambda.invoke as the Lambda service answers it, each call the image's CMD in the
    image's virtual environment and task root (what the runtime would run)."""

    def __init__(self, python: Path, root: Path) -> None:
        self.python, self.root, self.calls = python, root, []

    def invoke(self, FunctionName: str, Qualifier: str, Payload: bytes) -> dict:
        import io

        self.calls.append((FunctionName, Qualifier))
        command = re.search(r'^CMD \["([\w.]+)"\]$', dockerfile(), re.M).group(1)
        result = subprocess.run(
            [str(self.python), "-c", INVOKE, command],
            input=Payload,
            capture_output=True,
            timeout=300,
            cwd=self.root,
            env={
                "LAMBDA_TASK_ROOT": str(self.root),
                "PYTHONPATH": str(self.root),
                "POWERTOOLS_TRACE_DISABLED": "true",
                "PATH": "/usr/bin:/bin",
            },
        )
        assert result.returncode == 0, result.stderr[-3000:]
        payload = re.search(rb"^PAYLOAD (.*)$", result.stdout, re.M).group(1)
        return {"StatusCode": 200, "Payload": io.BytesIO(payload)}


def test_the_deploys_smoke_test_passes_against_the_real_handler_in_the_image(
    lambda_venv, tmp_path, model_dir
):
    import importlib.util

    spec = importlib.util.spec_from_file_location("smoke", REPO_ROOT / "lambda" / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    root = task_root_from_dockerfile(tmp_path / "task", model_dir)
    version = json.loads((model_dir / "model.json").read_text())["model_version"]
    client = ImageLambda(lambda_venv, root)
    image = REPO_ROOT / "tests" / "events" / "smoke.jpeg"
    send = smoke.invoking("pneumonia-endpoint", "7", client)
    assert smoke.smoke(send, version, image) == []
    assert client.calls and set(client.calls) == {("pneumonia-endpoint", "7")}
    # And it fails when the version it expects is not the one that answers.
    assert smoke.smoke(send, "sha256-000000000000", image) != []
