"""Metrics of one split at a threshold, with bootstrap intervals, and the threshold policies
that choose it on validation only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pneumonia.config import EvaluateParams

Predict = Callable[[np.ndarray], np.ndarray]
Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, probabilities)


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


def calibration_metrics(
    labels: np.ndarray, probabilities: np.ndarray, bins: int
) -> dict[str, float]:
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


def split_metrics(
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
            **calibration_metrics(labels, probabilities, params.calibration_bins),
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
