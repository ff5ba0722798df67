"""Metrics of one split at a threshold, with bootstrap intervals, and the threshold policies
that choose it on validation only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pneumonia.config import EvaluateParams
from pneumonia.decision import rates
from pneumonia.decision.rates import (
    CI_METRICS,
    binary_metrics,
    bootstrap_intervals,
    calibration_metrics,
)

Predict = Callable[[np.ndarray], np.ndarray]
Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, probabilities)


ROBUSTNESS_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


def threshold_for(labels: np.ndarray, probabilities: np.ndarray, params: EvaluateParams) -> float:
    """The decision threshold of `params.threshold_policy`, from validation predictions only
    (pneumonia.decision.rates.choose_threshold: the rule a site's recalibration applies too)."""
    return rates.choose_threshold(
        labels,
        probabilities,
        params.threshold_policy,
        params.target_sensitivity,
        params.fixed_threshold,
    )


def split_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    params: EvaluateParams,
    seed: int,
    split: str = "test",
) -> dict:
    """Every metric of one held-out split with its interval, as the nested dict dvclive writes."""
    point = binary_metrics(labels, probabilities, threshold)
    intervals = bootstrap_intervals(
        labels, probabilities, threshold, params.bootstrap_samples, seed
    )
    return {
        split: {
            **{name: float(point[name]) for name in CI_METRICS},
            **calibration_metrics(labels, probabilities, params.calibration_bins),
            "images": len(labels),
            "prevalence": float(labels.mean()),
        },
        f"{split}_ci95_low": {name: low for name, (low, _) in intervals.items()},
        f"{split}_ci95_high": {name: high for name, (_, high) in intervals.items()},
        f"{split}_confusion": {
            key: point[key]
            for key in ("true_positives", "true_negatives", "false_positives", "false_negatives")
        },
    }


def worst_of(results: dict, splits: list[str]) -> dict:
    """Each headline metric at its lowest over the held-out splits, and which split it was."""
    worst = {}
    for metric in ROBUSTNESS_METRICS:
        split = min(splits, key=lambda name: results[name][metric])
        worst[metric] = results[split][metric]
        worst[f"{metric}_split"] = split
    return worst


COMPARED_POLICIES = ("youden", "youden_shifted", "target_sensitivity")  # compared in metrics.json


def policy_thresholds(
    val: tuple[np.ndarray, np.ndarray],
    shifted_val: list[np.ndarray],
    params: EvaluateParams,
) -> dict[str, float]:
    """The threshold every policy would choose, from validation (clean and shifted) only."""
    labels, probabilities = val
    pooled_labels = np.concatenate([labels] * (1 + len(shifted_val)))
    pooled = np.concatenate([probabilities, *shifted_val])
    chosen = {}
    for name in COMPARED_POLICIES:
        policy = params.model_copy(update={"threshold_policy": name})
        if name == "youden_shifted":
            chosen[name] = threshold_for(pooled_labels, pooled, policy)
        else:
            chosen[name] = threshold_for(labels, probabilities, policy)
    chosen["fixed"] = params.fixed_threshold
    return chosen


def policy_table(thresholds: dict[str, float], scores: Scores) -> dict:
    """What each threshold policy would give on each split: the evidence for the chosen one."""
    return {
        name: {
            "threshold": value,
            **{
                split: {
                    key: float(metrics[key]) for key in ("accuracy", "sensitivity", "specificity")
                }
                for split, (labels, probabilities) in scores.items()
                for metrics in [binary_metrics(labels, probabilities, value)]
            },
        }
        for name, value in thresholds.items()
    }
