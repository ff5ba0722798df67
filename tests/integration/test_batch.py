"""Batch scoring (python -m pneumonia.batch): the endpoint's answers for a whole folder or S3
prefix, broken files as rows, resumable after a kill, no duplicate rows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import probabilities_from_keras

pytestmark = pytest.mark.integration


@pytest.fixture
def source(tmp_path, sample_data) -> Path:
    """The committed X-rays in their folders, a truncated JPEG, a text file and a copy."""
    root = tmp_path / "backlog"
    shutil.copytree(sample_data / "train", root / "studies")
    first = next((root / "studies" / "NORMAL").iterdir())
    (root / "broken.jpeg").write_bytes(first.read_bytes()[:500])
    (root / "notes.txt").write_text("not an image\n")
    return root


def read_rows(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_every_file_is_a_row_with_the_endpoints_answer(
    source, tmp_path, app_module, model_dir, keras_model
):
    from pneumonia.serving.batch import folder_items, score
    from pneumonia.serving.requests import ClientError

    model = app_module.MODEL
    output = tmp_path / "predictions.jsonl"
    counts = score(folder_items(source), output, model_dir, batch_size=16, workers=2)
    rows = read_rows(output)
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert sorted(row["file"] for row in rows) == files
    assert counts["scored"] + counts["errors"] == 152 and counts["skipped"] == 0
    assert counts["errors"] == sum(row["status"] == "error" for row in rows) >= 2
    for row in rows:
        data = (source / row["file"]).read_bytes()
        assert row["modelVersion"] == model.metadata.model_version
        try:
            model.classify(data)  # refused here too: the row carries the same message
        except ClientError as error:
            assert (row["status"], row["error"]) == ("error", str(error))
            continue
        assert row["status"] == "ok"
        # An oracle apart from the code under test: Keras on the same input, and the
        # test model's rule (threshold 0.5, band [0.45, 0.55)) written out.
        (keras_p,) = probabilities_from_keras(keras_model, [data], model.metadata)
        assert abs(row["probability_pneumonia"] - keras_p) <= 1e-5
        label = "PNEUMONIA" if row["probability_pneumonia"] >= 0.5 else "NORMAL"
        decision = label if not 0.45 <= row["probability_pneumonia"] < 0.55 else "INDETERMINATE"
        assert (row["predicted_label"], row["decision"]) == (label, decision)
    by_file = {row["file"]: row for row in rows}
    assert by_file["broken.jpeg"]["status"] == "error"
    assert by_file["notes.txt"]["error"] == "the bytes are not a recognised image"


def test_a_rerun_skips_what_is_scored_and_adds_no_row(source, tmp_path, model_dir):
    from pneumonia.serving.batch import folder_items, score

    output = tmp_path / "predictions.jsonl"
    score(folder_items(source), output, model_dir, workers=1)
    before = output.read_text()
    counts = score(folder_items(source), output, model_dir, workers=1)
    assert counts == {"scored": 0, "errors": 0, "skipped": 152}
    assert output.read_text() == before


def test_a_run_killed_midway_completes_on_rerun_without_duplicates(source, tmp_path, model_dir):
    output = tmp_path / "predictions.jsonl"
    command = [sys.executable, "-m", "pneumonia.batch", str(source), "--output", str(output)]
    command += ["--model-dir", str(model_dir), "--batch-size", "1", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.read_text().count("\n") >= 5:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = len(read_rows(output)) if output.read_text().endswith("\n") else None
    with output.open("a") as sink:  # a row torn by the kill, as a crash mid-write leaves it
        sink.write('{"file": "studies/NORMAL/torn.jpeg", "sha2')
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    rows = read_rows(output)
    assert len(rows) == 152 and len({row["file"] for row in rows}) == 152
    assert killed_at is None or killed_at < 152


def test_an_s3_prefix_is_scored_by_key(source, tmp_path, model_dir, s3_server):
    import boto3

    from pneumonia.serving.batch import s3_items, score

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="backlog")
    for path in sorted(source.rglob("*"))[:12]:
        if path.is_file():
            client.upload_file(str(path), "backlog", f"2026/{path.relative_to(source)}")
    output = tmp_path / "predictions.jsonl"
    items = s3_items("s3://backlog/2026/", endpoint_url=s3_server)
    score(items, output, model_dir, workers=1)
    rows = read_rows(output)
    assert sorted(row["file"] for row in rows) == sorted(item.file for item in items)
    assert all(row["file"].startswith("2026/") for row in rows)
    assert {row["status"] for row in rows} <= {"ok", "error"}


def test_rows_carry_the_models_features_when_asked(source, tmp_path, app_module, model_dir):
    import numpy as np

    from pneumonia.serving.batch import folder_items, score
    from pneumonia.serving.classifier import prepare

    model = app_module.MODEL
    items = folder_items(source)[:6]  # broken.jpeg, notes.txt and four X-rays
    output = tmp_path / "predictions.jsonl"
    score(items, output, model_dir, batch_size=4, workers=1, features=True)
    rows = read_rows(output)
    assert {row["status"] for row in rows} == {"ok", "error"}
    for row in rows:
        if row["status"] == "error":
            assert "features" not in row
            continue
        pixels = prepare((source / row["file"]).read_bytes(), model.metadata.preprocessing)[1]
        expected = model.infer(pixels[np.newaxis], features=True).features[0]
        assert len(row["features"]) == len(expected) > 0
        np.testing.assert_allclose(row["features"], expected, rtol=1e-5, atol=1e-6)


def test_only_regular_files_inside_the_source_are_read(source, tmp_path, model_dir, caplog):
    from pneumonia.serving.batch import folder_items, score
    from pneumonia.serving.requests import MAX_IMAGE_BYTES

    # GIVEN links out of the folder, a link inside it, a FIFO, a sparse file over the
    # endpoint's cap and a folder link out of the source
    outside = tmp_path / "outside.jpeg"
    shutil.copyfile(next((source / "studies" / "NORMAL").iterdir()), outside)
    (source / "passwd").symlink_to("/etc/passwd")
    (source / "mem").symlink_to("/proc/self/mem")
    (source / "outside.jpeg").symlink_to(outside)
    (source / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    inside = next((source / "studies" / "PNEUMONIA").iterdir())
    (source / "inside.jpeg").symlink_to(inside)
    os.mkfifo(source / "pipe")
    with (source / "sparse.jpeg").open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)
    output = tmp_path / "predictions.jsonl"
    # WHEN the folder is scored
    started = time.monotonic()
    score(folder_items(source), output, model_dir, workers=1)
    # THEN each is a row; only the link inside the folder was read and scored
    assert time.monotonic() - started < 60
    by_file = {row["file"]: row for row in read_rows(output)}
    for name in ("passwd", "mem", "outside.jpeg", "elsewhere"):
        assert by_file[name]["status"] == "error" and by_file[name]["sha256"] is None, name
        assert "leaves the source folder" in by_file[name]["error"]
    assert "not a regular file" in by_file["pipe"]["error"] and by_file["pipe"]["sha256"] is None
    assert f"the limit is {MAX_IMAGE_BYTES:,}" in by_file["sparse.jpeg"]["error"]
    # the link inside is read and scored; the file it points at, the same bytes, is then a
    # repeat within the run and gets no second row
    assert by_file["inside.jpeg"]["status"] == "ok"
    assert by_file["inside.jpeg"]["sha256"] == hashlib.sha256(inside.read_bytes()).hexdigest()
    assert inside.relative_to(source).as_posix() not in by_file
    # AND a rerun writes none of the refused rows again
    before = output.read_text()
    counts = score(folder_items(source), output, model_dir, workers=1)
    assert counts["scored"] == counts["errors"] == 0 and output.read_text() == before


def test_lines_that_are_not_rows_are_dropped_with_a_warning(source, tmp_path, model_dir, caplog):
    from pneumonia.serving.batch import folder_items, score

    output = tmp_path / "predictions.jsonl"
    items = folder_items(source)[:4]
    score(items, output, model_dir, workers=1)
    rows = output.read_text()
    output.write_text('[1, 2]\n"text"\n{"file": "x"}\n{"sha256": 5, "modelVersion": "v"}\n' + rows)
    with caplog.at_level("WARNING"):
        counts = score(items, output, model_dir, workers=1)
    assert counts == {"scored": 0, "errors": 0, "skipped": 4}
    assert output.read_text() == rows
    assert "4 line(s) that are not rows" in caplog.text
