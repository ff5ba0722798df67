"""What the JPEG decode size does to full-resolution originals (`DECODE_MARGIN` in
`pneumonia.images.prepare`): the held-out splits pooled, each 224 px image enlarged (cubic)
to an original's size and saved as JPEG quality 95, then prepared as the endpoint prepares
bytes and scored by a served graph at its threshold (on the calibrated probability); then a
whole request's time. The 224 px training copies are never scaled in the DCT; an original is
decoded at the smallest of 1/8, 1/4, 1/2 or whole that keeps both sides at least the margin
times the model's input.

    python -m benchmarks.decode_size [--margins 1 2 2.75 4] [--sides 1050 1400 2000 2900]
        [--model-dir D] [--requests 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

from pneumonia import paths
from pneumonia.evaluation.framing import held_out_files
from pneumonia.evaluation.shifts import original_size
from pneumonia.images import prepare
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_gray, decode_image
from pneumonia.images.framing import find_thorax
from pneumonia.machine import describe

SPLITS = ["test", "early", "late"]


def scores(session: ort.InferenceSession, output: str, inputs: np.ndarray) -> np.ndarray:
    """The served P(PNEUMONIA), calibrated (what the threshold reads), of (N, S, S, 1) uint8."""
    batches = range(0, len(inputs), 128)
    return np.concatenate(
        [
            session.run([output], {"image": inputs[i : i + 128].astype(np.float32)})[0]
            for i in batches
        ]
    ).reshape(-1)


def row(
    name: str, labels: np.ndarray, probabilities: np.ndarray, threshold: float, extra: str
) -> str:
    """One table row: AUC, sensitivity and specificity at the threshold, then `extra`."""
    called = probabilities >= threshold
    sensitivity = called[labels == 1].mean()
    specificity = 1 - called[labels == 0].mean()
    auc = roc_auc_score(labels, probabilities)
    return f"| {name:<24} | {auc:.3f} | {sensitivity:.3f} | {specificity:.3f} | {extra} |"


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="+", default=[1, 2, 2.75, 4])
    parser.add_argument("--sides", type=int, nargs="+", default=[1050, 1400, 2000, 2900])
    parser.add_argument(
        "--model-dir", type=Path, default=paths.MODELS, help="model.json, model.onnx"
    )
    parser.add_argument(
        "--requests", type=int, default=50, help="images timed through the endpoint (0: none)"
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    metadata = json.loads((args.model_dir / "model.json").read_text())
    config = PreprocessConfig(**metadata["preprocessing"])
    session = ort.InferenceSession(str(args.model_dir / "model.onnx"))
    files, labels = held_out_files(SPLITS)
    grays = [decode_image(path.read_bytes()) for path in files]
    print(
        f"{len(files)} held-out X-rays ({', '.join(SPLITS)}), model {metadata['model_version']} "
        f"at threshold {metadata['threshold']:.3f}, {describe()}"
    )
    print(
        "| original, decode margin | AUC | sensitivity | specificity "
        "| decoded side, thorax box height (median px); prepare p50 ms |"
    )
    print("|---|---:|---:|---:|---|")
    inputs = np.stack([prepare.prepare_image(gray, config) for gray in grays])
    print(
        row(
            "224 px as they are",
            labels,
            scores(session, metadata["outputs"]["probability"], inputs),
            metadata["threshold"],
            "224, -",
        )
    )
    for side in args.sides:
        originals = [original_size(gray, side) for gray in grays]
        for margin in args.margins:
            prepare.DECODE_MARGIN = margin
            decoded = [decode_gray(data, prepare.decode_size(config)) for data in originals[:100]]
            heights = [find_thorax(gray).height for gray in decoded]
            spent = []
            for data in originals[:100]:
                started = time.perf_counter()
                prepare.prepare_image(data, config)
                spent.append(1000 * (time.perf_counter() - started))
            inputs = np.stack([prepare.prepare_image(data, config) for data in originals])
            extra = f"{decoded[0].shape[0]}, {np.median(heights):.0f}; {np.median(spent):.2f}"
            name = f"{side} px, {margin:g}x"
            print(
                row(
                    name,
                    labels,
                    scores(session, metadata["outputs"]["probability"], inputs),
                    metadata["threshold"],
                    extra,
                ),
                flush=True,
            )
    if args.requests:
        request_table(args.model_dir, grays[: args.requests], args.sides, args.margins)


def request_table(
    model_dir: Path, grays: list[np.ndarray], sides: list[int], margins: list[float]
) -> None:
    """A whole request's p50 through the served model (`Classifier.classify`: decode, the
    cheap checks, the thorax box, the network, the view check, a refusal's reason; and with
    the heatmap), one thread, each image once after a warm-up pass."""
    from pneumonia.serving.classifier import Classifier
    from pneumonia.serving.requests import ClientError

    model = Classifier.load(model_dir)

    def p50(blobs: list[bytes], explain: bool) -> float:
        spent = []
        for repeat in range(2):  # the first pass warms up
            for data in blobs:
                started = time.perf_counter()
                with contextlib.suppress(ClientError):  # a refusal costs a request too
                    model.classify(data, explain=explain)
                if repeat:
                    spent.append(1000 * (time.perf_counter() - started))
        return float(np.median(spent))

    print(f"\nA request through the endpoint's classifier, p50 ms over {len(grays)} images")
    print("| original, decode margin | plain | with the heatmap |")
    print("|---|---:|---:|")
    for side in sides:
        blobs = [original_size(gray, side) for gray in grays]
        for margin in margins:
            prepare.DECODE_MARGIN = margin
            plain, explained = p50(blobs, False), p50(blobs, True)
            print(f"| {side} px, {margin:g}x | {plain:.2f} | {explained:.2f} |", flush=True)


if __name__ == "__main__":
    main()
