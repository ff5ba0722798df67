"""The real `dvc repro` of all five stages on a small slice, in a temporary copy of the repository.

The slice: 150 real images of the default dataset plus four faulty files, 64 px,
a narrow network, 1 epoch. MLflow writes to a SQLite store inside the copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.images import encode, gradient

pytestmark = pytest.mark.integration

STAGES = ["ingest", "preprocess", "train", "evaluate", "export_onnx"]


def make_slice(shared_data: Path, destination: Path, per_label: dict[str, int]) -> Path:
    """Every k-th real image of each class, and four faulty files in train/NORMAL."""
    for label, count in per_label.items():
        files = sorted((shared_data / "train" / label).iterdir())
        folder = destination / "train" / label
        folder.mkdir(parents=True)
        for file in files[:: len(files) // count][:count]:
            shutil.copyfile(file, folder / file.name)
    normal = destination / "train" / "NORMAL"
    real = next(normal.iterdir()).read_bytes()
    (normal / "IM-9001-0001.jpeg").write_bytes(real[: len(real) // 2])  # corrupt (truncated)
    (normal / "IM-9002-0001.jpeg").write_bytes(b"")  # zero bytes
    (normal / "IM-9003-0001.jpeg").write_text("radiology report, not an image\n")
    (normal / "IM-9004-0001.jpeg").write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    return destination


def set_params(repo: Path, **changes) -> None:
    """Set dotted keys of params.yaml, e.g. set_params(repo, **{"train.epochs": 2})."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run(repo: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        tail = result.stdout[-3000:] + result.stderr[-3000:]
        pytest.fail(f"{' '.join(command)} failed:\n{tail}")
    return result


def pipeline_env(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, shared_data) -> Path:
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
    source = make_slice(shared_data, root / "source", {"NORMAL": 50, "PNEUMONIA": 100})
    set_params(
        repo,
        **{
            "ingest.source": str(source),
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
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "slice"],
    ):
        subprocess.run(command, cwd=repo, check=True)
    result = run(repo, "dvc", "repro")
    assert stages_run(result.stdout) == STAGES
    return repo


def test_ingest_quarantines_bad_files_accepts_the_png_and_reports(repo):
    report = json.loads((repo / "data/ingest_report.json").read_text())
    reasons = {row["file"].rsplit("/", 1)[-1]: row["reason"] for row in report["quarantined"]}
    assert reasons == {
        "IM-9001-0001.jpeg": "corrupt",
        "IM-9002-0001.jpeg": "empty",
        "IM-9003-0001.jpeg": "not_an_image",
    }
    for name in reasons:  # kept, not dropped
        assert (repo / "data/quarantine/train/NORMAL" / name).exists()
    manifest = pd.read_csv(repo / "data/manifest.csv")
    assert "train/NORMAL/IM-9004-0001.jpeg" in set(manifest["file"])  # the PNG named .jpeg
    assert report["files_found"] == 154
    assert report["images_accepted"] == len(manifest) == 151
    assert sum(sum(c.values()) for c in report["per_split"].values()) == 151
    assert list(manifest.columns) == [
        "file",
        "label",
        "patient_id",
        "split",
        "source_split",
        "sha256",
        "size_bytes",
        "width",
        "height",
    ]
    for row in manifest.itertuples():
        assert (repo / "data/raw" / row.file).stat().st_size == row.size_bytes


def test_no_patient_is_in_two_splits(repo):
    manifest = pd.read_csv(repo / "data/manifest.csv")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_prepared_arrays_match_the_manifest(repo):
    manifest = pd.read_csv(repo / "data/manifest.csv")
    for split in ("train", "val", "test"):
        with np.load(repo / f"data/prepared/{split}.npz") as arrays:
            rows = manifest[manifest["split"] == split]
            assert arrays["images"].shape == (len(rows), 64, 64, 1)
            assert arrays["images"].dtype == np.uint8
            assert sorted(arrays["files"]) == sorted(rows["file"])
    made_with = json.loads((repo / "data/prepared/params.json").read_text())
    assert made_with["image_size"] == 64


