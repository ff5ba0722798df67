"""The learned half of "is this a chest X-ray?": the Mahalanobis distance of the model's
pooled features from the training split's (Ledoit-Wolf shrinkage covariance), refused above
a threshold set on validation at a chosen false-rejection rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pneumonia.decision.band import conformal_quantile


@dataclass(frozen=True)
class FeatureGate:
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


def fit_feature_model(train_features: np.ndarray) -> FeatureGate:
    """Mean and whitening of the training features; no threshold yet."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(features)
    whitening = np.linalg.cholesky(np.linalg.inv(estimate.covariance_))
    return FeatureGate(mean=estimate.location_, whitening=whitening)


def with_threshold(
    gate: FeatureGate,
    val_distances: np.ndarray,
    false_rejection_rate: float,
    groups: Sequence[np.ndarray] = (),
    group_rate: float | None = None,
) -> FeatureGate:
    """The gate refusing above the conformal (1 - rate) quantile of validation distances,
    raised where needed so that each of `groups` (validation under one framing: each must
    hold, not only their pool) is refused at most `group_rate` (default: the rate) too."""
    level = 1 - (false_rejection_rate if group_rate is None else group_rate)
    threshold = max(
        [
            conformal_quantile(val_distances, 1 - false_rejection_rate),
            *(conformal_quantile(d, level) for d in groups),
        ]
    )
    return FeatureGate(gate.mean, gate.whitening, threshold, false_rejection_rate)
