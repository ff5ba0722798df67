"""Batch rows (pneumonia.serving.batch) without TensorFlow: a real ONNX graph built here, small
enough to compute by hand, served by the endpoint's own Classifier. Rows, their keys, what a
rerun skips, and the files that become error rows without being read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.serving import batch
from pneumonia.serving.batch import (
    Item,
    Job,
    batches,
    done,
    folder_items,
    job_of,
    over_cap,
    row_key,
    score_jobs,
)
from pneumonia.serving.classifier import Classifier
from pneumonia.serving.requests import MAX_IMAGE_BYTES, ClientError
from tests.images import encode

SIZE = 32
GATE = 200.0  # the graph's "distance" is the brightest prepared level: above 200 is refused


def mean_graph() -> bytes:
    """probability = mean level / 255, distance = brightest level, features = (mean level /
    255, brightest level) per image, cam = the input: each output computable by hand."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["image"], ["level"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Div", ["level", "full_scale"], ["probability"]),
        helper.make_node("ReduceMax", ["image"], ["distance"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["image"], ["level_f"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["level_f", "full_scale"], ["share_f"]),
        helper.make_node("ReduceMax", ["image"], ["top_f"], axes=[1, 2], keepdims=0),
        helper.make_node("Concat", ["share_f", "top_f"], ["features"], axis=1),
        helper.make_node("Identity", ["image"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 1])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("distance", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", SIZE, SIZE, 1]),
        ],
        [numpy_helper.from_array(np.array(255.0, dtype=np.float32), "full_scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def write_model(folder: Path) -> Path:
    from pneumonia.decision.contract import ModelMetadata

    graph = mean_graph()
    metadata = ModelMetadata.for_graph(
        graph,
        {
            "threshold": 0.5,
            "labels": ("NORMAL", "PNEUMONIA"),
            "input_name": "image",
            "outputs": {
                "probability": "probability",
                "ood_distance": "distance",
                "cam": "cam",
                "features": "features",
            },
            "preprocessing": {
                "image_size": SIZE,
                "intensity": "none",
                "clahe_clip_limit": 2.0,
                "clahe_tile_grid": 8,
                "framing": "full",
            },
            "calibration": {"method": "platt", "scale": 1.0, "shift": 0.0},
            "decision_band": {"low": 0.4, "high": 0.6, "error_rate": 0.05},
            "ood_gate": {"threshold": GATE, "false_rejection_rate": 0.01},
            "training_data_sha256": "0" * 64,
        },
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(graph)
    (folder / "model.json").write_text(metadata.to_json())
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir) -> Classifier:
    return Classifier.load(model_dir)


def two_levels(left: int, right: int) -> bytes:
    """A 64 x 64 gray PNG, the left half at one level and the right at another: its prepared
    32 x 32 mean is (left + right) / 2 exactly, its brightest level max(left, right)."""
    pixels = np.full((64, 64), left, np.uint8)
    pixels[:, 32:] = right
    return encode(Image.fromarray(pixels), "PNG")


# (file, bytes, the row's answer) -- mean level 50: 0.196 NORMAL; 127.5: 0.5 PNEUMONIA at the
# threshold, inside the band [0.4, 0.6); 159.5: 0.625 PNEUMONIA; brightest 255: refused.
DARK, MIDDLE, BRIGHT, GLARE = (
    two_levels(0, 100),
    two_levels(77, 178),
    two_levels(120, 199),
    (two_levels(155, 255)),
)


def job(file: str, data: bytes) -> Job:
    return job_of(Item(file, lambda: data), "v")[1]


def test_each_row_is_the_endpoints_answer_in_order(model):
    text = b"not an image\n"
    jobs = [
        job("a/dark.png", DARK),
        job("middle.png", MIDDLE),
        Job("huge.png", None, b"", "8,000,000 bytes; too many"),
        job("bright.png", BRIGHT),
        job("glare.png", GLARE),
        job("notes.txt", text),
    ]
    rows = score_jobs(jobs, model)
    version = model.metadata.model_version
    sha = {j.file: j.sha256 for j in jobs}
    assert rows[0] == {
        "file": "a/dark.png",
        "sha256": sha["a/dark.png"],
        "status": "ok",
        "predicted_label": "NORMAL",
        "probability_pneumonia": pytest.approx(50 / 255, rel=1e-6),
        "decision": "NORMAL",
        "modelVersion": version,
    }
    assert rows[1] == {
        "file": "middle.png",
        "sha256": sha["middle.png"],
        "status": "ok",
        "predicted_label": "PNEUMONIA",
        "probability_pneumonia": 0.5,
        "decision": "INDETERMINATE",
        "modelVersion": version,
    }
    assert rows[2] == {
        "file": "huge.png",
        "sha256": None,
        "status": "error",
        "error": "8,000,000 bytes; too many",
        "modelVersion": version,
    }
    assert rows[3]["predicted_label"] == rows[3]["decision"] == "PNEUMONIA"
    assert rows[3]["probability_pneumonia"] == pytest.approx(159.5 / 255, rel=1e-6)
    assert rows[4] == {
        "file": "glare.png",
        "sha256": sha["glare.png"],
        "status": "error",
        "error": "the image is not like the chest X-rays the model was trained on "
        "(feature distance 255.0, limit 200.0)",
        "modelVersion": version,
    }
    assert rows[5] == {
        "file": "notes.txt",
        "sha256": sha["notes.txt"],
        "status": "error",
        "error": "the bytes are not a recognised image",
        "modelVersion": version,
    }
    # the endpoint, one image at a time, answers the same
    for data, line in zip((DARK, MIDDLE, BRIGHT), (rows[0], rows[1], rows[3]), strict=True):
        answer = model.classify(data)
        assert (answer.label, answer.probability, answer.decision) == (
            line["predicted_label"],
            line["probability_pneumonia"],
            line["decision"],
        )
    for data, line in ((GLARE, rows[4]), (text, rows[5])):
        with pytest.raises(ClientError) as refused:
            model.classify(data)
        assert str(refused.value) == line["error"]


def test_features_are_added_to_scored_rows_only_rounded_to_six_digits(model):
    rows = score_jobs([job("dark.png", DARK), job("glare.png", GLARE)], model, features=True)
    assert rows[0]["features"] == [0.196078, 100.0]  # 50 / 255 = 0.19607843...
    assert "features" not in rows[1]  # refused by the gate: no features
    assert all("features" not in line for line in score_jobs([job("d.png", DARK)], model))


def test_a_batch_of_refused_files_runs_no_inference(model):
    jobs = [Job("x", None, b"", "not read"), job("notes.txt", b"text")]
    assert [line["status"] for line in score_jobs(jobs, model)] == ["error", "error"]
    assert score_jobs([], model) == []


# ---------------------------------------------------------------- keys and what is skipped


def test_a_rows_key_is_its_hash_and_version_or_its_name_when_it_was_not_read():
    assert row_key({"sha256": "ab", "modelVersion": "v1", "file": "f"}) == ("ab", "v1")
    assert row_key({"sha256": None, "modelVersion": "v1", "file": "a/b"}) == ("file:a/b", "v1")
    for bad in (
        [],
        "row",
        {"sha256": "ab", "modelVersion": 3},
        {"sha256": 5, "modelVersion": "v1"},
        {"sha256": ["ab"], "modelVersion": "v1"},
    ):
        with pytest.raises(TypeError, match="not a row"):
            row_key(bad)
    for missing in (
        {"sha256": "ab"},
        {"modelVersion": "v1"},
        {"sha256": None, "modelVersion": "v"},
    ):
        with pytest.raises(KeyError):
            row_key(missing)


def test_a_job_is_keyed_by_the_sha256_of_its_bytes():
    key, read = job_of(Item("a.png", lambda: b"abc"), "v2")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert key == (digest, "v2")
    assert read == Job("a.png", digest, b"abc", None)


def test_a_file_that_cannot_be_read_is_keyed_by_its_name_with_the_reason():
    def gone() -> bytes:
        raise FileNotFoundError("vanished")

    def grew() -> bytes:
        raise ClientError(413, "grew over the cap", "too_large")

    assert job_of(Item("a.png", gone), "v") == (
        ("file:a.png", "v"),
        Job("a.png", None, b"", "cannot be read (FileNotFoundError)"),
    )
    assert job_of(Item("b.png", grew), "v")[1].refused == "grew over the cap"

    def never() -> bytes:
        raise AssertionError("read")

    assert job_of(Item("c", never, "a FIFO"), "v") == (
        ("file:c", "v"),
        Job("c", None, b"", "a FIFO"),
    )


def test_batches_skip_what_is_done_and_repeated_bytes_and_count_every_file_read():
    items = [Item(f"{i}.png", lambda i=i: bytes([i % 3])) for i in range(7)]  # 3 distinct
    finished = {job_of(items[0], "v")[0]}  # bytes b"\x00" already in the output
    counts = {"skipped": 0}
    out = list(batches(items, finished, "v", 1, counts))
    assert [[j.file for j in jobs] for jobs, _ in out] == [["1.png"], ["2.png"], []]
    assert [read for _, read in out] == [2, 1, 4]  # every file read once, in some batch
    assert counts == {"skipped": 5}
    counts = {"skipped": 0}
    (only,) = batches(items[:3], set(), "w", 64, counts)
    assert [j.file for j in only[0]] == ["0.png", "1.png", "2.png"] and only[1] == 3
    assert counts == {"skipped": 0}
    two = list(batches(items[1:3], set(), "w", 2, {"skipped": 0}))
    assert [([j.file for j in jobs], read) for jobs, read in two] == [
        (["1.png", "2.png"], 2),
        ([], 0),
    ]


def test_done_reads_the_keys_and_drops_a_torn_last_line(tmp_path, caplog):
    output = tmp_path / "out.jsonl"
    assert done(output) == set()
    assert not output.exists()
    whole = [
        {"file": "a", "sha256": "aa", "modelVersion": "v", "status": "ok"},
        {"file": "b", "sha256": None, "modelVersion": "v", "status": "error"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in whole)
    output.write_text(text + '{"file": "c", "sha2')  # killed while writing
    with caplog.at_level("WARNING", logger="batch"):
        assert done(output) == {("aa", "v"), ("file:b", "v")}
    assert output.read_text() == text
    assert caplog.records == []  # a torn last line is not news
    output.write_text(text)
    before = output.stat().st_mtime_ns
    os.utime(output, ns=(0, 0))
    assert done(output) == {("aa", "v"), ("file:b", "v")}
    assert output.stat().st_mtime_ns == 0 != before  # a clean file is not rewritten


def test_done_drops_lines_that_are_not_rows_and_says_how_many(tmp_path, caplog):
    output = tmp_path / "out.jsonl"
    good = json.dumps({"file": "a", "sha256": "aa", "modelVersion": "v"})
    lines = ["[1, 2]", "not json", good, "", '{"sha256": "x"}', "[" * 100_000, good]
    output.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="batch"):
        assert done(output) == {("aa", "v")}
    assert output.read_text() == good + "\n" + good + "\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"{output}: 4 line(s) that are not rows of this tool were dropped"
    ]


# ---------------------------------------------------------------- what is read at all


def test_a_file_over_the_endpoints_cap_is_refused_with_both_sizes():
    assert over_cap(MAX_IMAGE_BYTES) is None
    assert over_cap(MAX_IMAGE_BYTES + 1) == (
        "4,125,001 bytes; the limit is 4,125,000 (the endpoint's request cap)"
    )


def test_a_folder_is_walked_in_order_and_what_is_not_a_regular_file_is_not_read(tmp_path):
    root = tmp_path / "source"
    (root / "b" / "inner").mkdir(parents=True)
    (root / "a.png").write_bytes(b"first")
    (root / "b" / "inner" / "c.png").write_bytes(b"third")
    (root / "b" / "z.png").write_bytes(b"second")
    with open(root / "big.png", "wb") as handle:  # sparse: over the cap, never read
        handle.truncate(MAX_IMAGE_BYTES + 1)
    (root / "at-cap.png").write_bytes(b"")
    os.truncate(root / "at-cap.png", MAX_IMAGE_BYTES)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    (root / "escape.png").symlink_to(outside)
    (root / "inside.png").symlink_to(root / "a.png")
    (root / "loop").symlink_to(root / "b")  # a symlinked folder: not walked into
    (root / "dangling.png").symlink_to(root / "missing.png")
    os.mkfifo(root / "pipe")
    items = {item.file: item for item in folder_items(root)}
    assert list(items) == [
        "a.png",
        "at-cap.png",
        "b/inner/c.png",
        "b/z.png",
        "big.png",
        "dangling.png",
        "escape.png",
        "inside.png",
        "loop",
        "pipe",
    ]
    assert items["a.png"].read() == b"first" and items["a.png"].refused is None
    assert items["b/inner/c.png"].read() == b"third"
    assert items["inside.png"].read() == b"first"
    assert len(items["at-cap.png"].read()) == MAX_IMAGE_BYTES
    assert items["big.png"].refused == over_cap(MAX_IMAGE_BYTES + 1)
    assert items["escape.png"].refused == "a symlink that leaves the source folder: not read"
    assert items["dangling.png"].refused == "cannot be read (FileNotFoundError)"
    not_regular = "not a regular file (a FIFO, device or socket): not read"
    assert items["pipe"].refused == not_regular
    assert items["loop"].refused == not_regular  # a folder, reached through a symlink
    for name in ("big.png", "escape.png", "dangling.png", "pipe", "loop"):
        assert items[name].read() == b""  # refused items are never read


def test_a_file_that_grows_over_the_cap_after_listing_is_refused_when_read(tmp_path):
    root = tmp_path / "source"
    root.mkdir()
    path = root / "growing.png"
    path.write_bytes(b"small")
    (item,) = folder_items(root)
    os.truncate(path, MAX_IMAGE_BYTES + 1)
    with pytest.raises(ClientError) as refused:
        item.read()
    assert (refused.value.status, str(refused.value), refused.value.reason) == (
        413,
        "grew over the cap",
        "too_large",
    )
    assert job_of(item, "v")[1].refused == "grew over the cap"


# ---------------------------------------------------------------- the command, end to end

# The worker processes are threads here: the unit tier starts no process, and mutmut's
# forked runners cannot spawn them (tests/integration/test_batch.py runs the real pool).
# The workers still load the model and score with batch's own functions.


@pytest.fixture
def pools(monkeypatch) -> list[dict]:
    """Every pool `score` asks for, run on threads; what it asked for is recorded."""
    import concurrent.futures

    asked: list[dict] = []

    class ThreadedPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, workers, mp_context=None, initializer=None, initargs=()):
            asked.append(
                {
                    "workers": workers,
                    "start": mp_context.get_start_method(),
                    "initializer": initializer,
                    "initargs": initargs,
                }
            )
            self.sizes = asked[-1]["batches"] = []
            super().__init__(workers, initializer=initializer, initargs=initargs)

        def submit(self, function, jobs, *args):
            self.sizes.append(len(jobs))
            return super().submit(function, jobs, *args)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", ThreadedPool)
    monkeypatch.setattr(batch, "_WORKER_MODEL", None)
    return asked


def test_the_command_scores_a_folder_and_a_rerun_adds_nothing(
    tmp_path, model_dir, model, monkeypatch, capsys, pools
):
    source = tmp_path / "backlog"
    (source / "studies").mkdir(parents=True)
    (source / "studies" / "dark.png").write_bytes(DARK)
    (source / "studies" / "copy.png").write_bytes(DARK)  # the same bytes: one row
    (source / "glare.png").write_bytes(GLARE)
    (source / "notes.txt").write_text("not an image\n")
    output = tmp_path / "rows.jsonl"
    argv = ["batch", str(source), "--output", str(output), "--model-dir", str(model_dir)]
    monkeypatch.setattr(sys, "argv", [*argv, "--workers", "1", "--batch-size", "2"])
    batch.main()
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "files": 4,
        "scored": 1,
        "errors": 2,
        "skipped": 1,
        "output": str(output),
    }
    # spawned processes (never forked), each loading the model once
    assert pools == [
        {
            "workers": 1,
            "start": "spawn",
            "initializer": batch._load_worker,
            "initargs": (model_dir,),
            "batches": [2, 1],
        }
    ]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["file"] for line in rows] == ["glare.png", "notes.txt", "studies/copy.png"]
    assert [line["status"] for line in rows] == ["error", "error", "ok"]
    assert "features" not in rows[2]
    version = model.metadata.model_version
    assert all(line["modelVersion"] == version for line in rows)
    # a rerun reads, hashes and skips every file; no worker is needed, no row is added
    before = output.read_text()
    monkeypatch.setattr(sys, "argv", [*argv, "--features"])
    batch.main()
    assert json.loads(capsys.readouterr().out) == {
        "files": 4,
        "scored": 0,
        "errors": 0,
        "skipped": 4,
        "output": str(output),
    }
    assert output.read_text() == before


