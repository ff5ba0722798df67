"""Stage 4: evaluate the trained model on the held-out splits: test, early and late.

The decision threshold is chosen on the validation split (and its shifted copies) by
`evaluate.threshold_policy`, never on a held-out split. Writes metrics/evaluate (dvclive:
metrics.json, ROC / precision-recall / confusion-matrix / calibration plots)
and metrics/evaluate/predictions.csv; logs the same to the training's MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from pneumonia import paths, tracking
from pneumonia.config import EvaluateParams, load_params
from pneumonia.imaging import PreprocessConfig, decode_image, prepare_image
from pneumonia.prepared import load_files, load_split, preprocessing

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from pneumonia.decision import Band, Calibration, Gate

log = logging.getLogger("evaluate")

CI_METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1")
ROBUSTNESS_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


def choose_threshold(
    labels: np.ndarray, probabilities: np.ndarray, params: EvaluateParams
) -> float:
    """The decision threshold, from validation predictions only.

    youden: maximises sensitivity + specificity - 1.
    youden_shifted: the same, on validation pooled with its copies under every shift of
      SHIFTS (the caller passes the pooled arrays): a threshold that holds when the framing
      or exposure changes, where the clean optimum sits on the edge of the normal scores.
    target_sensitivity: the highest threshold whose sensitivity reaches the target.
    fixed: evaluate.fixed_threshold.
    """
    if params.threshold_policy == "fixed":
        return params.fixed_threshold
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # roc_curve's first threshold is +inf
    if params.threshold_policy in ("youden", "youden_shifted"):
        return float(thresholds[np.argmax(true_positive_rate - false_positive_rate)])
    reaching = np.flatnonzero(true_positive_rate >= params.target_sensitivity)
    return float(thresholds[reaching[0]])  # thresholds decrease, so the first is the highest


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Accuracy, ROC AUC, sensitivity, specificity, precision, F1 at a threshold."""
    predicted = probabilities >= threshold
    positive = labels == 1
    true_pos = int(np.sum(predicted & positive))
    true_neg = int(np.sum(~predicted & ~positive))
    false_pos = int(np.sum(predicted & ~positive))
    false_neg = int(np.sum(~predicted & positive))
    sensitivity = true_pos / max(true_pos + false_neg, 1)
    precision = true_pos / max(true_pos + false_pos, 1)
    both_classes = positive.any() and (~positive).any()
    return {
        "accuracy": (true_pos + true_neg) / len(labels),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "sensitivity": sensitivity,
        "specificity": true_neg / max(true_neg + false_pos, 1),
        "precision": precision,
        "f1": 2 * precision * sensitivity / max(precision + sensitivity, 1e-12),
        "true_positives": true_pos,
        "true_negatives": true_neg,
        "false_positives": false_pos,
        "false_negatives": false_neg,
    }


