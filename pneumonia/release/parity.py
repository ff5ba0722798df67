"""Parity of the served graph with Keras: probabilities, features, the gate's distance and the
class activation map against TensorFlow's Grad-CAM, on the whole test split."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths
from pneumonia.data.prepared import load_split
from pneumonia.release.export import OUTPUTS
from pneumonia.serving import inference

if TYPE_CHECKING:
    import keras
    import onnxruntime

    from pneumonia.release.release import Decision

log = logging.getLogger("export_onnx")


def parity(keras_p: np.ndarray, onnx_p: np.ndarray, threshold: float) -> dict:
    """How far two (N,) probability vectors differ, and in how many labels at `threshold`."""
    return {
        "images": len(keras_p),
        "max_abs_diff": float(np.max(np.abs(keras_p - onnx_p))),
        "labels_differing": int(np.sum((keras_p >= threshold) != (onnx_p >= threshold))),
    }


def check_parity(
    model: keras.Model,
    session: onnxruntime.InferenceSession,
    decision: Decision,
    tolerance: float,
    onnx_bytes: int,
) -> dict:
    """Keras (and numpy for the calibration and the gate) against ONNX on the whole test
    split, and the ONNX map against TensorFlow Grad-CAM on 20 test images; written to
    metrics/export_onnx.json."""
    # Keras (TensorFlow) only here: parity() stays light to import.
    from pneumonia.model.faithfulness import gradcam
    from pneumonia.model.network import predict_probabilities, with_explanations

    test_images, _ = load_split("test")
    _, features, cams = with_explanations(model).predict(
        test_images.astype(np.float32), batch_size=128, verbose=0
    )
    keras_p = decision.calibration.apply(cams.mean(axis=(1, 2)))
    names = [OUTPUTS[k] for k in ("raw_probability", "probability", "ood_distance", "cam")]
    raw, onnx_p, distance, onnx_cams, onnx_features = inference.run(
        session, test_images, [*names, OUTPUTS["features"]]
    )
    check = parity(keras_p, onnx_p.astype(np.float64), decision.threshold)
    check["max_abs_diff_uncalibrated"] = float(
        np.max(np.abs(predict_probabilities(model, test_images) - raw.reshape(-1)))
    )
    check["max_rel_diff_features"] = float(
        np.max(np.abs(features - onnx_features)) / max(float(np.abs(features).max()), 1e-6)
    )
    keras_distance = decision.gate.distance(features)
    check["max_rel_diff_distance"] = float(
        np.max(np.abs(keras_distance - distance) / np.maximum(keras_distance, 1e-6))
    )
    if decision.use_head is not None:  # the intended-use head: the same kind for each image
        (onnx_use,) = inference.run(session, test_images, [OUTPUTS["use"]])
        numpy_use = decision.use_head.logits(features)
        check["use_kinds_differing"] = int(
            np.sum(np.argmax(numpy_use, axis=1) != np.argmax(onnx_use, axis=1))
        )
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
    check["tolerance"] = tolerance
    check["passed"] = (
        check["max_abs_diff"] <= tolerance
        and check["max_abs_diff_uncalibrated"] <= tolerance
        and check["labels_differing"] == 0
        and check["max_rel_diff_distance"] <= 1e-3
        and check["max_rel_diff_features"] <= tolerance
        and check["gradcam_min_pearson"] >= 0.99
        and check.get("use_kinds_differing", 0) == 0
    )
    check["onnx_bytes"] = onnx_bytes
    paths.EXPORT_METRICS.write_text(json.dumps({"parity": check}, indent=2) + "\n")
    log.info(
        "parity on %d test images: max |diff| %.2e, %d labels differ, distance %.1e, "
        "Grad-CAM Pearson >= %.4f",
        check["images"],
        check["max_abs_diff"],
        check["labels_differing"],
        check["max_rel_diff_distance"],
        check["gradcam_min_pearson"],
    )
    return check
