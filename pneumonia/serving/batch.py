"""Score a backlog: every image under a folder or an S3 prefix, one JSON line each.

    python -m pneumonia.batch SOURCE --output predictions.jsonl [--model-dir models]

SOURCE is a folder (searched recursively) or s3://bucket/prefix. The endpoint's code path
(decode, the "not a chest X-ray" checks, preprocessing, the ONNX graph, the gate, the
decision), with the serving dependencies alone: a row's probability is the endpoint's.
A file that cannot be scored is a row with `status: error` and the endpoint's message,
never a crash; so is a file the endpoint could not be sent (over MAX_IMAGE_BYTES), a
symlink that leaves the source folder (never read) and a special file (a FIFO, a device,
a socket: never opened). Resumable and idempotent: rows are appended as each batch finishes, and a
rerun skips every file whose (sha256, modelVersion) is already in the output, so a run
killed midway completes on rerun without duplicate rows. `--workers` processes each load
the model once and score batches (decode and checks per file, one inference run per
batch); the main process reads, hashes, skips and writes the rows in order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import stat
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.decision.contract import ModelMetadata
from pneumonia.serving.classifier import Classifier, Layout, prepare
from pneumonia.serving.requests import MAX_IMAGE_BYTES, ClientError

log = logging.getLogger("batch")


@dataclass(frozen=True)
class Item:
    """One file of the source: its name in the output, and how to read its bytes, or why it
    is not read at all."""

    file: str  # path relative to the folder, or the S3 key
    read: Any  # () -> bytes
    refused: str | None = None  # why the file is a row without being read


def refuse(file: str, why: str) -> Item:
    """An item that becomes an error row and is never read."""
    return Item(file, lambda: b"", why)


def over_cap(size: int) -> str | None:
    """Why a file of `size` bytes is refused, or None: the endpoint's body cap."""
    if size > MAX_IMAGE_BYTES:
        return f"{size:,} bytes; the limit is {MAX_IMAGE_BYTES:,} (the endpoint's request cap)"
    return None


