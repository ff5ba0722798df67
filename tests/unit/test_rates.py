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
    below = scores[scores < expected].max()
    assert choose_threshold(labels, scores, "youden") == pytest.approx((expected + below) / 2)


@pytest.mark.parametrize(
    ("target", "chosen", "expected"),
    [(0.95, 0.2, 0.15), (0.8, 0.5, 0.35), (0.6, 0.6, 0.575), (0.2, 0.9, 0.85)],
)
def test_target_sensitivity_is_the_highest_threshold_reaching_it(target, chosen, expected):
    """The highest score that reaches the target, and the threshold midway to the next score
    below it (any score's label is the same at both)."""
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.2, 0.55, 0.1])
    threshold = choose_threshold(labels, scores, "target_sensitivity", target_sensitivity=target)
    assert threshold == pytest.approx(expected)
    assert binary_metrics(labels, scores, threshold)["sensitivity"] >= target
    assert binary_metrics(labels, scores, threshold) == binary_metrics(labels, scores, chosen)
    above = np.nextafter(chosen, 1.0)
    assert binary_metrics(labels, scores, above)["sensitivity"] < target


@pytest.mark.parametrize("policy", ["youden", "target_sensitivity"])
def test_no_score_lies_on_the_threshold_of_coarse_int8_like_scores(policy):
    """Scores that take few distinct values (an int8 network's): the threshold keeps half the
    gap to the nearest score on both sides, so a rounding of 1e-7 changes no label."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.round(np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1) * 64) / 64
    threshold = choose_threshold(labels, scores, policy, target_sensitivity=0.96)
    gap = np.abs(scores - threshold).min()
    assert gap == pytest.approx(1 / 128)  # half a step of 1/64
    for nudge in (-1e-7, 1e-7):
        assert np.array_equal(scores + nudge >= threshold, scores >= threshold)


def test_a_share_that_is_exact_in_decimal_is_not_rounded_up():
    # 0.95 * 20 is 19.000000000000004 in floating point: 19 of 20 still reach 0.95
    labels = np.ones(20, dtype=int)
    scores = np.linspace(0.05, 1.0, 20)
    assert choose_threshold(labels, scores, "target_sensitivity", target_sensitivity=0.95) == (
        pytest.approx(0.075)  # midway between the 19th highest, 0.1, and 0.05
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


# ---------------------------------------------------------------- hand-computed cases, at the edges


def test_the_binary_metrics_of_a_small_case_by_hand():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.7, 0.5, 0.2, 0.8, 0.6, 0.3, 0.1, 0.05, 0.5])
    # at 0.5: called positive 0.9 0.7 0.5 | 0.8 0.6 0.5 -> TP 3, FP 3, FN 1, TN 3
    assert binary_metrics(labels, scores, 0.5) == {
        "accuracy": 6 / 10,
        "roc_auc": pytest.approx(16.5 / 24),  # 16 pairs won, 1 tied (0.5 vs 0.5), of 24
        "sensitivity": 3 / 4,
        "specificity": 3 / 6,
        "precision": 3 / 6,
        "f1": pytest.approx(2 * 0.5 * 0.75 / 1.25),
        "true_positives": 3,
        "true_negatives": 3,
        "false_positives": 3,
        "false_negatives": 1,
    }


def test_binary_metrics_with_single_cases_and_none_called():
    one_each = binary_metrics(np.array([1, 0]), np.array([0.9, 0.1]), 0.5)
    assert one_each["sensitivity"] == one_each["specificity"] == one_each["precision"] == 1.0
    assert one_each["f1"] == 1.0 and one_each["accuracy"] == 1.0
    none_called = binary_metrics(np.array([1, 0, 0]), np.array([0.2, 0.3, 0.1]), 0.5)
    assert none_called["precision"] == 0.0 and none_called["f1"] == 0.0
    assert none_called["sensitivity"] == 0.0 and none_called["specificity"] == 1.0
    # precision 1/4 and sensitivity 1/2: their sum is under 1, F1 = 2 pr / (p + r) = 1/3
    weak = binary_metrics(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.1, 0.8, 0.7, 0.6]), 0.5)
    assert (weak["precision"], weak["sensitivity"]) == (0.25, 0.5)
    assert weak["f1"] == pytest.approx(1 / 3)


def test_auc_of_column_vectors_with_one_case_of_a_class_and_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
        assert np.isnan(roc_auc(np.array([0, 0]), np.array([0.2, 0.3])))
    assert roc_auc(np.array([[1], [0], [0]]), np.array([[0.9], [0.1], [0.5]])) == 1.0
    assert roc_auc(np.array([1, 1, 0]), np.array([0.1, 0.9, 0.5])) == 0.5
    assert roc_auc(np.array([1, 0, 0, 0]), np.array([0.05, 0.3, 0.2, 0.1])) == 0.0  # lowest


def test_the_threshold_policies_defaults_and_shapes():
    labels = np.array([1] * 20 + [0] * 5)
    scores = np.concatenate([np.linspace(1.0, 0.05, 20), np.full(5, 0.5)])
    # 0.95 of 20 pneumonias: the 19th highest score, 0.1, then midway to 0.05
    assert choose_threshold(labels, scores, "target_sensitivity") == pytest.approx(0.075)
    assert choose_threshold(labels, scores, "fixed") == 0.5
    assert choose_threshold(labels, scores, "fixed", fixed_threshold=0.3) == 0.3
    column = choose_threshold(labels[:, None], scores[:, None], "youden")
    assert column == choose_threshold(labels, scores, "youden")


def test_youden_takes_the_highest_of_equal_thresholds():
    # 0.9: sensitivity 1/2, no false positive; 0.6: both caught, one of two negatives flagged
    labels, scores = np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.7, 0.1])
    assert choose_threshold(labels, scores, "youden") == pytest.approx(0.8)  # 0.9, midway to 0.7


def test_youden_with_one_negative_and_with_a_single_pneumonia():
    labels, scores = np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.85])
    # 0.9 (1/3; 0.7 would be 1 - 1 = 0), midway to 0.85
    assert choose_threshold(labels, scores, "youden") == pytest.approx(0.875)
    assert choose_threshold(np.array([1, 0]), np.array([0.8, 0.2]), "youden") == 0.5
    assert choose_threshold(np.array([1, 0]), np.array([0.8, 0.2]), "target_sensitivity") == 0.5
    # the lowest score chosen: midway to 0
    assert choose_threshold(np.array([1, 0]), np.array([0.2, 0.8]), "target_sensitivity") == 0.1


def test_youden_of_a_logit_that_does_not_rank_calls_nothing():
    assert choose_threshold(np.array([1, 0]), np.array([0.1, 0.9]), "youden") == 1.0
    assert choose_threshold(np.array([1, 0]), np.array([0.5, 0.5]), "youden") == 1.0


def test_a_threshold_needs_pneumonia_cases():
    with pytest.raises(ValueError, match=r"^choosing a threshold needs pneumonia cases$"):
        choose_threshold(np.array([0, 0]), np.array([0.1, 0.9]), "youden")


def test_calibration_metrics_by_hand():
    from pneumonia.decision.rates import calibration_metrics

    labels = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.6, 0.9])
    # two bins: [0.1, 0.4] (mean 0.25, observed 0.5), [0.6, 0.9] (mean 0.75, observed 1)
    assert calibration_metrics(labels, p, 2) == {
        "brier": pytest.approx((0.01 + 0.36 + 0.16 + 0.01) / 4),
        "ece": pytest.approx(0.5 * 0.25 + 0.5 * 0.25),
    }
    # four bins, two of them empty; 0.5 falls in the upper bin, 1.0 in the last
    edges = calibration_metrics(np.array([1, 0, 1]), np.array([0.5, 0.55, 1.0]), 4)
    assert edges["ece"] == pytest.approx(2 / 3 * abs(0.525 - 0.5) + 1 / 3 * 0.0)
    assert edges["brier"] == pytest.approx((0.25 + 0.3025 + 0.0) / 3)
    assert calibration_metrics(np.array([0, 1]), np.array([0.0, 1.0]), 10) == {
        "brier": 0.0,
        "ece": 0.0,
    }


def bootstrap_by_hand(labels, scores, threshold, samples, seed):
    """The documented procedure: images resampled with replacement by NumPy's Generator of
    `seed`, one-class resamples skipped, the 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(seed)
    kept = []
    for _ in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        if len(set(labels[index])) == 2:
            kept.append(binary_metrics(labels[index], scores[index], threshold))
    return {
        name: tuple(float(np.percentile([m[name] for m in kept], q)) for q in (2.5, 97.5))
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1")
    }


