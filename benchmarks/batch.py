"""Batch scoring's throughput against the endpoint's one-request-at-a-time rate.

Needs the pipeline's outputs (`make repro`). The dataset's images (data/raw: 224x224 JPEGs)
copied to a temporary folder; "endpoint" classifies them one at a time on one thread, as one Lambda
execution environment does; "batch" is `pneumonia.batch.score` with the cores given
(one worker process each, batched inference), from an empty output, then its rerun (all
skipped).

    python -m benchmarks.batch [--images 5190] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from pneumonia.machine import describe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5190)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    import cv2

    from pneumonia.serving.batch import folder_items, score
    from pneumonia.serving.classifier import Classifier
    from pneumonia.serving.requests import ClientError

    raw = ROOT / "data" / "raw"
    names = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.jpeg"))[: args.images]
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source"
        for name in names:
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "data" / "raw" / name, target)
        cv2.setNumThreads(1)
        single = Classifier.load(ROOT / "models", threads=1)
        started = time.perf_counter()
        for item in folder_items(source):
            with contextlib.suppress(ClientError):
                single.classify(item.read())
        endpoint = len(names) / (time.perf_counter() - started)

        output = Path(folder) / "predictions.jsonl"
        started = time.perf_counter()  # worker start-up (each loads the model) included
        score(folder_items(source), output, ROOT / "models", args.batch_size, args.workers)
        batch = len(names) / (time.perf_counter() - started)
        started = time.perf_counter()
        score(folder_items(source), output, ROOT / "models", args.batch_size, args.workers)
        rerun = len(names) / (time.perf_counter() - started)
    print(f"machine: {describe()}; {len(names)} images of data/raw (224x224 JPEG)")
    print("| path | images/s | vs endpoint |")
    print("|---|---:|---:|")
    print(f"| endpoint, one request at a time, 1 thread | {endpoint:.0f} | 1.00x |")
    print(
        f"| batch, {args.workers} worker processes, batches of {args.batch_size} | {batch:.0f} | "
        f"{batch / endpoint:.2f}x |"
    )
    print(f"| batch rerun (everything skipped) | {rerun:.0f} | {rerun / endpoint:.2f}x |")


if __name__ == "__main__":
    main()
