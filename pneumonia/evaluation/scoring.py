"""Scoring the network as the endpoint will answer: the served graph (in int8 when quantized)
in onnxruntime, the calibrated probability, the threshold and band chosen on validation, and
the held-out splits scored at them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths
from pneumonia.config import EvaluateParams
from pneumonia.data.prepared import load_files, load_split
from pneumonia.decision.band import band_metrics, conformal_band
from pneumonia.decision.calibration import fit_calibration, sigmoid
from pneumonia.evaluation.metrics import (
    CI_METRICS,
    Predict,
    Scores,
    binary_metrics,
    calibration_metrics,
    policy_thresholds,
    split_metrics,
)
from pneumonia.evaluation.shifts import shifted_probabilities
from pneumonia.images.config import PreprocessConfig

if TYPE_CHECKING:
    import keras

    from pneumonia.decision.band import Band
    from pneumonia.decision.calibration import Calibration

log = logging.getLogger("evaluate")


def choose_on_validation(
    predict: Predict, config: PreprocessConfig, params: EvaluateParams
) -> tuple[float, dict[str, float], dict, tuple[np.ndarray, np.ndarray]]:
    """(threshold of the chosen policy, every policy's threshold, val metrics at it,
    (labels, probabilities) of validation pooled with its shifted copies)."""
    val_images, val_labels = load_split("val")
    val_probabilities = predict(val_images)
    val_files = [paths.RAW / name for name in load_files("val")]
    # The robustness shifts only: pooling the framings too pushed youden_shifted's threshold
    # to 0.95-0.98 on two of three seeds and cost 6-7 points of sensitivity on test, while
    # specificity under the worst framing stayed below 0.5 (benchmarks/seeds_framing.jsonl).
    shifted_val = shifted_probabilities(predict, val_files, config, "shifted validation")
    thresholds = policy_thresholds(
        (val_labels, val_probabilities), list(shifted_val.values()), params
    )
    threshold = thresholds[params.threshold_policy]
    log.info("threshold %.4f (%s, chosen on val)", threshold, params.threshold_policy)
    val = binary_metrics(val_labels, val_probabilities, threshold)
    pooled = (
        np.concatenate([val_labels] * (1 + len(shifted_val))),
        np.concatenate([val_probabilities, *shifted_val.values()]),
    )
    return threshold, thresholds, {k: float(val[k]) for k in CI_METRICS}, pooled


def score_held_out(
    predict: Predict, threshold: float, params: EvaluateParams, seed: int
) -> tuple[dict, Scores]:
    """Metrics with intervals on test, then the id blocks: other periods of the hospital,
    never trained or tuned on. A block without both classes is skipped."""
    results: dict = {}
    scores: Scores = {}
    for split in paths.HELD_OUT:
        images, labels = load_split(split)
        if split != "test" and len(np.unique(labels)) < 2:
            log.warning("split %s has %d image(s), not both classes: skipped", split, len(labels))
            continue
        scores[split] = (labels, predict(images))
        results |= split_metrics(*scores[split], threshold, params, seed, split)
    return results, scores


class Scorer:
    """The network's pneumonia logit, pooled features and activation map, and the
    calibrated probability once `calibration` is set: one forward pass for all four.

    With `network` (`pneumonia.release.export.served_network`'s bytes), onnxruntime runs
    that graph, the network exactly as it is served (in int8 when quantized); without it,
    TensorFlow runs the Keras model."""

    def __init__(self, model: keras.Model, network: bytes | None = None) -> None:
        """Wrap a trained model (see pneumonia.model.with_explanations), or its served graph."""
        self.forward = _onnx_forward(network) if network is not None else _keras_forward(model)
        self.calibration: Calibration | None = None
        self.seen: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (N,), features (N, C), maps (N, h, w)) for (N, S, S, 1) images; the same
        images twice (a split and its shifted copies are scored for several reports) are run
        once."""
        key = hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest() + bytes(
            str(images.shape), "ascii"
        )
        if key not in self.seen:
            parts = [
                self.forward(images[i : i + 128].astype(np.float32))
                for i in range(0, max(len(images), 1), 128)  # an empty array: one empty run
            ]
            features = np.concatenate([part[0] for part in parts])
            cams = np.concatenate([part[1] for part in parts])
            self.seen[key] = (cams.mean(axis=(1, 2)).astype(np.float64), features, cams)
        return self.seen[key]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N,) calibrated P(PNEUMONIA)."""
        if self.calibration is None:
            raise RuntimeError("fit the calibration first")
        return self.calibration.apply(self.outputs(images)[0])


def _keras_forward(model: keras.Model) -> Callable[[np.ndarray], list[np.ndarray]]:
    """(features, maps) of a batch through the Keras model's `with_explanations`."""
    # TensorFlow only here: the framing and metric helpers stay light to import.
    import tensorflow as tf

    from pneumonia.model.network import with_explanations

    network = with_explanations(model)
    # One traced function for every call: Keras' predict() builds a data pipeline per call,
    # which costs more than the network on the many small arrays evaluate scores.
    forward = tf.function(lambda x: network(x, training=False), reduce_retracing=True)
    return lambda batch: [t.numpy() for t in forward(batch)[1:]]


