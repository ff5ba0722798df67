"""Command-line flags that need a store or a server: `pneumonia.registry fetch --version /
--alias` against a real MLflow SQLite store, `pneumonia.dataset --no-fallback` in a fresh
clone with a valid fallback folder in place, and `pneumonia.batch SOURCE --endpoint-url` with
moto's S3 on loopback named only on the command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration import test_dataset
from tests.integration.conftest import reexported
from tests.integration.test_batch import read_rows
from tests.integration.test_dataset import SOURCE, files, fresh_clone, sh

pytestmark = pytest.mark.integration

# test_dataset's fixture: a repository with the dataset DVC-tracked, its empty local remote,
# and a copy of the data elsewhere.
origin = test_dataset.origin

# ---------------------------------------------------------------- registry fetch


@pytest.fixture
def registry(tmp_path, monkeypatch, model_dir) -> dict[str, Path]:
    """An MLflow SQLite store in tmp_path with two registered versions: 1, the test model;
    2, the same graph exported with threshold 0.52 (another model.json, another version).
    Alias `champion` on version 1. The folders registered, by version number."""
    import mlflow.tracking._tracking_service.utils as tracking_uri
    from mlflow import MlflowClient
    from mlflow.tracking import fluent

    from pneumonia import tracking
    from pneumonia.decision.contract import ModelMetadata
    from pneumonia.release.registry import REGISTERED_MODEL, register

    monkeypatch.chdir(tmp_path)  # configure() keeps the artifacts beside the store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it
    monkeypatch.setattr(tracking_uri, "_tracking_uri", None)  # MLflow's globals, put back
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    folders = {
        "1": Path(shutil.copytree(model_dir, tmp_path / "export-1")),
        "2": Path(shutil.copytree(model_dir, tmp_path / "export-2")),
    }
    reexported(folders["2"], lambda fields: fields.update(threshold=0.52))
    tracking.configure()
    for number, folder in folders.items():
        with tracking.start_run("export_onnx"):
            metadata = ModelMetadata.load(folder / "model.json")
            assert register(folder / "model.onnx", folder / "model.json", metadata) == number
    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, "champion", "1")
    return folders


def model_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("model.onnx", "model.json")}


def test_fetch_takes_the_version_or_the_alias_asked_for(registry, tmp_path, capsys):
    from mlflow import MlflowClient

    from pneumonia.release.registry import REGISTERED_MODEL, main

    assert model_files(registry["1"]) != model_files(registry["2"])
    for number in ("1", "2"):
        output = tmp_path / f"version-{number}"
        assert main(["fetch", "--version", number, "--output", str(output)]) == 0
        assert model_files(output) == model_files(registry[number])
    assert main(["fetch", "--alias", "champion", "--output", str(tmp_path / "champion")]) == 0
    assert model_files(tmp_path / "champion") == model_files(registry["1"])
    # the alias moved: the same command fetches the other version
    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, "champion", "2")
    assert main(["fetch", "--alias", "champion", "--output", str(tmp_path / "moved")]) == 0
    assert model_files(tmp_path / "moved") == model_files(registry["2"])
    version = {
        n: json.loads((f / "model.json").read_text())["model_version"] for n, f in registry.items()
    }
    assert capsys.readouterr().out.splitlines() == [
        f"pneumonia-classifier: {version['1']} -> {tmp_path / 'version-1'}",
        f"pneumonia-classifier: {version['2']} -> {tmp_path / 'version-2'}",
        f"pneumonia-classifier: {version['1']} -> {tmp_path / 'champion'}",
        f"pneumonia-classifier: {version['2']} -> {tmp_path / 'moved'}",
    ]


def test_version_and_alias_together_are_refused(registry, tmp_path, capsys):
    from pneumonia.release.registry import main

    output = tmp_path / "both"
    with pytest.raises(SystemExit) as exited:
        main(["fetch", "--version", "2", "--alias", "champion", "--output", str(output)])
    assert exited.value.code == 2
    assert "argument --alias: not allowed with argument --version" in capsys.readouterr().err
    assert not output.exists()


# ---------------------------------------------------------------- dataset --no-fallback


def test_no_fallback_fails_with_a_valid_fallback_folder_in_place(origin, tmp_path):
    repo, remote, copy = origin
    clone = fresh_clone(repo, tmp_path / "runner" / "clone")
    # GIVEN an empty remote, and the dataset unmodified at the default fallback
    # (../shared/data/chest-xray-pneumonia from the clone) and at an explicit one
    shutil.copytree(copy, tmp_path / "runner" / "shared" / "data" / "chest-xray-pneumonia")
    for given in ([], ["--fallback", str(copy)]):
        # WHEN the dataset is asked for with --no-fallback
        result = sh(clone, sys.executable, "-m", "pneumonia.dataset", "--no-fallback", *given)
        # THEN it fails naming the remote, and no folder was copied in
        assert result.returncode == 1, result.stderr
        assert "nor at (no fallback folder given)" in result.stderr
        assert str(remote) in result.stderr
        assert not (clone / SOURCE).exists()
        assert not sh(clone, "git", "status", "--porcelain").stdout.strip()
    # AND without it the default folder is taken: it was a valid fallback all along
    result = sh(clone, sys.executable, "-m", "pneumonia.dataset")
    assert result.returncode == 0, result.stderr
    assert "verified against the committed hash" in result.stderr
    assert files(clone / SOURCE) == files(copy)


# ---------------------------------------------------------------- batch --endpoint-url


def test_an_s3_prefix_is_read_from_the_endpoint_url_on_the_command_line(
    tmp_path, model_dir, s3_server, sample_data
):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="flag-backlog")
    normal = sorted((sample_data / "train" / "NORMAL").iterdir())
    objects = {f"2026/{path.name}": path.read_bytes() for path in normal[:3]}
    objects["2026/notes.txt"] = b"radiology report, not an image\n"
    for key, data in {**objects, "2025/older.jpeg": normal[3].read_bytes()}.items():
        client.put_object(Bucket="flag-backlog", Key=key, Body=data)
    output = tmp_path / "predictions.jsonl"
    command = [sys.executable, "-m", "pneumonia.batch", "s3://flag-backlog/2026/"]
    command += ["--output", str(output), "--model-dir", str(model_dir), "--workers", "1"]
    command += ["--endpoint-url", s3_server]
    # The credentials stay in the environment (the s3_server fixture's); no endpoint does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "files": 4,
        "scored": 3,
        "errors": 1,
        "skipped": 0,
        "output": str(output),
    }
    rows = {row["file"]: row for row in read_rows(output)}
    assert {key: row["sha256"] for key, row in rows.items()} == {
        key: hashlib.sha256(data).hexdigest() for key, data in objects.items()
    }
    assert rows["2026/notes.txt"]["error"] == "the bytes are not a recognised image"
    assert [rows[key]["status"] for key in sorted(objects) if key.endswith(".jpeg")] == ["ok"] * 3