def test_bootstrap_intervals_follow_the_documented_resampling():
    from pneumonia.decision.rates import bootstrap_intervals

    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.2, 0.4, 0.6, 0.7, 0.3, 0.8, 0.1, 0.5, 0.35, 0.65, 0.45])
    intervals = bootstrap_intervals(labels, scores, 0.5, samples=200, seed=3)
    assert intervals == bootstrap_by_hand(labels, scores, 0.5, 200, 3)
    assert set(intervals) == {
        "accuracy",
        "roc_auc",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
    }
    for low, high in intervals.values():
        assert 0.0 <= low < high <= 1.0
    assert bootstrap_intervals(labels, scores, 0.5, samples=200, seed=4) != intervals


def test_bootstrap_skips_one_class_resamples_and_may_draw_the_first_image():
    from pneumonia.decision.rates import bootstrap_intervals

    # the only pneumonia is the first image: each kept resample must have drawn it
    labels, scores = np.array([1, 0, 0]), np.array([0.9, 0.2, 0.6])
    intervals = bootstrap_intervals(labels, scores, 0.5, samples=100, seed=0)
    assert intervals == bootstrap_by_hand(labels, scores, 0.5, 100, 0)
    assert intervals["sensitivity"] == (1.0, 1.0) and intervals["roc_auc"] == (1.0, 1.0)