def _onnx_forward(network: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    """(features, maps) of a batch through the served network's graph, on every core."""
    from pneumonia.serving import inference

    session = inference.session(network, threads=0)
    return lambda batch: session.run(["features", "cam"], {"image": batch})


def calibrate(scorer: Scorer) -> dict:
    """Fit Platt scaling on validation; sets `scorer.calibration`."""
    images, labels = load_split("val")
    logits = scorer.outputs(images)[0]
    scorer.calibration = fit_calibration(labels, logits)
    log.info(
        "calibration: platt, scale %.3f, shift %.3f (on %d validation images)",
        scorer.calibration.scale,
        scorer.calibration.shift,
        len(labels),
    )
    return {
        "method": scorer.calibration.method,
        "scale": scorer.calibration.scale,
        "shift": scorer.calibration.shift,
    }


def uncalibrated(scorer: Scorer, bins: int) -> dict[str, float]:
    """Brier score and ECE of the network's own sigmoid on the test split, for comparison."""
    images, labels = load_split("test")
    return calibration_metrics(labels, sigmoid(scorer.outputs(images)[0]), bins)


# Compared in metrics.json's decision.error_rates and, under each framing, framing_band.
ERROR_RATES = (0.01, 0.02, 0.03, 0.04, 0.08)


def other_bands(pooled_val: tuple[np.ndarray, np.ndarray], threshold: float) -> dict[str, Band]:
    """The band each of ERROR_RATES would give, keyed as metrics.json writes them."""
    return {str(rate): conformal_band(*pooled_val, rate, threshold) for rate in ERROR_RATES}


def decision_report(
    pooled_val: tuple[np.ndarray, np.ndarray], scores: Scores, threshold: float, error_rate: float
) -> tuple[Band, dict]:
    """The indeterminate band from validation (clean and shifted), and how it does on each
    held-out split: share indeterminate, accuracy and rates on the decided cases."""
    band = conformal_band(*pooled_val, error_rate, threshold)
    report: dict = {"low": band.low, "high": band.high, "error_rate": error_rate}
    report["val_pooled"] = band_metrics(*pooled_val, band)
    for split, (labels, probabilities) in scores.items():
        report[split] = band_metrics(labels, probabilities, band)
    report["error_rates"] = {  # the evidence for the chosen rate: what others would give
        rate: {
            split: {
                key: value
                for key, value in band_metrics(*scored, other).items()
                if key in ("share_indeterminate", "accuracy_decided")
            }
            for split, scored in scores.items()
        }
        for rate, other in other_bands(pooled_val, threshold).items()
    }
    log.info(
        "decision band [%.3f, %.3f): test %.1f%% indeterminate, accuracy %.3f on the decided",
        band.low,
        band.high,
        100 * report["test"]["share_indeterminate"],
        report["test"]["accuracy_decided"],
    )
    return band, report
