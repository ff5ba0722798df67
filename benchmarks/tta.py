"""Test-time augmentation under framing: does averaging the model over an image and its
mirror hold the framing floors better than the image alone?

Needs `make repro` (models/model.keras, the prepared splits, data/raw). Through evaluate's own
code: `Scorer` and `calibrate` (Platt on validation), `framed` (each held-out image reframed
from its thorax box, as the evaluation's framing report does), `threshold_for` (the
committed policy, on validation: with TTA, on validation's TTA probabilities). TTA here is
the mean of the calibrated probabilities of the image and its left-right mirror (the model
is trained with mirroring), so it costs a second forward pass per request.

    python -m benchmarks.tta

Prints, per framing (held-out splits pooled), AUC, sensitivity and specificity at each
variant's own threshold, and writes the table to benchmarks/tta.txt.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.config import load_params
    from pneumonia.data.prepared import load_split, preprocessing
    from pneumonia.decision.rates import binary_metrics
    from pneumonia.evaluation.framing import framed, held_out_files
    from pneumonia.evaluation.metrics import threshold_for
    from pneumonia.evaluation.scoring import Scorer, calibrate
    from pneumonia.evaluation.shifts import FRAMING
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.machine import describe

    params = load_params(ROOT / "params.yaml")
    prepared = preprocessing()
    prepared.pop("labels")
    config = PreprocessConfig.model_validate(prepared)
    scorer = Scorer(keras.models.load_model(paths.KERAS_MODEL))
    calibrate(scorer)

    def tta(images: np.ndarray) -> np.ndarray:
        return (scorer(images) + scorer(images[:, :, ::-1])) / 2

    val_images, val_labels = load_split("val")
    thresholds = {
        "image": threshold_for(val_labels, scorer(val_images), params.evaluate),
        "image + mirror": threshold_for(val_labels, tta(val_images), params.evaluate),
    }
    files, labels = held_out_files(["test", "early", "late"])
    lines = [
        f"machine: {describe()}; models/model.keras of this checkout; thresholds on validation "
        f"({params.evaluate.threshold_policy}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in thresholds.items()),
        f"held-out splits pooled ({len(files)} images); AUC / sensitivity / specificity",
        "",
        "| framing | image | image + mirror |",
        "|---|---|---|",
    ]
    worst: dict[str, dict[str, float]] = {name: {} for name in thresholds}
    for name, shift in {"unchanged": lambda gray: gray, **FRAMING}.items():
        inputs, _ = framed(files, shift, config)
        cells = []
        for variant, predict in (("image", scorer), ("image + mirror", tta)):
            m = binary_metrics(labels, predict(inputs), thresholds[variant])
            cells.append(f"{m['roc_auc']:.3f} / {m['sensitivity']:.3f} / {m['specificity']:.3f}")
            for key in ("roc_auc", "sensitivity", "specificity"):
                worst[variant][key] = min(worst[variant].get(key, 1.0), m[key])
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        print(lines[-1], flush=True)
    lines.append(
        "| **worst** | "
        + " | ".join(
            " / ".join(f"{worst[v][k]:.3f}" for k in ("roc_auc", "sensitivity", "specificity"))
            for v in thresholds
        )
        + " |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks/tta.txt").write_text(text)


if __name__ == "__main__":
    main()
