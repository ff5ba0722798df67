"""Platt scaling of the pneumonia logit, fitted on validation, so that
`probability_pneumonia` means what it says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
