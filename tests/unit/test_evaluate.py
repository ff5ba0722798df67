"""Threshold policies and metrics on literal inputs."""

import numpy as np
import pytest

from pneumonia.config import EvaluateParams
from pneumonia.evaluation.metrics import (
    binary_metrics,
    bootstrap_intervals,
    calibration_metrics,
    policy_thresholds,
    threshold_for,
    worst_of,
)
from pneumonia.evaluation.shifts import SHIFTS


def policy(name: str, **overrides) -> EvaluateParams:
    values = {
        "threshold_policy": name,
        "target_sensitivity": 0.95,
        "fixed_threshold": 0.5,
        "bootstrap_samples": 200,
        "calibration_bins": 10,
        "indeterminate_error_rate": 0.04,
        "ood_false_rejection_rate": 0.01,
        **overrides,
    }
    return EvaluateParams(**values)


LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_youden_picks_the_threshold_maximising_sensitivity_plus_specificity():
    # At 0.7: sensitivity 3/4, specificity 4/4 -> J = 0.75, the best available; then midway
    # to the next score below (0.6).
    assert threshold_for(LABELS, SCORES, policy("youden")) == pytest.approx(0.65)


def test_target_sensitivity_picks_the_highest_threshold_reaching_it():
    # Sensitivity 1.0 needs the threshold down at 0.4 (then midway to 0.3).
    assert threshold_for(LABELS, SCORES, policy("target_sensitivity")) == pytest.approx(0.35)
    relaxed = policy("target_sensitivity", target_sensitivity=0.75)
    assert threshold_for(LABELS, SCORES, relaxed) == pytest.approx(0.65)  # 0.7, midway to 0.6


def test_fixed_policy_ignores_the_data():
    assert threshold_for(LABELS, SCORES, policy("fixed", fixed_threshold=0.35)) == 0.35


def test_binary_metrics_at_a_threshold():
    metrics = binary_metrics(LABELS, SCORES, 0.5)
    # predicted positive: 0.6 (FP), 0.7, 0.8, 0.9 (TP); 0.4 is a FN.
    assert metrics["true_positives"] == 3 and metrics["false_positives"] == 1
    assert metrics["sensitivity"] == pytest.approx(0.75)
    assert metrics["specificity"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(0.75)
    assert metrics["roc_auc"] == pytest.approx(15 / 16)


def test_bootstrap_interval_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    point = binary_metrics(labels, scores, 0.5)
    intervals = bootstrap_intervals(labels, scores, 0.5, samples=300, seed=0)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, name
        assert high - low < 0.2, name
    assert intervals == bootstrap_intervals(labels, scores, 0.5, samples=300, seed=0)


def test_calibration_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(1)
    probabilities = rng.random(20000)
    calibrated_labels = (rng.random(20000) < probabilities).astype(int)
    good = calibration_metrics(calibrated_labels, probabilities, bins=10)
    assert good["ece"] < 0.02
    overconfident = calibration_metrics(
        calibrated_labels, np.where(probabilities > 0.5, 1.0, 0.0), 10
    )
    assert overconfident["ece"] > 0.2
    assert overconfident["brier"] > good["brier"]


def test_framing_shifts_crop_pad_and_mirror():
    gray = np.zeros((100, 50))
    gray[:, :10] = 1.0
    cropped = SHIFTS["border crop 8%"](gray)
    assert cropped.shape == (84, 42) and cropped[:, :6].min() == 1.0 and cropped[:, 6:].max() == 0
    padded = SHIFTS["padding 8%"](gray)
    assert padded.shape == (116, 58) and padded[:, :4].max() == 0 and padded[8, 4] == 1.0
    mirrored = SHIFTS["mirror"](gray)
    assert mirrored[:, -10:].min() == 1.0 and mirrored[:, :-10].max() == 0


def test_worst_of_names_the_split_with_the_lowest_value_of_each_metric():
    results = {
        "test": {"roc_auc": 0.99, "accuracy": 0.95, "sensitivity": 0.97, "specificity": 0.90},
        "early": {"roc_auc": 0.97, "accuracy": 0.96, "sensitivity": 0.99, "specificity": 0.85},
    }
    worst = worst_of(results, ["test", "early"])
    assert worst["roc_auc"] == 0.97 and worst["roc_auc_split"] == "early"
    assert worst["accuracy"] == 0.95 and worst["accuracy_split"] == "test"
    assert worst["specificity_split"] == "early"


def test_the_shifted_youden_threshold_holds_under_the_shifts_it_has_seen():
    # Under a shift the normal images score higher (0.55-0.65): the clean optimum (0.5)
    # would call them PNEUMONIA, the pooled one moves above them (each midway to the next
    # score below the chosen one: 0.5 to 0.2, 0.7 to 0.65).
    val = (np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.5, 0.9]))
    shifted = [np.array([0.6, 0.65, 0.8, 0.95]), np.array([0.55, 0.3, 0.7, 0.9])]
    chosen = policy_thresholds(val, shifted, policy("youden", fixed_threshold=0.4))
    assert chosen["youden"] == pytest.approx(0.35)
    assert chosen["youden_shifted"] == pytest.approx(0.675)
    assert chosen["target_sensitivity"] == pytest.approx(0.35)
    assert chosen["fixed"] == 0.4