def test_the_command_adds_features_when_asked(tmp_path, model_dir, monkeypatch, pools):
    source = tmp_path / "backlog"
    source.mkdir()
    (source / "dark.png").write_bytes(DARK)
    output = tmp_path / "rows.jsonl"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            *("batch", str(source), "--output", str(output), "--model-dir", str(model_dir)),
            *("--workers", "1", "--features"),
        ],
    )
    batch.main()
    (line,) = [json.loads(text) for text in output.read_text().splitlines()]
    assert line["features"] == [0.196078, 100.0]


def test_batches_of_64_by_default_rows_in_order_and_a_bounded_queue(tmp_path, model_dir, pools):
    source = tmp_path / "backlog"
    source.mkdir()
    for index in range(70):  # distinct bytes: every file is scored
        (source / f"{index:03d}.png").write_bytes(two_levels(index, 120 + index))
    output = tmp_path / "rows.jsonl"
    counts = batch.score(folder_items(source), output, model_dir)
    assert counts == {"scored": 70, "errors": 0, "skipped": 0}
    assert (pools[0]["workers"], pools[0]["batches"]) == (2, [64, 6])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["file"] for line in rows] == [f"{index:03d}.png" for index in range(70)]
    assert rows[0]["probability_pneumonia"] == pytest.approx(60 / 255, rel=1e-6)
    # one file per batch: more batches than the queue holds (2 per worker), still in order
    output.unlink()
    counts = batch.score(folder_items(source)[:9], output, model_dir, batch_size=1, workers=1)
    assert counts["scored"] == 9 and pools[1]["batches"] == [1] * 9
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["file"] for line in rows] == [f"{index:03d}.png" for index in range(9)]


