"""DVC remote storage for real: the pipeline's data and models pushed to an S3-compatible
server on 127.0.0.1 (moto's standalone server), pulled into a fresh clone."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.pipeline_repo import pipeline_env, run, set_params, stages_run

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


def test_push_interrupted_then_completed_and_pulled_into_a_fresh_clone(
    own_repo, s3_endpoint, tmp_path
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

    # A pull request reviewed on a runner: nothing beside the clone (no ../shared); the
    # dataset and the base's outputs come from the remote, only the changed stages rerun,
    # and the report diffs the metrics against the base revision.
    assert not (clone.parent / "shared").exists()
    assert (clone / "data/source/chest-xray-pneumonia/train/NORMAL").is_dir()
    set_params(clone, **{"evaluate.threshold_policy": "youden"})
    rerun = stages_run(run(clone, "dvc", "repro").stdout)
    assert rerun == ["evaluate", "export_onnx"], rerun
    review = tmp_path / "review.md"
    report = ["python", "-m", "pneumonia.review", "report", "--base", "HEAD"]
    run(clone, *report, "--output", str(review))
    text = review.read_text()
    assert "## Model review" in text and "evaluate.threshold_policy" in text
    assert "metrics/decision.json" in text  # the threshold moved: a headline figure
    assert "metrics/evaluate/metrics.json" in text  # and the details, collapsed
