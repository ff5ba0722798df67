"""The indeterminate band: two thresholds from class-conditional split-conformal quantiles
on validation (clean and shifted), each with a stated error rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DECISIONS = ("NORMAL", "PNEUMONIA", "INDETERMINATE")


@dataclass(frozen=True)
class Band:
    """Calibrated probability below `low`: NORMAL; at or above `high`: PNEUMONIA; between:
    INDETERMINATE. `error_rate`: the conformal target for each class (see `conformal_band`)."""

    low: float
    high: float
    error_rate: float

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """One of DECISIONS per probability."""
        p = np.asarray(probabilities)
        return np.where(p < self.low, "NORMAL", np.where(p >= self.high, "PNEUMONIA", DECISIONS[2]))


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil(level * (n + 1))-th smallest score: split-conformal's finite-sample quantile."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil(level * (len(ordered) + 1))
    return float(ordered[min(rank, len(ordered)) - 1])


def conformal_band(
    labels: np.ndarray, probabilities: np.ndarray, error_rate: float, threshold: float
) -> Band:
    """Two thresholds, each a class-conditional split-conformal quantile on validation.

    `high`: a normal image scores at or above it with probability at most `error_rate`;
    `low`: a pneumonia image scores below it with probability at most `error_rate`
    (for an image exchangeable with the calibration set). So a decided NORMAL misses at
    most that share of pneumonia cases and a decided PNEUMONIA flags at most that share
    of normal ones. Between them both labels are plausible: INDETERMINATE. The band
    always contains the label threshold, so a decision never contradicts the label.
    """
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    normal, pneumonia = p[labels == 0], p[labels == 1]
    # The high threshold: just above the (1 - a) quantile of normal scores.
    high = np.nextafter(conformal_quantile(normal, 1 - error_rate), 2.0)
    # The low threshold: the a quantile of pneumonia scores (from below, at or under).
    low = -conformal_quantile(-pneumonia, 1 - error_rate)
    low = min(low, threshold)
    high = max(min(float(high), 1.0), threshold)
    return Band(float(low), float(high), error_rate)


def band_metrics(labels: np.ndarray, probabilities: np.ndarray, band: Band) -> dict[str, float]:
    """Share indeterminate, and accuracy, sensitivity and specificity on the decided cases."""
    labels = np.asarray(labels)
    decisions = band.decide(probabilities)
    decided = decisions != DECISIONS[2]
    predicted = decisions == "PNEUMONIA"
    correct = (predicted == (labels == 1)) & decided

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask[of].mean()) if of.any() else float("nan")

    return {
        "share_indeterminate": float(1 - decided.mean()),
        "accuracy_decided": share(correct, decided),
        "sensitivity_decided": share(predicted, decided & (labels == 1)),
        "specificity_decided": share(~predicted, decided & (labels == 0)),
        "pneumonia_called_normal": share(decisions == "NORMAL", labels == 1),
        "normal_called_pneumonia": share(predicted, labels == 0),
    }
