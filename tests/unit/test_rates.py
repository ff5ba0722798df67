"""The NumPy rules a site's recalibration shares with evaluate, against scikit-learn (an
independent implementation) and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from pneumonia.decision.calibration import Calibration, fit_calibration, logit, sigmoid
from pneumonia.decision.rates import binary_metrics, choose_threshold, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.2 + rng.random(300), 1)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_by_hand():
    # positives 0.4, 0.7 against negatives 0.1, 0.7: 0.4 wins 1 and loses 1, 0.7 wins 1 and
    # ties 1 (a half) -> 2.5 of 4 pairs
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.7, 0.7])) == 0.625
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


@pytest.mark.parametrize("seed", range(5))
def test_youden_matches_scikit_learns_roc_curve(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 400)
    scores = np.round(np.clip(labels * 0.25 + rng.random(400) * 0.75, 0, 1), 2)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    expected = np.clip(thresholds, 0, 1)[np.argmax(tpr - fpr)]
    assert choose_threshold(labels, scores, "youden") == pytest.approx(expected)


@pytest.mark.parametrize(("target", "expected"), [(0.95, 0.2), (0.8, 0.5), (0.6, 0.6), (0.2, 0.9)])
def test_target_sensitivity_is_the_highest_threshold_reaching_it(target, expected):
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.2, 0.55, 0.1])
    threshold = choose_threshold(labels, scores, "target_sensitivity", target_sensitivity=target)
    assert threshold == expected
    assert binary_metrics(labels, scores, threshold)["sensitivity"] >= target
    above = np.nextafter(threshold, 1.0)
    assert binary_metrics(labels, scores, above)["sensitivity"] < target


def test_a_share_that_is_exact_in_decimal_is_not_rounded_up():
    # 0.95 * 20 is 19.000000000000004 in floating point: 19 of 20 still reach 0.95
    labels = np.ones(20, dtype=int)
    scores = np.linspace(0.05, 1.0, 20)
    assert choose_threshold(labels, scores, "target_sensitivity", target_sensitivity=0.95) == (
        pytest.approx(0.1)
    )


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown threshold policy"):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), "median")


@pytest.mark.parametrize("seed", range(3))
def test_platt_scaling_matches_scikit_learns_logistic_regression(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.5, 2.0, 600)
    labels = (rng.random(600) < sigmoid(1.3 * logits - 0.4)).astype(int)
    ours = fit_calibration(labels, logits)
    theirs = LogisticRegression(C=1e6, max_iter=10_000, tol=1e-10).fit(logits[:, None], labels)
    assert ours.scale == pytest.approx(theirs.coef_[0, 0], rel=1e-4)
    assert ours.shift == pytest.approx(theirs.intercept_[0], abs=1e-4)


def test_a_separating_sample_gets_a_finite_steep_calibration():
    logits = np.linspace(-3, 3, 40)
    fitted = fit_calibration((logits > 0).astype(int), logits)
    assert np.isfinite(fitted.scale) and fitted.scale > 10


def test_composed_calibrations_equal_applying_both():
    first, second = Calibration(0.8, -0.3), Calibration(1.7, 0.9)
    z = np.linspace(-6, 6, 25)
    both = second.apply(logit(first.apply(z)))
    assert np.allclose(first.then(second).apply(z), both, atol=1e-12)
    assert first.then(second) == Calibration(1.7 * 0.8, 1.7 * -0.3 + 0.9)
