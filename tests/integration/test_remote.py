"""DVC remote storage for real: the pipeline's data and models pushed to an S3-compatible
server on 127.0.0.1 (moto's standalone server), pulled into a fresh clone, which then retrains
on added images and is reviewed against main, as a runner does."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.data.splits import patient_id
from tests.integration.pipeline_repo import STAGES, pipeline_env, run, set_params, stages_run
from tests.integration.test_dataset import git
from tests.integration.test_dataset_add import DVC_FILE, content_hash, names_in, new_folder

pytestmark = pytest.mark.integration

BUCKET = "pneumonia-dvc"


@pytest.fixture(scope="module")
def s3_endpoint(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    return s3_server


def objects_in_bucket(endpoint: str) -> int:
    import boto3

    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return listing.get("KeyCount", 0)


def file_hashes(root: Path) -> dict[str, str]:
    tracked = [
        "data/source",
        "data/prepared",
        "data/raw",
        "models/model.onnx",
        "models/reason.onnx",
        "models/model.keras",
    ]
    hashes = {}
    for name in tracked:
        for path in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if path.is_file():
                hashes[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return hashes


def test_push_interrupted_then_completed_pulled_into_a_clone_and_retrained_there(
    own_repo, s3_endpoint, tmp_path, sample_data
):
    repo = own_repo
    env = pipeline_env(repo)  # carries the credentials the s3_server fixture sets
    run(repo, "dvc", "repro")
    run(repo, "dvc", "remote", "add", "s3", f"s3://{BUCKET}/store")
    run(repo, "dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint)
    config = (repo / ".dvc" / "config").read_text()
    assert "secret" not in config.lower() and "access_key" not in config.lower()
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "s3"],
        cwd=repo,
        check=True,
    )

    # WHEN a push is killed once some objects have arrived ...
    push = subprocess.Popen(
        ["dvc", "push", "-r", "s3", "-j", "1"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while objects_in_bucket(s3_endpoint) < 3 and push.poll() is None:
        assert time.monotonic() < deadline, "the push sent nothing"
        time.sleep(0.05)
    interrupted = push.poll() is None
    if interrupted:
        os.killpg(push.pid, signal.SIGKILL)
    push.wait(timeout=30)
    # ... THEN running it again completes, and the remote holds everything.
    run(repo, "dvc", "push", "-r", "s3")
    status = run(repo, "dvc", "status", "-c", "-r", "s3").stdout
    assert "in sync" in status, status
    assert interrupted, "the push finished before it could be interrupted"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "models/model.onnx").exists()
    run(clone, "dvc", "pull", "-r", "s3")
    status = run(clone, "dvc", "status", "-c", "-r", "s3").stdout
    assert "in sync" in status, status
    assert file_hashes(clone) == file_hashes(repo)
    assert len(file_hashes(clone)) > 100

    # The pulled outputs are the base's: nothing in the clone is stale.
    assert "up to date" in run(clone, "dvc", "status").stdout
    retrain_and_review(clone, tmp_path, sample_data)


def retrain_and_review(clone: Path, tmp_path: Path, sample_data: Path) -> None:
    """A retraining pull request reviewed on a runner (the retrain workflow): nothing beside
    the clone (no ../shared), the dataset and the base's outputs come from the remote.

    WHEN 20 new images become a new version of the dataset and the threshold policy changes,
    THEN the pipeline reruns from ingest, the new images are in the manifest, and the report
    diffs the metrics against main. One pipeline run serves the remote's review and the
    dataset's retraining: about 100 s of the suite against a test each."""
    assert not (clone.parent / "shared").exists()
    assert (clone / "data/source/chest-xray-pneumonia/train/NORMAL").is_dir()
    git(clone, "checkout", "-q", "-b", "retrain/1")
    before = content_hash(clone)
    made = new_folder(tmp_path / "new", names_in(clone), sample_data, 10, layout="train")
    assert len(made) == 20
    added = run(clone, sys.executable, "-m", "pneumonia.dataset", "add", str(tmp_path / "new"))
    assert "NORMAL 10, PNEUMONIA 10" in added.stdout
    after = content_hash(clone)
    assert after != before and f"{before} -> {after}" in added.stdout
    git(clone, "add", str(DVC_FILE))
    git(clone, "commit", "-qm", "Dataset: 20 images added")
    set_params(clone, **{"evaluate.threshold_policy": "youden"})
    assert stages_run(run(clone, "dvc", "repro").stdout) == STAGES  # the data changed
    rows = pd.read_csv(clone / "data" / "manifest.csv").set_index("file")
    for name, label in made.items():
        row = rows.loc[f"train/{label}/{name}"]
        assert row["label"] == label and row["patient_id"] == patient_id(name)
        assert row["split"] != "excluded"
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "Retrain on the new dataset version")

    review = tmp_path / "review.md"
    report = ["python", "-m", "pneumonia.review", "report", "--base", "main"]
    run(clone, *report, "--output", str(review))
    text = review.read_text()
    assert "## Model review" in text and "Compared with `main`." in text
    assert "evaluate.threshold_policy" in text
    assert re.search(r"\| test \| roc_auc \| (\d\.\d{4}|nan) \| \d\.\d{4}", text), text
    headline, details = text.split("<details>")
    assert "| Path" in headline and "| main" in headline and "| workspace" in headline
    assert "metrics/decision.json" in headline  # the threshold moved: a headline figure
    assert "metrics/evaluate/metrics.json" in details  # and the details, collapsed
    # The ingest counts, main against this branch: 20 more files found.
    found = re.search(r"metrics/ingest\.json\s*\|\s*files_found\s*\|\s*(\d+)\s*\|\s*(\d+)", details)
    assert found, details
    assert int(found.group(2)) - int(found.group(1)) == 20
    assert "Metric gate" in text