def test_the_command_uses_every_core_and_batches_of_64_by_default(
    tmp_path, model_dir, monkeypatch, pools, capsys
):
    source = tmp_path / "backlog"
    source.mkdir()
    for index in range(65):
        (source / f"{index:03d}.png").write_bytes(two_levels(index, 120 + index))
    output = tmp_path / "rows.jsonl"
    argv = ["batch", str(source), "--output", str(output), "--model-dir", str(model_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    batch.main()
    assert json.loads(capsys.readouterr().out)["scored"] == 65
    assert (pools[0]["workers"], pools[0]["batches"]) == (os.cpu_count(), [64, 1])


def test_the_commands_help_says_what_each_option_is(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["batch", "--help"])
    with pytest.raises(SystemExit):
        batch.main()
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "Score a backlog: every image under a folder or an S3 prefix, one JSON line each.",
        "a folder, or s3://bucket/prefix",
        "JSON lines, appended",
        "cores to use",
        "an S3-compatible endpoint instead of AWS",
        "add the model's features to each row (what pneumonia.monitor's MMD test reads)",
        "--model-dir MODEL_DIR",
        "--batch-size BATCH_SIZE",
    ):
        assert words in text


# ---------------------------------------------------------------- S3


@pytest.fixture
def s3_endpoint(monkeypatch):
    """moto's S3 server on loopback, with stand-in credentials (nothing leaves the machine)."""
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_an_s3_prefix_is_listed_in_key_order_and_an_object_over_the_cap_is_not_read(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="unit-batch-listing")
    objects = {
        "scans/b.png": b"second",
        "scans/a.png": b"first",
        "scans/folder/": b"",  # a "folder" marker: not a file
        "scans/deep/c.png": b"third",
        "scans/big.png": bytes(MAX_IMAGE_BYTES + 1),
        "scans/at-cap.png": bytes(MAX_IMAGE_BYTES),
        "other/d.png": b"elsewhere",
    }
    for key, body in objects.items():
        client.put_object(Bucket="unit-batch-listing", Key=key, Body=body)
    items = batch.s3_items("s3://unit-batch-listing/scans/", s3_endpoint)
    by_key = {item.file: item for item in items}
    assert list(by_key) == [
        "scans/a.png",
        "scans/at-cap.png",
        "scans/b.png",
        "scans/big.png",
        "scans/deep/c.png",
    ]
    assert len(by_key["scans/at-cap.png"].read()) == MAX_IMAGE_BYTES
    assert by_key["scans/a.png"].read() == b"first" and by_key["scans/a.png"].refused is None
    assert by_key["scans/deep/c.png"].read() == b"third"
    assert by_key["scans/big.png"].refused == over_cap(MAX_IMAGE_BYTES + 1)
    assert by_key["scans/big.png"].read() == b""
    assert batch.s3_items("s3://unit-batch-listing/none-here", s3_endpoint) == []
    whole = batch.s3_items("s3://unit-batch-listing", s3_endpoint)  # no prefix: the whole bucket
    assert [item.file for item in whole][:2] == ["other/d.png", "scans/a.png"]
    assert len(whole) == 6


@pytest.mark.parametrize("side", [64, 224, 256, 257, 1024])
def test_a_batch_keeps_of_each_image_what_names_its_refusal_at_the_least_cost(side):
    from pneumonia.decision.reason import REASON_SIZE, reason_input
    from pneumonia.serving.classifier import Layout

    gray = np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)
    kept = Layout(lateral=False, gray=gray).detached(reason_head=True)
    small = side <= 256  # no more bytes than the (128, 128, 1) float32 input it would make
    assert (kept.gray is gray) == small and (kept.reason_image is None) == small
    pixels = kept.reason_pixels()
    assert pixels is not None and pixels.shape == (REASON_SIZE, REASON_SIZE, 1)
    np.testing.assert_array_equal(pixels, reason_input(gray))
    dropped = Layout(gray=gray).detached(reason_head=False)  # no head: nothing kept
    assert dropped.gray is None and dropped.reason_pixels() is None


def test_a_batch_never_keeps_a_small_view_of_a_large_decoded_image():
    from pneumonia.serving.classifier import Layout

    large = np.zeros((1024, 1024), dtype=np.uint8)
    kept = Layout(gray=large[:100, :100]).detached(reason_head=True)
    assert kept.gray is None and kept.reason_image is not None