# ---------------------------------------------------------------- Platt scaling's edges


def test_sigmoid_and_logit_by_hand():
    assert sigmoid(np.array([0, 2])) == pytest.approx([0.5, 1 / (1 + np.exp(-2))], rel=1e-15)
    assert sigmoid(np.array([0])).dtype == np.float64  # integer logits give float64
    assert logit(np.array([0.5, 0.75])) == pytest.approx([0.0, np.log(3)], abs=1e-15)
    assert logit(np.array([0, 1])) == pytest.approx([np.log(1e-12), -np.log(1e-12)], rel=1e-6)
    assert logit(np.array([1])).dtype == np.float64
    assert Calibration(2.0, 1.0).apply(np.array([1])) == pytest.approx(sigmoid(3.0))
    assert Calibration(0.5, 0.0).apply(np.array([3])) == pytest.approx(sigmoid(1.5))


def test_fit_calibration_refuses_what_it_cannot_fit():
    message = r"^calibration needs labels of both classes, one per logit$"
    with pytest.raises(ValueError, match=message):
        fit_calibration(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=message):
        fit_calibration(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"scale 0\.000 <= 0"):
        fit_calibration(np.array([0, 1, 0, 1]), np.array([1.0, 1.0, 2.0, 2.0]))


def test_fit_calibration_reaches_the_optimum_of_a_hand_checked_case():
    # logits -1, 0, 1 twice, labels 0 1 | 0 1 | 1 1 ... checked by the gradient being zero
    logits = np.array([-2.0, -1.0, -1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, -3.0])
    labels = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 0])
    fitted = fit_calibration(labels[:, None], logits[:, None])  # columns are flattened
    p = sigmoid(fitted.scale * logits + fitted.shift)
    residual = p - labels
    # the ridge's pull on the scale is 1e-6 * scale: the optimum's gradient, to 1e-9
    assert abs(residual.sum()) < 1e-9
    assert abs((residual * logits).sum() + 1e-6 * fitted.scale) < 1e-9
    again = fit_calibration(labels, logits)
    assert (again.scale, again.shift) == (fitted.scale, fitted.shift)


def test_calibration_computes_in_double_precision_whatever_it_is_given():
    z32 = np.array([0.1, 2.7, -3.3], dtype=np.float32)
    assert sigmoid(z32).dtype == np.float64
    np.testing.assert_array_equal(sigmoid(z32), sigmoid(z32.astype(np.float64)))
    p32 = np.array([0.2, 0.7, 0.999], dtype=np.float32)
    np.testing.assert_array_equal(logit(p32), logit(p32.astype(np.float64)))
    calibration = Calibration(1.3, -0.2)
    np.testing.assert_array_equal(calibration.apply(z32), calibration.apply(z32.astype(float)))
    rng = np.random.default_rng(9)
    logits = rng.normal(0, 2, 300).astype(np.float32)
    labels = (rng.random(300) < sigmoid(logits)).astype(int)
    single, double = fit_calibration(labels, logits), fit_calibration(labels, logits.astype(float))
    assert (single.scale, single.shift) == (double.scale, double.shift)
