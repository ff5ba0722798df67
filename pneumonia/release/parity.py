"""Parity of the served graph, on the whole test split: its probabilities against what evaluate
scored, its decision layer against numpy, its network against Keras (within the quantization's
tolerance when it is int8), and its class activation map against TensorFlow's Grad-CAM."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pneumonia import paths
from pneumonia.data.prepared import load_files, load_split
from pneumonia.release.export import OUTPUTS
from pneumonia.serving import inference

if TYPE_CHECKING:
    import keras
    import onnxruntime

    from pneumonia.config import ExportParams
    from pneumonia.release.release import Decision

log = logging.getLogger("export_onnx")


def parity(keras_p: np.ndarray, onnx_p: np.ndarray, threshold: float, tie: float = 0.0) -> dict:
    """How far two (N,) probability vectors differ, and in how many labels at `threshold`.

    With `tie` above 0, a label that flips while both probabilities lie within `tie` of the
    threshold is a tie broken by rounding, not a difference (`labels_tied`, reported only
    then): an int8 network's outputs take few distinct values, and a test image can sit on
    the threshold (1e-7 apart in two runs of the same graph at 112 px, when the threshold was
    a validation score; it now lies midway between two, pneumonia.decision.rates).
    """
    flipped = (keras_p >= threshold) != (onnx_p >= threshold)
    tied = flipped & (np.abs(keras_p - threshold) <= tie) & (np.abs(onnx_p - threshold) <= tie)
    check = {
        "images": len(keras_p),
        "max_abs_diff": float(np.max(np.abs(keras_p - onnx_p))),
        "labels_differing": int(np.sum(flipped & ~tied)),
    }
    return check | ({"labels_tied": int(np.sum(tied))} if tie > 0 else {})


def check_parity(
    model: keras.Model,
    session: onnxruntime.InferenceSession,
    decision: Decision,
    tolerances: Tolerances,
    onnx_bytes: int,
) -> dict:
    """The served graph on the whole test split against what evaluate scored
    (metrics/evaluate/predictions.csv), its decision layer against numpy on its own features,
    and its network against Keras (exactly, or within the quantization's tolerance when it is
    int8); its map against TensorFlow's Grad-CAM on 20 test images. Written to
    metrics/export_onnx.json."""
    # Keras (TensorFlow) only here: parity() stays light to import.
    from pneumonia.model.faithfulness import gradcam
    from pneumonia.model.network import with_explanations

    test_images, _ = load_split("test")
    names = [OUTPUTS[k] for k in ("raw_probability", "probability", "ood_distance", "cam")]
    names += [OUTPUTS["features"]] + ([OUTPUTS["use"]] if decision.use_head is not None else [])
    raw, onnx_p, distance, onnx_cams, onnx_features, *onnx_use = inference.run(
        session, test_images, names
    )  # one pass: the intended-use logits with the rest, when the graph has the head
    onnx_p = onnx_p.astype(np.float64)
    evaluated = evaluated_test_scores()
    # The served graph is the one scored: the same labels, but for ties at the threshold.
    check = parity(evaluated, onnx_p, decision.threshold, tie=tolerances.served)
    check["max_rel_diff_distance"] = float(
        np.max(
            np.abs(decision.gate.distance(onnx_features) - distance) / np.maximum(distance, 1e-6)
        )
    )
    if decision.use_head is not None:  # the intended-use head: the same kind for each image
        numpy_use = decision.use_head.logits(onnx_features)
        check["use_kinds_differing"] = int(
            np.sum(np.argmax(numpy_use, axis=1) != np.argmax(onnx_use[0], axis=1))
        )
    # The network against Keras: what tf2onnx (and the quantization) changed.
    # One Keras pass: its first output is the model's own probability, unchanged.
    keras_raw, features, cams = with_explanations(model).predict(
        test_images.astype(np.float32), batch_size=128, verbose=0
    )
    keras_p = decision.calibration.apply(cams.mean(axis=(1, 2)))
    check["keras"] = parity(keras_p, onnx_p, decision.threshold) | {
        "max_abs_diff_uncalibrated": float(
            np.max(np.abs(keras_raw.reshape(-1).astype(np.float64) - raw.reshape(-1)))
        ),
        "max_rel_diff_features": float(
            np.max(np.abs(features - onnx_features)) / max(float(np.abs(features).max()), 1e-6)
        ),
        "tolerance": tolerances.keras,
    }
    # Grad-CAM's weighted sum before its ReLU against the graph's map (the served heatmap is
    # the ReLU of both): equal up to the factor h * w when the export is right.
    count = min(20, len(test_images))
    reference = gradcam(model, test_images[:count], rectify=False).reshape(count, -1)
    check["gradcam_min_pearson"] = float(
        min(
            np.corrcoef(a, b)[0, 1]
            for a, b in zip(reference, onnx_cams[:count].reshape(count, -1), strict=True)
        )
    )
    check["tolerance"] = tolerances.served
    check["quantize"] = tolerances.quantize
    check["passed"] = passed(check, tolerances)
    check["onnx_bytes"] = onnx_bytes
    paths.EXPORT_METRICS.write_text(json.dumps({"parity": check}, indent=2) + "\n")
    log.info(
        "parity on %d test images: max |diff| %.2e against evaluate, %.2e against Keras "
        "(%d labels differ, %s), distance %.1e, Grad-CAM Pearson >= %.4f",
        check["images"],
        check["max_abs_diff"],
        check["keras"]["max_abs_diff"],
        check["keras"]["labels_differing"],
        tolerances.quantize,
        check["max_rel_diff_distance"],
        check["gradcam_min_pearson"],
    )
    return check


def evaluated_test_scores() -> np.ndarray:
    """Evaluate's calibrated probabilities for the test split (metrics/evaluate/predictions.csv),
    in the split's order; a file that is not that split, row for row, is refused."""
    predictions = pd.read_csv(paths.PREDICTIONS)
    expected = [str(name) for name in load_files("test")]
    if predictions["file"].tolist() != expected:
        raise ValueError(
            f"{paths.PREDICTIONS} does not list the test split's {len(expected)} images in "
            "order: dvc repro evaluate"
        )
    return predictions["probability_pneumonia"].to_numpy(dtype=np.float64)