def bootstrap_intervals(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, samples: int, seed: int
) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap intervals of CI_METRICS, resampling images with replacement."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in CI_METRICS}
    for _ in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        if labels[index].min() == labels[index].max():
            continue  # a one-class resample has no AUC; skip it
        metrics = binary_metrics(labels[index], probabilities[index], threshold)
        for name in CI_METRICS:
            draws[name].append(metrics[name])
    return {
        name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
        for name, values in draws.items()
    }


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict[str, float]:
    """Brier score and expected calibration error (equal-width bins)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(probabilities[members].mean() - labels[members].mean())
    return {
        "brier": float(np.mean((probabilities - labels) ** 2)),
        "ece": float(error),
    }


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    params: EvaluateParams,
    seed: int,
    split: str = "test",
) -> dict:
    """Every metric of one held-out split with its interval, as the nested dict dvclive writes."""
    point = binary_metrics(labels, probabilities, threshold)
    intervals = bootstrap_intervals(
        labels, probabilities, threshold, params.bootstrap_samples, seed
    )
    return {
        split: {
            **{name: float(point[name]) for name in CI_METRICS},
            **calibration(labels, probabilities, params.calibration_bins),
            "images": len(labels),
            "prevalence": float(labels.mean()),
        },
        f"{split}_ci95_low": {name: low for name, (low, _) in intervals.items()},
        f"{split}_ci95_high": {name: high for name, (_, high) in intervals.items()},
        f"{split}_confusion": {
            key: point[key]
            for key in ("true_positives", "true_negatives", "false_positives", "false_negatives")
        },
    }


def worst_of(results: dict, splits: list[str]) -> dict:
    """Each headline metric at its lowest over the held-out splits, and which split it was."""
    worst = {}
    for metric in ROBUSTNESS_METRICS:
        split = min(splits, key=lambda name: results[name][metric])
        worst[metric] = results[split][metric]
        worst[f"{metric}_split"] = split
    return worst


# ---------------------------------------------------------------- robustness

# Shifts a different scanner or PACS could apply, on the decoded image (H, W) float in [0, 1].
# Each returns what prepare_image accepts: an array, or bytes when the shift is an encoding.
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray | bytes]] = {
    "brighter +0.15": lambda gray: np.clip(gray + 0.15, 0, 1),
    "darker -0.15": lambda gray: np.clip(gray - 0.15, 0, 1),
    "contrast x0.6": lambda gray: np.clip(gray.mean() + (gray - gray.mean()) * 0.6, 0, 1),
    "gamma 1.5": lambda gray: gray**1.5,
    "jpeg quality 20": lambda gray: _jpeg(gray, 20),
    "resolution 1/4": lambda gray: _rescale(gray, 0.25),
    "rotation +10 deg": lambda gray: _rotate(gray, 10),
    "rotation -10 deg": lambda gray: _rotate(gray, -10),
    # Framing: another collimation, field of view or orientation on the same patients.
    "border crop 8%": lambda gray: _crop(gray, 0.08),
    "padding 8%": lambda gray: _pad(gray, 0.08),
    "mirror": lambda gray: np.ascontiguousarray(gray[:, ::-1]),
}


def _crop(gray: np.ndarray, share: float) -> np.ndarray:
    """The image without `share` of its height and width on every side."""
    height, width = gray.shape
    top, left = round(height * share), round(width * share)
    return gray[top : height - top, left : width - left]


def _pad(gray: np.ndarray, share: float) -> np.ndarray:
    """A black border of `share` of the height and width on every side."""
    height, width = gray.shape
    top, left = round(height * share), round(width * share)
    return np.pad(gray, ((top, top), (left, left)))


def _jpeg(gray: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", np.rint(gray * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return encoded.tobytes()


def _rescale(gray: np.ndarray, factor: float) -> np.ndarray:
    height, width = gray.shape
    small = cv2.resize(
        gray,
        (max(1, round(width * factor)), max(1, round(height * factor))),
        interpolation=cv2.INTER_AREA,
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _rotate(gray: np.ndarray, degrees: float) -> np.ndarray:
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def shifted_inputs(raw_files: list[Path], shift: Callable, config: PreprocessConfig) -> np.ndarray:
    """(N, S, S, 1) uint8: each raw image decoded, shifted, then prepared as usual."""
    return np.stack(
        [prepare_image(shift(decode_image(path.read_bytes())), config) for path in raw_files]
    )


def shifted_probabilities(
    predict: Callable[[np.ndarray], np.ndarray],
    raw_files: list[Path],
    config: PreprocessConfig,
    description: str,
) -> dict[str, np.ndarray]:
    """P(PNEUMONIA) of each raw image under every shift of SHIFTS, by shift name."""
    return {
        name: predict(shifted_inputs(raw_files, shift, config))
        for name, shift in tqdm(SHIFTS.items(), desc=description, unit="shift")
    }


def robustness(shifted: dict[str, np.ndarray], labels: np.ndarray, threshold: float) -> dict:
    """Metrics of each shifted copy of a split, at the same threshold."""
    report = {}
    for name, probabilities in shifted.items():
        metrics = binary_metrics(labels, probabilities, threshold)
        report[name] = {key: float(metrics[key]) for key in ROBUSTNESS_METRICS}
    return report


def robustness_figure(clean: dict, shifted: dict) -> Figure:
    """Grouped bars: each metric, clean against every shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["clean", *shifted]
    rows = [clean, *shifted.values()]
    figure, axis = plt.subplots(figsize=(10, 5), layout="constrained")
    width = 0.8 / len(ROBUSTNESS_METRICS)
    for index, metric in enumerate(ROBUSTNESS_METRICS):
        axis.bar(
            np.arange(len(names)) + index * width,
            [row[metric] for row in rows],
            width,
            label=metric,
        )
    axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=25, ha="right")
    axis.set_ylim(0.5, 1.0)
    axis.set_ylabel("test split, threshold from validation")
    axis.set_title("Robustness to acquisition shifts")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=len(ROBUSTNESS_METRICS))
    axis.grid(axis="y", alpha=0.3)
    return figure


