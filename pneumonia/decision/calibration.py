"""Platt scaling of the pneumonia logit, fitted on validation, so that
`probability_pneumonia` means what it says. NumPy only: a site refits it with the endpoint's
dependencies alone (`python -m pneumonia.recalibrate`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A ridge on the scale as small as scikit-learn's LogisticRegression(C=1e6): no pull on any
# real fit, and a finite answer when the sample separates perfectly.
RIDGE = 1e-6
# Probabilities are clipped this far from 0 and 1 before their logit is taken: a float32
# probability of exactly 1.0 still gets a finite logit (about 27.6).
EPSILON = 1e-12


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, float64 (no overflow for any finite z)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray) -> np.ndarray:
    """The inverse of `sigmoid`, elementwise, float64, with p clipped to [EPSILON, 1 - EPSILON]."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p) - np.log1p(-p)


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

    def then(self, other: Calibration) -> Calibration:
        """One Platt map equal to applying this one, then `other` to its logit."""
        return Calibration(other.scale * self.scale, other.scale * self.shift + other.shift)


def _loss(labels: np.ndarray, logits: np.ndarray, w: np.ndarray) -> float:
    z = w[0] * logits + w[1]
    # log(1 + exp(z)) - y z, written to stay finite for large |z|
    return float(np.sum(np.logaddexp(0.0, z) - labels * z) + 0.5 * RIDGE * w[0] ** 2)


def fit_calibration(labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """Platt scaling by maximum likelihood: logistic regression of the label on the logit,
    by Newton's method with a backtracking line search (the loss is convex, so it converges
    to the one optimum)."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if len(y) != len(x) or len(np.unique(y)) != 2:
        raise ValueError("calibration needs labels of both classes, one per logit")
    design = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    loss = _loss(y, x, w)
    for _ in range(200):
        p = sigmoid(design @ w)
        gradient = design.T @ (p - y) + np.array([RIDGE * w[0], 0.0])
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag([RIDGE, 1e-12])
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while (new := _loss(y, x, w - size * step)) > loss and size > 1e-10:
            size /= 2
        w, improvement, loss = w - size * step, loss - new, new
        if improvement <= 1e-13 * max(1.0, loss) or np.abs(gradient).max() < 1e-9 * len(y):
            break
    scale, shift = float(w[0]), float(w[1])
    if scale <= 0:
        raise ValueError(f"calibration scale {scale:.3f} <= 0: the logit does not rank")
    return Calibration(scale, shift)
