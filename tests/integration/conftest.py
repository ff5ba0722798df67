"""A real ONNX model for the endpoint tests, exported by the pipeline's own code."""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.local_server import start_server
from tests.integration.pipeline_repo import STAGES, make_slice, run, set_params, stages_run

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
    from pneumonia.model import build_model

    keras.utils.set_random_seed(0)
    params = load_params(REPO_ROOT / "params.yaml").train.model_copy(
        update={"width": 8, "depth": 2}
    )
    return build_model(IMAGE_SIZE, params)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, keras_model) -> Path:
    """models/model.onnx + models/model.json as export_onnx writes them."""
    from pneumonia.imaging import PreprocessConfig
    from pneumonia.metadata import ModelMetadata, model_version
    from pneumonia.onnx_export import convert

    folder = tmp_path_factory.mktemp("model")
    onnx_bytes = convert(keras_model, IMAGE_SIZE, opset=17)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    metadata = ModelMetadata(
        model_version=model_version(onnx_bytes),
        threshold=0.5,
        labels=("NORMAL", "PNEUMONIA"),
        input_name="image",
        output_name="probability_pneumonia",
        preprocessing=PreprocessConfig(image_size=IMAGE_SIZE, intensity="clahe"),
        training_data_sha256=hashlib.sha256(b"test").hexdigest(),
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
    from pneumonia.imaging import prepare_image

    batch = np.stack([prepare_image(image, metadata.preprocessing) for image in images])
    return keras_model.predict(batch.astype(np.float32), verbose=0).reshape(-1)
