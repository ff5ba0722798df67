"""The learned half of "is this a chest X-ray?": the Mahalanobis distance of the model's
pooled features from the training split's (Ledoit-Wolf shrinkage covariance), refused above
a threshold set on validation at a chosen false-rejection rate.

The distance is taken in the covariance's leading principal components, with the rest of
the space as one isotropic residual (probabilistic PCA: each discarded direction gets their
mean variance). With all components it is the full Mahalanobis distance; with a few hundred
of EfficientNet-Lite0's 2,256 features it ranks real X-rays as the full one does (0.992
correlation on test) from a tenth of the arrays, which the served graph multiplies on every
request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia.decision.band import conformal_quantile


@dataclass(frozen=True)
class FeatureGate:
    """Distance from the training features: with c = f - mean and w = c @ whitening,
    sqrt(|w|^2 + residual * (|c|^2 - |w * spread|^2)).

    `whitening` (C, K) holds the K leading eigenvectors of the covariance, each divided by
    its standard deviation `spread` (K,); `residual` is 1 / (the mean variance of the other
    C - K directions), and w * spread the features' projection on the K, so the second term
    is the part of c outside them. With K = C, `residual` is 0 and the distance is the full
    Mahalanobis distance. The export stage puts exactly this into the graph.
    """

    mean: np.ndarray  # (C,)
    whitening: np.ndarray  # (C, K)
    threshold: float = math.inf
    false_rejection_rate: float = 0.0
    spread: np.ndarray | None = None  # (K,); None: whitening is a full-rank square root
    residual: float = 0.0

    @property
    def reduced(self) -> bool:
        """Whether the distance has the residual term: fewer components than features."""
        return self.spread is not None and self.residual > 0

    @property
    def components(self) -> int:
        """K, the principal components the distance whitens (C when it is the full one)."""
        return int(self.whitening.shape[1])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) distances for (N, C) features."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        whitened = centred @ self.whitening
        squared = np.sum(whitened**2, axis=1)
        if self.reduced:
            outside = np.sum(centred**2, axis=1) - np.sum((whitened * self.spread) ** 2, axis=1)
            squared = squared + self.residual * np.maximum(outside, 0.0)
        return np.sqrt(squared)

    def arrays(self) -> dict[str, np.ndarray]:
        """What models/gate.npz holds of it (the threshold is in evaluate's metrics)."""
        arrays = {"mean": self.mean, "whitening": self.whitening}
        if self.spread is not None:
            arrays |= {"spread": self.spread, "residual": np.array(self.residual)}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], threshold: float, rate: float) -> FeatureGate:
        """The gate `arrays()` wrote, with its threshold and rate."""
        reduced = "spread" in arrays
        return cls(
            mean=arrays["mean"],
            whitening=arrays["whitening"],
            threshold=threshold,
            false_rejection_rate=rate,
            spread=arrays["spread"] if reduced else None,
            residual=float(arrays["residual"]) if reduced else 0.0,
        )


def fit_feature_model(train_features: np.ndarray, components: int | None = None) -> FeatureGate:
    """Mean and whitening of the training features, in their `components` leading principal
    components plus the residual (None, or at least the feature count: all of them, the full
    Mahalanobis distance); no threshold yet."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(features)
    if components is None or components >= features.shape[1]:
        whitening = np.linalg.cholesky(np.linalg.inv(estimate.covariance_))
        return FeatureGate(mean=estimate.location_, whitening=whitening)
    if components < 1:
        raise ValueError(f"the gate needs at least one component, not {components}")
    variances, vectors = np.linalg.eigh(estimate.covariance_)  # ascending
    variances, vectors = variances[::-1], vectors[:, ::-1]
    spread = np.sqrt(variances[:components])
    return FeatureGate(
        mean=estimate.location_,
        whitening=np.ascontiguousarray(vectors[:, :components] / spread),
        spread=spread,
        residual=float(1.0 / variances[components:].mean()),
    )


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
    return dataclasses.replace(gate, threshold=threshold, false_rejection_rate=false_rejection_rate)
