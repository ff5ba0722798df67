"""The drift monitor's reference: validation's labels, calibrated probabilities and features, one
JSON line per image, in the form `python -m pneumonia.batch --features` writes its rows. Written
by evaluate, read by `pneumonia.ops.monitor`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("NORMAL", "PNEUMONIA")  # index = class id, as params.yaml's base.labels


def write_reference(
    path: Path,
    labels: np.ndarray,
    probabilities: np.ndarray,
    features: np.ndarray,
    *,
    files: Sequence[str] | None = None,
    model_version: str | None = None,
) -> None:
    """Write the monitor's reference: one row per validation image, its label (0/1 ->
    NORMAL/PNEUMONIA), calibrated P(PNEUMONIA) and (N, F) features, in the form
    pneumonia.batch writes its rows with `--features`. `files` are optional, and left out by
    default: they carry patient ids, and the monitor does not need them."""
    if not len(labels) == len(probabilities) == len(features):
        raise ValueError("labels, probabilities and features must have one row per image")
    if files is not None and len(files) != len(labels):
        raise ValueError("files must have one name per image")
    with path.open("w") as sink:
        for index, (label, probability, vector) in enumerate(
            zip(labels, probabilities, features, strict=True)
        ):
            row: dict[str, Any] = {} if files is None else {"file": str(files[index])}
            row |= {
                "label": LABELS[int(label)],
                "probability_pneumonia": float(probability),
                # float32 is what the network computes; 6 significant digits keep it.
                "features": [float(f"{value:.6g}") for value in vector],
            }
            if model_version is not None:
                row["modelVersion"] = model_version
            sink.write(json.dumps(row) + "\n")
