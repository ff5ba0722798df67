"""A real ONNX model for the endpoint tests, exported by the pipeline's own code."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.local_server import start_server
from tests.integration.pipeline_repo import (
    STAGES,
    make_slice,
    run,
    set_params,
    stages_run,
    thin_external,
    thin_kept,
)

IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def repo(tmp_path_factory, sample_data) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    repo = root / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    assert thin_external(repo) >= 90  # half of each kind: 2 of the 3 laterals
    assert thin_kept(repo) == 117  # half of CheXpert's statistics: 101 frontal, 16 lateral
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    # The slice takes the dataset's place: DVC-tracked, as data/source is in the repository.
    make_slice(sample_data, repo / "data" / "source" / "chest-xray-pneumonia")
    run(repo, "dvc", "add", "data/source/chest-xray-pneumonia")
    set_params(
        repo,
        **{
            "ingest.val_fraction": 0.2,
            "ingest.test_fraction": 0.2,
            "preprocess.image_size": 64,
            # The from-scratch network: a pipeline of EfficientNet-Lite0 costs the suite about
            # 8 minutes more; tests/integration/test_pretrained.py covers that network.
            "train.architecture": "resnet",
            "train.width": 16,
            "train.depth": 2,
            "train.batch_size": 16,
            "train.epochs": 1,
            "evaluate.bootstrap_samples": 200,
        },
    )
    for command in (
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "slice"],
    ):
        subprocess.run(command, cwd=repo, check=True)
    result = run(repo, "dvc", "repro")
    assert stages_run(result.stdout) == STAGES
    return repo


@pytest.fixture
def own_repo(repo, tmp_path) -> Path:
    """A private copy of the reproduced slice repository, for a test that changes params,
    commits or runs experiments: the shared `repo` stays as the first `dvc repro` left it."""
    return Path(shutil.copytree(repo, tmp_path / "repo", symlinks=True))


@pytest.fixture(scope="session")
def keras_model():
    """A small seeded network from pneumonia.model (untrained: the tests check plumbing)."""
    import keras

    from pneumonia.config import load_params
    from pneumonia.model.network import build_model

    keras.utils.set_random_seed(0)
    params = load_params(REPO_ROOT / "params.yaml").train.model_copy(
        update={"architecture": "resnet", "width": 8, "depth": 2}
    )
    return build_model(IMAGE_SIZE, params)


# The test model's gate refuses features this many times farther than the farthest of the
# committed sample: the untrained network's distances say little, and the endpoint tests send
# synthetic gray images that must reach the model. Detection is measured by evaluate.
GATE_MARGIN = 3.0


def reexported(folder: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite folder/model.json as an export with `edit` applied to its fields would write
    it: with the version those fields and the graph give (docs/serving.md#model-version)."""
    from pneumonia.decision.contract import ModelMetadata

    fields = json.loads((folder / "model.json").read_text())
    edit(fields)
    fields.pop("model_version")
    fields["labels"] = tuple(fields["labels"])
    metadata = ModelMetadata.for_graph((folder / "model.onnx").read_bytes(), fields)
    (folder / "model.json").write_text(metadata.to_json())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, keras_model, sample_data) -> Path:
    """models/model.onnx + models/model.json as export_onnx writes them: the served graph
    (calibration, gate distance, activation map) and its metadata."""
    config, _, gate = _sample_gate(keras_model, sample_data)
    folder = tmp_path_factory.mktemp("model")
    return write_test_model(folder, keras_model, config, gate, max_patient_age_years=17)


@pytest.fixture(scope="session")
def int8_model_dir(tmp_path_factory, keras_model, sample_data) -> Path:
    """model_dir's model with its network in int8, as export_onnx serves it by default
    (activation ranges from 64 of the sample's images)."""
    from pneumonia.release.quantize import calibration_images

    config, pixels, gate = _sample_gate(keras_model, sample_data)
    folder = tmp_path_factory.mktemp("int8-model")
    images = calibration_images(pixels, 64)
    return write_test_model(
        folder, keras_model, config, gate, int8_images=images, max_patient_age_years=17
    )


