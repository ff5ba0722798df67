"""What a threshold does on labelled scores, and the policies that choose it: the rules that
evaluate applies on validation and `python -m pneumonia.recalibrate` on a site's sample.
NumPy only, so both run them with the endpoint's dependencies alone."""

from __future__ import annotations

import math

import numpy as np

CI_METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1")
POLICIES = ("youden", "youden_shifted", "target_sensitivity", "fixed")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve: the chance that a random positive outscores a random
    negative, ties counting one half (the Mann-Whitney statistic, from average ranks)."""
    labels = np.asarray(labels).reshape(-1) == 1
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    ranks = np.empty(len(scores))
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Accuracy, ROC AUC, sensitivity, specificity, precision, F1 at a threshold (a score at
    or above it is called positive), and the confusion counts."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    predicted = probabilities >= threshold
    positive = labels == 1
    true_pos = int(np.sum(predicted & positive))
    true_neg = int(np.sum(~predicted & ~positive))
    false_pos = int(np.sum(predicted & ~positive))
    false_neg = int(np.sum(~predicted & positive))
    sensitivity = true_pos / max(true_pos + false_neg, 1)
    precision = true_pos / max(true_pos + false_pos, 1)
    return {
        "accuracy": (true_pos + true_neg) / len(labels),
        "roc_auc": roc_auc(labels, probabilities),
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
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
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
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
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


def choose_threshold(
    labels: np.ndarray,
    probabilities: np.ndarray,
    policy: str,
    target_sensitivity: float = 0.95,
    fixed_threshold: float = 0.5,
) -> float:
    """The decision threshold by `policy`, from the given (validation) scores only.

    youden, youden_shifted: the score that maximises sensitivity + specificity - 1, the
      highest of equals (youden_shifted: the caller passes validation pooled with its
      shifted copies);
    target_sensitivity: the highest threshold whose sensitivity reaches the target: the
      k-th highest pneumonia score, k the fewest cases that make the target share;
    fixed: `fixed_threshold`.

    youden, youden_shifted and target_sensitivity place the threshold midway between the
    chosen score and the next distinct score below it (`_below`): every given score is called
    as at the chosen one, and none lies on the threshold, where float rounding (two runs of an
    int8 graph, another machine) would decide its label.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; one of {POLICIES}")
    if policy == "fixed":
        return float(fixed_threshold)
    labels = np.asarray(labels).reshape(-1) == 1
    scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    positive = np.sort(scores[labels])[::-1]
    if len(positive) == 0:
        raise ValueError("choosing a threshold needs pneumonia cases")
    if policy == "target_sensitivity":
        k = max(1, math.ceil(target_sensitivity * len(positive) - 1e-9))
        return _below(float(positive[min(k, len(positive)) - 1]), scores)
    negative = np.sort(scores[~labels])
    candidates = np.unique(scores)[::-1]  # each distinct score, highest first
    caught = len(positive) - np.searchsorted(positive[::-1], candidates, side="left")
    flagged = len(negative) - np.searchsorted(negative, candidates, side="left")
    youden = caught / len(positive) - flagged / max(len(negative), 1)
    best = int(np.argmax(youden))  # the first of equals: the highest threshold
    return _below(float(candidates[best]), scores) if youden[best] > 0 else 1.0


def _below(chosen: float, scores: np.ndarray) -> float:
    """Midway between `chosen` and the highest of `scores` under it (0 when none is): a
    threshold that calls every score as `chosen` does, with a margin to the nearest."""
    lower = scores[scores < chosen]
    return float((chosen + (lower.max() if len(lower) else 0.0)) / 2)