def test_evaluate_writes_metrics_with_intervals_and_plots(repo):
    metrics = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["threshold"] <= 1.0
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        low, value, high = (metrics[k][name] for k in ("test_ci95_low", "test", "test_ci95_high"))
        assert 0.0 <= low <= value <= high <= 1.0, name
    assert 0.0 <= metrics["test"]["brier"] <= 1.0 and 0.0 <= metrics["test"]["ece"] <= 1.0
    for plot in ("roc", "precision_recall", "confusion_matrix", "calibration"):
        assert json.loads((repo / f"metrics/evaluate/plots/sklearn/{plot}.json").read_text())
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert shown, "dvc metrics show found no metrics"
    run(repo, "dvc", "plots", "show", "-o", "plots_html")
    assert (repo / "plots_html" / "index.html").stat().st_size > 1000


def test_training_curves_and_mlflow_run(repo):
    curve = pd.read_csv(repo / "metrics/train/plots/metrics/eval/auc.tsv", sep="\t")
    assert len(curve) == 1 and 0.0 <= curve["auc"].iloc[0] <= 1.0
    info = json.loads((repo / "models/train_info.json").read_text())
    assert info["device"] == "cpu"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    run_data = mlflow.get_run(info["mlflow_run_id"]).data
    assert run_data.params["epochs"] == "1"
    assert "test_roc_auc" in run_data.metrics and "best_val_auc" in run_data.metrics
    assert run_data.tags["device"] == "cpu"


def test_onnx_export_agrees_with_keras_and_carries_its_metadata(repo):
    parity = json.loads((repo / "metrics/export_onnx.json").read_text())["parity"]
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-4 and parity["labels_differing"] == 0
    metadata = json.loads((repo / "models/model.json").read_text())
    import hashlib

    onnx_bytes = (repo / "models/model.onnx").read_bytes()
    assert metadata["model_version"] == "sha256-" + hashlib.sha256(onnx_bytes).hexdigest()[:12]
    assert metadata["preprocessing"]["image_size"] == 64
    assert metadata["labels"] == ["NORMAL", "PNEUMONIA"]
    evaluation = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert metadata["threshold"] == evaluation["threshold"]
    manifest_hash = hashlib.sha256((repo / "data/manifest.csv").read_bytes()).hexdigest()
    assert metadata["training_data_sha256"] == manifest_hash


def test_repro_reruns_only_what_changed(repo):
    # GIVEN an up-to-date pipeline, WHEN nothing changes, THEN nothing runs.
    run(repo, "dvc", "repro")
    assert stages_run(run(repo, "dvc", "repro").stdout) == []
    # WHEN a train param changes, THEN train and what follows rerun, not ingest/preprocess.
    set_params(repo, **{"train.epochs": 2})
    assert stages_run(run(repo, "dvc", "repro").stdout) == ["train", "evaluate", "export_onnx"]
    # WHEN a preprocess param changes, THEN preprocess onward reruns.
    set_params(repo, **{"preprocess.intensity": "equalize"})
    assert stages_run(run(repo, "dvc", "repro").stdout) == STAGES[1:]
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_training_is_deterministic_on_cpu(repo):
    summaries = []
    for _ in range(2):
        run(repo, "dvc", "repro", "--force", "--single-item", "train")
        summary = json.loads((repo / "metrics/train/metrics.json").read_text())
        summary.pop("train_seconds")
        summaries.append(summary)
    assert summaries[0] == summaries[1]
    assert "val_auc" in json.dumps(summaries[0])


def test_a_repro_killed_during_train_completes_when_run_again(repo):
    set_params(repo, **{"train.epochs": 3})
    process = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=pipeline_env(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "Running stage 'train'" in line:
            break
    time.sleep(8)  # inside TensorFlow's start-up or the first epoch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert "train" in run(repo, "dvc", "status").stdout  # left stale, not half-recorded
    run(repo, "dvc", "repro")
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_an_experiment_with_a_changed_param_shows_in_exp_show(repo):
    run(repo, "dvc", "repro")
    run(repo, "dvc", "exp", "run", "--set-param", "train.epochs=1", "--name", "one-epoch")
    shown = run(repo, "dvc", "exp", "show", "--json").stdout
    assert "one-epoch" in shown and "best_val_auc" in shown