def _sample_gate(keras_model, sample_data):
    """(the preprocessing, the sample's prepared images, a gate fitted on their features)."""
    from pneumonia.decision.gate import fit_feature_model
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.prepare import prepare_image
    from pneumonia.model.network import with_explanations

    config = PreprocessConfig(
        image_size=IMAGE_SIZE, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    files = sorted(sample_data.rglob("*.jpeg"))
    pixels = np.stack([prepare_image(path.read_bytes(), config) for path in files])
    _, features, _ = with_explanations(keras_model).predict(pixels.astype(np.float32), verbose=0)
    # In a quarter of the features' principal components plus the residual, as evaluate fits
    # it (evaluate.gate_components), so that the served graph's residual nodes are exercised.
    fitted = fit_feature_model(features, components=features.shape[1] // 4)
    gate = dataclasses.replace(
        fitted, threshold=GATE_MARGIN * fitted.distance(features).max(), false_rejection_rate=0.02
    )
    return config, pixels, gate


def write_test_model(
    folder: Path, keras_model, config, gate, head=None, int8_images=None, **extra
) -> Path:
    """model.onnx (with the intended-use head when given; its network in int8, calibrated on
    `int8_images`, when given) and its model.json in `folder`, as export_onnx writes them:
    threshold 0.5, band [0.45, 0.55), identity calibration."""
    from pneumonia.decision.calibration import Calibration
    from pneumonia.decision.contract import ModelMetadata
    from pneumonia.release.export import OUTPUTS, SERVED, export_for_serving, served_network

    quantize = "none" if int8_images is None else "int8"
    network = served_network(keras_model, IMAGE_SIZE, 17, quantize, int8_images)
    onnx_bytes = export_for_serving(network, Calibration(1.0, 0.0), gate, head)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    metadata = ModelMetadata.for_graph(
        onnx_bytes,
        {
            "threshold": 0.5,
            "labels": ("NORMAL", "PNEUMONIA"),
            "input_name": "image",
            "outputs": {k: OUTPUTS[k] for k in SERVED if k != "use" or head is not None},
            "preprocessing": config,
            "calibration": {"method": "platt", "scale": 1.0, "shift": 0.0},
            "decision_band": {"low": 0.45, "high": 0.55, "error_rate": 0.05},
            "ood_gate": {"threshold": gate.threshold, "false_rejection_rate": 0.02},
            "training_data_sha256": hashlib.sha256(b"test").hexdigest(),
            **extra,
        },
    )
    (folder / "model.json").write_text(metadata.to_json())
    return folder


@pytest.fixture(scope="session")
def app_module(model_dir):
    """pneumonia.serving.app imported as the Lambda runtime does, with MODEL_DIR set.

    The environment is set for the import only (the module reads it once, at cold start)
    and restored after it, so no other test sees it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODEL_DIR", str(model_dir))
        patch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        patch.setenv("POWERTOOLS_METRICS_NAMESPACE", "PneumoniaEndpointTests")
        module = importlib.import_module("pneumonia.serving.app")
    assert module.MODEL is not None, "the model did not load"
    return module


@pytest.fixture
def lambda_context(app_module):
    """A Lambda context for calling the handler in-process."""
    from pneumonia.serving.local import LocalContext

    return LocalContext(aws_request_id="52fdfc07-2182-154f-163f-5f0f9a621d72")


@pytest.fixture
def clear_metrics(app_module):
    """Drop the metrics a handler call left behind (Powertools keeps them globally)."""
    yield
    app_module.metrics.clear_metrics()


S3_CREDENTIALS = {  # the environment is the only place credentials come from
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's) on loopback, its URL; credentials in the
    environment while it runs."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in S3_CREDENTIALS.items():
            patch.setenv(key, value)
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def local_url(model_dir):
    """The local endpoint serving the test model over http on loopback, for every module."""
    process, url = start_server(model_dir)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def real_images(sample_data) -> list[bytes]:
    files = (
        sorted((sample_data / "train" / "NORMAL").iterdir())[:3]
        + sorted((sample_data / "train" / "PNEUMONIA").iterdir())[:3]
    )
    return [file.read_bytes() for file in files]


def probabilities_from_keras(keras_model, images: list[bytes], metadata) -> np.ndarray:
    from pneumonia.images.prepare import prepare_image

    batch = np.stack([prepare_image(image, metadata.preprocessing) for image in images])
    return keras_model.predict(batch.astype(np.float32), verbose=0).reshape(-1)
