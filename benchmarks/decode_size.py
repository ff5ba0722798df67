"""What the JPEG decode size does to full-resolution originals (`DECODE_MARGIN` in
`pneumonia.images.prepare`): the held-out splits pooled, each 224 px image enlarged (cubic)
to an original's size and saved as JPEG quality 95, then prepared as the endpoint prepares
bytes and scored by a served graph at its threshold (on the calibrated probability). The
224 px training copies are never scaled in the DCT; an original is, to the least 1/2, 1/4 or
1/8 that leaves both sides at least the margin times the model's input.

    python -m benchmarks.decode_size [--margins 1 2 4] [--sides 1050 1400 2000 2900] [--model-dir D]
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--margins", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sides", type=int, nargs="+", default=[1050, 1400, 2000, 2900])
    parser.add_argument(
        "--model-dir", type=Path, default=paths.MODELS, help="model.json, model.onnx"
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
            name = f"{side} px, {margin}x"
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


if __name__ == "__main__":
    main()
