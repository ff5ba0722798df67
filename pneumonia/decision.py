"""From the network's outputs to what the endpoint answers, fitted on our own splits only.

- `Calibration`: Platt scaling of the pneumonia logit, fitted on validation, so that
  `probability_pneumonia` means what it says;
- `Band`: the indeterminate band, two thresholds from class-conditional split-conformal
  quantiles on validation (clean and shifted), each with a stated error rate;
- `Gate`: the learned half of "is this a chest X-ray?": the Mahalanobis distance of the
  model's pooled features from the training split's (Ledoit-Wolf shrinkage covariance),
  refused above a threshold set on validation at a chosen false-rejection rate.

numpy and scikit-learn; the evaluate stage fits these, the export stage bakes the
calibration and the distance into the ONNX graph, and model.json carries the thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DECISIONS = ("NORMAL", "PNEUMONIA", "INDETERMINATE")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class Calibration:
    """P(PNEUMONIA) = sigmoid(scale * logit + shift): Platt scaling.

    Chosen over temperature alone because class-balanced training moves the logit's
    zero as well as its spread (a temperature cannot shift it), and over isotonic
    regression because two parameters fitted on ~800 validation images keep the
    ranking (AUC) and a smooth, strictly increasing map with no ties.
    """

    scale: float
    shift: float
    method: str = "platt"

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw logits."""
        return sigmoid(self.scale * np.asarray(logits, dtype=np.float64) + self.shift)


def fit_calibration(labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """Platt scaling by maximum likelihood (unregularised logistic regression on the logit)."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6, max_iter=1000).fit(
        np.asarray(logits, dtype=np.float64).reshape(-1, 1), np.asarray(labels)
    )
    scale, shift = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if scale <= 0:
        raise ValueError(f"calibration scale {scale:.3f} <= 0: the logit does not rank")
    return Calibration(scale, shift)


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


@dataclass(frozen=True)
class Gate:
    """Mahalanobis distance from the training features: sqrt(|(f - mean) @ whitening|^2).

    `whitening` is the Cholesky factor L of the precision matrix (P = L L^T), so the
    distance is one matrix product; the export stage puts exactly this into the graph.
    """

    mean: np.ndarray  # (C,)
    whitening: np.ndarray  # (C, C)
    threshold: float = math.inf
    false_rejection_rate: float = 0.0

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) distances for (N, C) features."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.sum((centred @ self.whitening) ** 2, axis=1))


def fit_feature_model(train_features: np.ndarray) -> Gate:
    """Mean and whitening of the training features; no threshold yet."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(features)
    whitening = np.linalg.cholesky(np.linalg.inv(estimate.covariance_))
    return Gate(mean=estimate.location_, whitening=whitening)


def with_threshold(gate: Gate, val_distances: np.ndarray, false_rejection_rate: float) -> Gate:
    """The gate refusing above the conformal (1 - rate) quantile of validation distances."""
    threshold = conformal_quantile(val_distances, 1 - false_rejection_rate)
    return Gate(gate.mean, gate.whitening, threshold, false_rejection_rate)