def passed(check: dict, tolerances: Tolerances) -> bool:
    """Served = scored (to `served`, no label differing), the decision layer = numpy, and the
    network = Keras: to `served` as well unquantized; in int8, its probabilities and its
    features (relative to their largest) within `keras` (labels may differ, and are counted)."""
    keras_check = check["keras"]
    exact = tolerances.quantize == "none"
    return (
        check["max_abs_diff"] <= tolerances.served
        and check["labels_differing"] == 0
        and check["max_rel_diff_distance"] <= 1e-3
        and check.get("use_kinds_differing", 0) == 0
        and keras_check["max_abs_diff"] <= tolerances.keras
        and keras_check["max_abs_diff_uncalibrated"] <= tolerances.keras
        and (not exact or keras_check["labels_differing"] == 0)
        and keras_check["max_rel_diff_features"]
        <= (tolerances.served if exact else tolerances.keras)
        and check["gradcam_min_pearson"] >= (0.99 if exact else 0.95)
    )


@dataclass(frozen=True)
class Tolerances:
    """export_onnx's parity bounds: `served` against evaluate's scores, `keras` against the
    Keras model (`served` too when the network is not quantized)."""

    served: float
    keras: float
    quantize: str

    @classmethod
    def of(cls, params: ExportParams) -> Tolerances:
        """The bounds `params` set."""
        quantized = params.quantize != "none"
        keras = params.quantization_tolerance if quantized else params.parity_tolerance
        return cls(params.parity_tolerance, keras, params.quantize)