def capped_reader(path: Path) -> Any:
    """Read a regular file, at most MAX_IMAGE_BYTES + 1 bytes (it may grow after listing)."""

    def read() -> bytes:
        with path.open("rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise ClientError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "grew over the cap", "too_large")
        return data

    return read


def folder_item(root: Path, path: Path) -> Item:
    """One entry under `root`: read only when it is a regular file inside `root` (a symlink
    resolved first) of at most MAX_IMAGE_BYTES."""
    name = path.relative_to(root).as_posix()
    target = path.resolve()
    if not target.is_relative_to(root):
        return refuse(name, "a symlink that leaves the source folder: not read")
    try:
        status = target.stat()
    except OSError as error:
        return refuse(name, f"cannot be read ({type(error).__name__})")
    if not stat.S_ISREG(status.st_mode):
        return refuse(name, "not a regular file (a FIFO, device or socket): not read")
    why = over_cap(status.st_size)
    return refuse(name, why) if why else Item(name, capped_reader(target))


def folder_items(root: Path) -> list[Item]:
    """Every entry under `root`, recursively, in a stable order; symlinked folders are not
    walked into, symlinked files are resolved and kept inside `root`."""
    root = root.resolve()
    paths = []
    for folder, folders, files in os.walk(root):  # followlinks=False
        folders.sort()
        base = Path(folder)
        paths += [base / name for name in files]
        paths += [base / name for name in folders if (base / name).is_symlink()]
    return [folder_item(root, path) for path in sorted(paths)]


def s3_items(url: str, endpoint_url: str | None = None) -> list[Item]:
    """Every object under s3://bucket/prefix, in key order (boto3, paginated)."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    sizes = {
        entry["Key"]: entry["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for entry in page.get("Contents", [])
        if not entry["Key"].endswith("/")
    }

    def reader(key: str) -> Any:
        return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_IMAGE_BYTES + 1)

    return [
        refuse(key, why) if (why := over_cap(sizes[key])) else Item(key, reader(key))
        for key in sorted(sizes)
    ]


def done(output: Path) -> set[tuple[str, str]]:
    """(sha256, modelVersion) of every complete row already written; a torn last line (a run
    killed while writing) is dropped from the file."""
    if not output.exists():
        return set()
    text = output.read_text()
    lines = text.split("\n")
    complete, seen = [], set()
    malformed = 0
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            key = row_key(row)
        except (json.JSONDecodeError, TypeError, KeyError, RecursionError):
            if line.strip() and number < len(lines):  # the torn last line is not news
                malformed += 1
            continue  # empty, torn, or not a row of ours: dropped
        complete.append(line)
        seen.add(key)
    if malformed:
        log.warning("%s: %d line(s) that are not rows of this tool were dropped", output, malformed)
    rewritten = "".join(line + "\n" for line in complete)
    if rewritten != text:
        output.write_text(rewritten)
    return seen


def row_key(row: dict) -> tuple[str, str]:
    """What makes a row done: (sha256, modelVersion); a file refused unread has no sha256 and
    is keyed by its name. TypeError or KeyError for what is not a row."""
    if not isinstance(row, dict) or not isinstance(row["modelVersion"], str):
        raise TypeError("not a row")
    digest = row["sha256"]
    if digest is None:
        return f"file:{row['file']}", row["modelVersion"]
    if not isinstance(digest, str):
        raise TypeError("not a row")
    return digest, row["modelVersion"]


@dataclass(frozen=True)
class Job:
    """One file to score: its name, the hash of its bytes, and the bytes; or why it is an
    error row without them."""

    file: str
    sha256: str | None
    data: bytes
    refused: str | None = None


def job_of(item: Item, version: str) -> tuple[tuple[str, str], Job]:
    """(its row's key, the job) of one item: read and hashed, or refused unread."""
    why = item.refused
    if why is None:
        try:
            data = item.read()
        except ClientError as error:
            why = str(error)
        except OSError as error:
            why = f"cannot be read ({type(error).__name__})"
    if why is not None:
        return (f"file:{item.file}", version), Job(item.file, None, b"", why)
    sha256 = hashlib.sha256(data).hexdigest()
    return (sha256, version), Job(item.file, sha256, data)


def score_jobs(jobs: list[Job], model: Classifier, features: bool = False) -> list[dict]:
    """The output rows of a batch of files, as the endpoint would answer each: decode and
    checks per file, one inference run for the usable ones, then the gate and the decision.
    With `features`, each scored row carries the model's features (for pneumonia.monitor)."""
    inputs: dict[int, np.ndarray] = {}
    layouts: dict[int, Layout] = {}  # what the view check reads and calls each image
    errors: dict[int, str] = {}
    for index, job in enumerate(jobs):
        if job.refused is not None:
            errors[index] = job.refused
            continue
        try:
            metadata = model.metadata
            gray, inputs[index] = prepare(
                job.data, metadata.preprocessing, metadata.max_patient_age_years
            )
            layouts[index] = model.layout(gray).detached(model.reason_session is not None)
        except ClientError as error:
            errors[index] = str(error)
    scores: dict[int, tuple[float, float, np.ndarray | None, Layout]] = {}
    vectors: dict[int, list[float]] = {}
    if inputs:
        outputs = model.infer(np.stack(list(inputs.values())), features=features)
        scores = {
            index: (*outputs.one(position), layouts[index]) for position, index in enumerate(inputs)
        }
        if outputs.features is not None:
            # float32 precision is what the graph computes; 6 significant digits keep it.
            vectors = {
                index: [float(f"{value:.6g}") for value in vector]
                for index, vector in zip(inputs, outputs.features, strict=True)
            }
    rows = [row(job, scores.get(index), errors.get(index), model) for index, job in enumerate(jobs)]
    for index, line in enumerate(rows):
        if line["status"] == "ok" and index in vectors:
            line["features"] = vectors[index]
    return rows


def row(
    job: Job,
    scored: tuple[float, float, np.ndarray | None, Layout] | None,
    error: str | None,
    model: Classifier,
) -> dict[str, Any]:
    """One output line: the prediction, or the endpoint's error message."""
    line: dict[str, Any] = {"file": job.file, "sha256": job.sha256}
    if scored is not None:
        try:
            prediction = model.judge(*scored)
            line |= {
                "status": "ok",
                "predicted_label": prediction.label,
                "probability_pneumonia": prediction.probability,
                "decision": prediction.decision,
            }
        except ClientError as refused:
            error = str(refused)
    if error is not None:
        line |= {"status": "error", "error": error}
    return line | {"modelVersion": model.metadata.model_version}


# One model per worker process, loaded once: processes, not threads, because decoding and
# preprocessing hold the GIL for much of their time.
_WORKER_MODEL: Classifier | None = None


def _load_worker(model_dir: Path) -> None:
    global _WORKER_MODEL
    import cv2

    cv2.setNumThreads(1)
    _WORKER_MODEL = Classifier.load(model_dir, threads=1)


def _score_in_worker(jobs: list[Job], features: bool) -> list[dict]:
    assert _WORKER_MODEL is not None, "the worker's model did not load"
    return score_jobs(jobs, _WORKER_MODEL, features)


def batches(
    items: list[Item], finished: set[tuple[str, str]], version: str, size: int, counts: dict
) -> Iterator[tuple[list[Job], int]]:
    """(jobs of the next batch, files read for it): each file read and hashed once; those
    already in the output, or repeating bytes seen in this run, skipped and counted."""
    jobs: list[Job] = []
    read = 0
    for item in items:
        key, job = job_of(item, version)
        read += 1
        if key in finished:
            counts["skipped"] += 1
        else:
            finished.add(key)
            jobs.append(job)
        if len(jobs) == size:
            yield jobs, read
            jobs, read = [], 0
    yield jobs, read


def score(
    items: list[Item],
    output: Path,
    model_dir: Path,
    batch_size: int = 64,
    workers: int = 2,
    features: bool = False,
) -> dict[str, int]:
    """Score what the output does not hold yet with `workers` processes; rows are appended
    in the order of `items`, batch by batch, so that a killed run loses at most the batches
    in flight. `features`: each scored row carries the model's features too."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    version = ModelMetadata.load(model_dir / "model.json").model_version
    finished = done(output)
    counts = {"scored": 0, "errors": 0, "skipped": 0}
    # spawn, not fork: a forked copy of a process that runs TensorFlow or onnxruntime threads
    # (a test, a notebook) can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_load_worker, initargs=(model_dir,)
    )
    pending: deque[tuple[Future[list[dict]], int]] = deque()
    with pool, output.open("a") as sink, tqdm(total=len(items), unit="img", desc="scoring") as bar:

        def write_oldest() -> None:
            future, read = pending.popleft()
            for line in future.result():
                sink.write(json.dumps(line) + "\n")
                counts["errors" if line["status"] == "error" else "scored"] += 1
            sink.flush()
            bar.update(read)

        for jobs, read in batches(items, finished, version, batch_size, counts):
            if not jobs:  # all skipped: no worker needed (none is started for a no-op rerun)
                bar.update(read)
                continue
            pending.append((pool.submit(_score_in_worker, jobs, features), read))
            if len(pending) > 2 * workers:  # bounded: memory and what a kill can lose
                write_oldest()
        while pending:
            write_oldest()
    return counts


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a folder, or s3://bucket/prefix")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores to use")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint instead of AWS")
    parser.add_argument(
        "--features",
        action="store_true",
        help="add the model's features to each row (what pneumonia.monitor's MMD test reads)",
    )
    args = parser.parse_args()
    if args.source.startswith("s3://"):
        items = s3_items(args.source, args.endpoint_url)
    else:
        items = folder_items(Path(args.source))
    counts = score(items, args.output, args.model_dir, args.batch_size, args.workers, args.features)
    print(json.dumps({"files": len(items), **counts, "output": str(args.output)}))


if __name__ == "__main__":
    main()