def held_out_figure(scores: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> Figure:
    """ROC curve of every held-out split, with the validation threshold marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6), layout="constrained")
    for split, (labels, probabilities) in scores.items():
        fpr, tpr, _ = roc_curve(labels, probabilities)
        at = binary_metrics(labels, probabilities, threshold)
        auc = roc_auc_score(labels, probabilities)
        (line,) = axis.plot(fpr, tpr, label=f"{split} (AUC {auc:.3f}, n={len(labels)})")
        axis.plot(1 - at["specificity"], at["sensitivity"], "o", color=line.get_color())
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(f"Held-out splits; dots: the validation threshold {threshold:.3f}")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    return figure


POLICIES = ("youden", "youden_shifted", "target_sensitivity")


def policy_thresholds(
    val: tuple[np.ndarray, np.ndarray],
    shifted_val: list[np.ndarray],
    params: EvaluateParams,
) -> dict[str, float]:
    """The threshold every policy would choose, from validation (clean and shifted) only."""
    labels, probabilities = val
    pooled_labels = np.concatenate([labels] * (1 + len(shifted_val)))
    pooled = np.concatenate([probabilities, *shifted_val])
    chosen = {}
    for name in POLICIES:
        policy = params.model_copy(update={"threshold_policy": name})
        if name == "youden_shifted":
            chosen[name] = choose_threshold(pooled_labels, pooled, policy)
        else:
            chosen[name] = choose_threshold(labels, probabilities, policy)
    chosen["fixed"] = params.fixed_threshold
    return chosen


Predict = Callable[[np.ndarray], np.ndarray]
Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, probabilities)


def choose_on_validation(
    predict: Predict, config: PreprocessConfig, params: EvaluateParams
) -> tuple[float, dict[str, float], dict, tuple[np.ndarray, np.ndarray]]:
    """(threshold of the chosen policy, every policy's threshold, val metrics at it,
    (labels, probabilities) of validation pooled with its shifted copies)."""
    val_images, val_labels = load_split("val")
    val_probabilities = predict(val_images)
    val_files = [paths.RAW / name for name in load_files("val")]
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
        results |= evaluate(*scores[split], threshold, params, seed, split)
    return results, scores


def policy_table(thresholds: dict[str, float], scores: Scores) -> dict:
    """What each threshold policy would give on each split: the evidence for the chosen one."""
    return {
        name: {
            "threshold": value,
            **{
                split: {
                    key: float(metrics[key]) for key in ("accuracy", "sensitivity", "specificity")
                }
                for split, (labels, probabilities) in scores.items()
                for metrics in [binary_metrics(labels, probabilities, value)]
            },
        }
        for name, value in thresholds.items()
    }


def log_plots(
    results: dict,
    scores: Scores,
    threshold: float,
    names: list[str],
    calibration_bins: int,
    figures: dict[str, Figure],
) -> None:
    """metrics.json and the plots `dvc plots` reads, through dvclive; `figures` by file name."""
    from dvclive import Live

    test_labels, test_probabilities = scores["test"]
    predicted = (test_probabilities >= threshold).astype(int)
    with Live(dir=str(paths.EVALUATE_LIVE), save_dvc_exp=False, dvcyaml=None) as live:
        live.summary = results
        live.log_sklearn_plot("roc", test_labels, test_probabilities, name="roc.json")
        live.log_sklearn_plot(
            "precision_recall", test_labels, test_probabilities, name="precision_recall.json"
        )
        live.log_sklearn_plot(
            "confusion_matrix",
            [names[i] for i in test_labels],
            [names[i] for i in predicted],
            name="confusion_matrix.json",
        )
        live.log_sklearn_plot(
            "calibration",
            test_labels,
            test_probabilities,
            name="calibration.json",
            n_bins=calibration_bins,
        )
        clean = {key: results["test"][key] for key in ROBUSTNESS_METRICS}
        live.log_plot(
            "robustness",
            [
                {"shift": name, **values}
                for name, values in {"clean": clean, **results["robustness"]}.items()
            ],
            x="roc_auc",
            y="shift",
            template="bar_horizontal",
            title="Test AUC under shifts",
        )
        live.log_image("robustness.png", robustness_figure(clean, results["robustness"]))
        live.log_plot(
            "held_out",
            [
                {"split": split, **{key: results[split][key] for key in ROBUSTNESS_METRICS}}
                for split in scores
            ],
            x="roc_auc",
            y="split",
            template="bar_horizontal",
            title="AUC on each held-out split",
        )
        live.log_image("held_out_roc.png", held_out_figure(scores, threshold))
        for name, figure in figures.items():
            live.log_image(name, figure)


def write_predictions(
    test_files: list[Path], scores: Scores, threshold: float, names: list[str], band: Band
) -> None:
    """metrics/evaluate/predictions.csv: one row per test image."""
    labels, probabilities = scores["test"]
    pd.DataFrame(
        {
            "file": [path.relative_to(paths.RAW).as_posix() for path in test_files],
            "label": [names[i] for i in labels],
            "probability_pneumonia": probabilities,
            "predicted_label": [names[i] for i in (probabilities >= threshold).astype(int)],
            "decision": band.decide(probabilities),
        }
    ).to_csv(paths.PREDICTIONS, index=False)


def write_reference(scorer: Scorer) -> None:
    """metrics/evaluate/reference.jsonl: the validation split's labels, calibrated
    probabilities and features, `python -m pneumonia.monitor --reference` (no file names:
    they carry patient ids)."""
    from pneumonia import monitor

    images, labels = load_split("val")
    monitor.write_reference(paths.REFERENCE, labels, scorer(images), scorer.outputs(images)[1])


def track(results: dict, held_out: list[str], threshold: float) -> None:
    """The figures into the training run in MLflow, and one log line per split."""
    train_info = json.loads(paths.TRAIN_INFO.read_text())
    tracking.configure()
    with tracking.start_run("evaluate", run_id=train_info.get("mlflow_run_id")):
        tracking.log_metrics({"threshold": threshold})
        for split in held_out:
            tracking.log_metrics({f"{split}_{k}": v for k, v in results[split].items()})
        tracking.log_artifact(paths.EVALUATE_LIVE / "metrics.json", "evaluate")
    for split in held_out:
        log.info(
            "%s: AUC %.3f [%.3f, %.3f], sensitivity %.3f, specificity %.3f, accuracy %.3f",
            split,
            results[split]["roc_auc"],
            results[f"{split}_ci95_low"]["roc_auc"],
            results[f"{split}_ci95_high"]["roc_auc"],
            results[split]["sensitivity"],
            results[split]["specificity"],
            results[split]["accuracy"],
        )


# ---------------------------------------------------------------- what the endpoint answers


class Scorer:
    """The network's pneumonia logit, pooled features and activation map, and the
    calibrated probability once `calibration` is set: one forward pass for all four."""

    def __init__(self, model: keras.Model) -> None:
        """Wrap a trained model (see pneumonia.model.with_explanations)."""
        import tensorflow as tf

        from pneumonia.model import with_explanations

        self.network = with_explanations(model)
        # One traced function for every call: Keras' predict() builds a data pipeline per
        # call, which costs more than the network on the many small arrays evaluate scores.
        self.forward = tf.function(lambda x: self.network(x, training=False), reduce_retracing=True)
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
                [t.numpy() for t in self.forward(images[i : i + 128].astype(np.float32))[1:]]
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


def calibrate(scorer: Scorer) -> dict:
    """Fit Platt scaling on validation; sets `scorer.calibration`."""
    from pneumonia.decision import fit_calibration

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
    from pneumonia.decision import sigmoid

    images, labels = load_split("test")
    return calibration(labels, sigmoid(scorer.outputs(images)[0]), bins)


ERROR_RATES = (0.01, 0.02, 0.04, 0.08)  # compared in metrics.json's decision.error_rates


def decision_report(
    pooled_val: tuple[np.ndarray, np.ndarray], scores: Scores, threshold: float, error_rate: float
) -> tuple[Band, dict]:
    """The indeterminate band from validation (clean and shifted), and how it does on each
    held-out split: share indeterminate, accuracy and rates on the decided cases."""
    from pneumonia.decision import band_metrics, conformal_band

    band = conformal_band(*pooled_val, error_rate, threshold)
    report: dict = {"low": band.low, "high": band.high, "error_rate": error_rate}
    report["val_pooled"] = band_metrics(*pooled_val, band)
    for split, (labels, probabilities) in scores.items():
        report[split] = band_metrics(labels, probabilities, band)
    report["error_rates"] = {  # the evidence for the chosen rate: what others would give
        str(rate): {
            split: {
                key: value
                for key, value in band_metrics(*scored, other).items()
                if key in ("share_indeterminate", "accuracy_decided")
            }
            for split, scored in scores.items()
        }
        for rate in ERROR_RATES
        for other in [conformal_band(*pooled_val, rate, threshold)]
    }
    log.info(
        "decision band [%.3f, %.3f): test %.1f%% indeterminate, accuracy %.3f on the decided",
        band.low,
        band.high,
        100 * report["test"]["share_indeterminate"],
        report["test"]["accuracy_decided"],
    )
    return band, report


def split_features(
    scorer: Scorer, split: str, config: PreprocessConfig, every: int = 1
) -> np.ndarray:
    """Pooled features of a split's images, and of every `every`-th image under each shift of
    SHIFTS: exposure, resolution and framing vary between real X-rays, so the gate learns
    them as X-rays, not as outliers."""
    images, _ = load_split(split)
    files = [paths.RAW / name for name in load_files(split)][::every]
    features = [scorer.outputs(images)[1]]
    for name in tqdm(SHIFTS, desc=f"gate features ({split})", unit="shift"):
        features.append(scorer.outputs(shifted_inputs(files, SHIFTS[name], config))[1])
    return np.concatenate(features)


def fit_gate(scorer: Scorer, config: PreprocessConfig, false_rejection_rate: float) -> Gate:
    """The learned check: mean and covariance of the training split's features (a quarter
    of it also under each shift), threshold on validation and its shifted copies."""
    from pneumonia.decision import fit_feature_model, with_threshold

    gate = fit_feature_model(split_features(scorer, "train", config, every=4))
    val_distances = gate.distance(split_features(scorer, "val", config))
    gate = with_threshold(gate, val_distances, false_rejection_rate)
    log.info(
        "gate: distance threshold %.2f (%.1f%% of validation refused at most)",
        gate.threshold,
        100 * false_rejection_rate,
    )
    return gate


def refusals(
    files: list[bytes], scorer: Scorer, gate: Gate, config: PreprocessConfig
) -> tuple[list[str], np.ndarray]:
    """Which check refuses each encoded image, as the endpoint would: "decoder" (a 4xx from
    decoding, e.g. a DICOM of another modality), "cheap checks", "learned check", or
    "accepted"; and the feature distance of those that reached the learned check."""
    from pneumonia.serving.classifier import NOT_A_CHEST_XRAY, prepare
    from pneumonia.serving.requests import ClientError

    outcomes: list[str] = []
    reached: list[int] = []
    inputs: list[np.ndarray] = []
    for index, data in enumerate(files):
        try:
            inputs.append(prepare(data, config)[1])
            reached.append(index)
            outcomes.append("accepted")
        except ClientError as error:
            outcomes.append("cheap checks" if error.reason == NOT_A_CHEST_XRAY else "decoder")
    distances = gate.distance(scorer.outputs(np.stack(inputs))[1]) if inputs else np.zeros(0)
    for index, distance in zip(reached, distances, strict=True):
        if not distance <= gate.threshold:
            outcomes[index] = "learned check"
    return outcomes, distances


def gate_report(
    scorer: Scorer, gate: Gate, config: PreprocessConfig, held_out: list[str]
) -> tuple[dict, dict[str, np.ndarray]]:
    """False rejections of real X-rays (held-out splits, and framing shifts of test) and
    detection of the out-of-distribution set, by kind; plus the distances for the plot."""
    from pneumonia.ood import NOT_COVERED, out_of_distribution_images

    report: dict = {"threshold": gate.threshold, "false_rejection_rate": gate.false_rejection_rate}
    distances: dict[str, np.ndarray] = {}
    rejected: dict[str, float] = {}
    for split in held_out:
        files = [(paths.RAW / name).read_bytes() for name in load_files(split)]
        outcomes, distances[split] = refusals(files, scorer, gate, config)
        rejected[split] = float(np.mean([outcome != "accepted" for outcome in outcomes]))
    test_files = [paths.RAW / name for name in load_files("test")]
    for name in tqdm(SHIFTS, desc="gate under shifts (test)", unit="shift"):
        features = scorer.outputs(shifted_inputs(test_files, SHIFTS[name], config))[1]
        rejected[f"test, {name}"] = float(np.mean(gate.distance(features) > gate.threshold))
    report["false_rejections"] = rejected
    images = out_of_distribution_images()
    outcomes, distances["out of distribution"] = refusals(
        [image.data for image in images], scorer, gate, config
    )
    detected: dict[str, list[bool]] = {}
    for image, outcome in zip(images, outcomes, strict=True):
        detected.setdefault(image.kind, []).append(outcome != "accepted")
    report["ood_detection"] = {kind: float(np.mean(hits)) for kind, hits in detected.items()}
    report["ood_detection"]["all"] = float(np.mean([o != "accepted" for o in outcomes]))
    report["ood_images"] = len(images)
    report["ood_refused_by"] = {name: outcomes.count(name) for name in sorted(set(outcomes))}
    report["ood_accepted"] = [
        i.name for i, o in zip(images, outcomes, strict=True) if o == "accepted"
    ]
    report["ood_not_measured"] = NOT_COVERED  # kinds the set cannot hold, and why
    log.info(
        "gate: %.1f%% of test refused, %.1f%% of %d out-of-distribution images refused",
        100 * rejected["test"],
        100 * report["ood_detection"]["all"],
        report["ood_images"],
    )
    return report, distances


def gate_figure(distances: dict[str, np.ndarray], threshold: float) -> Figure:
    """Histograms of the feature distance: held-out X-rays against the out-of-distribution
    images that reached the learned check, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    finite = np.concatenate([d for d in distances.values() if len(d)])
    bins = np.linspace(0, np.percentile(finite, 99.5) * 1.05, 60)
    for name, values in distances.items():
        axis.hist(
            np.clip(values, 0, bins[-1]),
            bins=list(bins),
            alpha=0.5,
            label=f"{name} ({len(values)})",
            density=True,
        )
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.1f}")
    axis.set_xlabel("Mahalanobis distance of the pooled features from the training split")
    axis.set_ylabel("density")
    axis.set_title("Not-a-chest-X-ray gate (learned check)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- explanations

ATTENTION_IMAGES = 4  # of each class, the first test images in manifest order


def attention_figure(scorer: Scorer, names: list[str]) -> Figure:
    """Class activation maps over a fixed set of test images, for `dvc plots diff`: how the
    model's attention moved between two revisions. Panels are numbered, never named (file
    names carry patient ids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pneumonia.heatmap import heatmap, overlay

    images, labels = load_split("test")
    files = load_files("test")
    chosen = [i for c in (1, 0) for i in np.flatnonzero(labels == c)[:ATTENTION_IMAGES]]
    _, _, cams = scorer.outputs(images[chosen])
    probabilities = scorer(images[chosen])
    columns = max(1, math.ceil(len(chosen) / 2))
    figure, axes = plt.subplots(2, columns, figsize=(2.6 * columns, 6), dpi=80, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for panel, (axis, index, cam, p) in enumerate(
        zip(axes.ravel(), chosen, cams, probabilities, strict=False)
    ):
        gray = to_uint8_gray((paths.RAW / files[index]).read_bytes())
        heat = heatmap(cam, gray.shape[1], gray.shape[0])
        axis.imshow(overlay(gray, heat))
        axis.set_title(f"#{panel + 1} {names[labels[index]]}\nP(pneumonia) {p:.2f}", fontsize=9)
        axis.axis("off")
    figure.suptitle("Where the evidence for pneumonia is (class activation map)")
    figure.tight_layout()
    return figure


def to_uint8_gray(data: bytes) -> np.ndarray:
    """An encoded image decoded to (H, W) uint8 gray."""
    from pneumonia.imaging import decode_gray, to_uint8

    return to_uint8(decode_gray(data))


def faithfulness(scorer: Scorer, model: keras.Model, seed: int) -> dict:
    """Do the maps show what the model uses? Blurring the hottest 10% against the same
    region moved elsewhere (positive test images), and the maps of randomised weights."""
    from pneumonia.faithfulness import deletion_test, randomisation_test, randomised_copy

    images, labels = load_split("test")
    positives = images[labels == 1][:100]
    cams = scorer.outputs(positives)[2]
    deletion = deletion_test(positives, cams, lambda x: scorer.outputs(x)[0], seed=seed)
    randomised = Scorer(randomised_copy(model, seed=seed))
    sample = images[:20]
    randomisation = randomisation_test(scorer.outputs(sample)[2], randomised.outputs(sample)[2])
    log.info(
        "faithfulness: hot region beats control on %.0f%% of %d positives (median gap %.2f); "
        "rank correlation with random weights %.2f",
        100 * deletion["share_hot_beats_control"],
        deletion["images"],
        deletion["median_gap"],
        randomisation["median_rank_correlation"],
    )
    return {"deletion": deletion, "randomisation": randomisation}


def main() -> None:
    """Run the stage: calibration, threshold and band from validation, the gate from train
    and validation, then held-out and shifted scores, plots, logs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model  # noqa: F401  (registers the custom layer)

    params = load_params()
    names = list(params.base.labels)
    model = keras.models.load_model(paths.KERAS_MODEL)
    scorer = Scorer(model)
    prepared = preprocessing()
    prepared.pop("labels")
    config = PreprocessConfig.model_validate(prepared)

    results: dict = {"calibration": calibrate(scorer)}
    threshold, thresholds, val, pooled_val = choose_on_validation(scorer, config, params.evaluate)
    held_out, scores = score_held_out(scorer, threshold, params.evaluate, params.base.seed)
    results |= {"threshold": threshold, "threshold_policy": params.evaluate.threshold_policy}
    results |= held_out
    results["worst_split"] = worst_of(results, list(scores))
    results["policies"] = policy_table(thresholds, scores)
    results["val"] = val
    results["test_uncalibrated"] = uncalibrated(scorer, params.evaluate.calibration_bins)
    test_files = [paths.RAW / name for name in load_files("test")]
    shifted_test = shifted_probabilities(scorer, test_files, config, "robustness")
    results["robustness"] = robustness(shifted_test, scores["test"][0], threshold)
    band, results["decision"] = decision_report(
        pooled_val, scores, threshold, params.evaluate.indeterminate_error_rate
    )
    gate = fit_gate(scorer, config, params.evaluate.ood_false_rejection_rate)
    results["ood_gate"], distances = gate_report(scorer, gate, config, list(scores))
    np.savez(paths.GATE, mean=gate.mean, whitening=gate.whitening)

    results["explanations"] = faithfulness(scorer, model, params.base.seed)
    figures = {
        "ood_gate.png": gate_figure(distances, gate.threshold),
        "attention.png": attention_figure(scorer, names),
    }
    log_plots(results, scores, threshold, names, params.evaluate.calibration_bins, figures)
    write_predictions(test_files, scores, threshold, names, band)
    write_reference(scorer)
    track(results, list(scores), threshold)


if __name__ == "__main__":
    main()
