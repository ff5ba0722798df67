"""Drift of a window of predictions against the validation split's: is the model still
seeing the kind of images, and the share of pneumonia, it was validated on?

    python -m pneumonia.monitor --reference metrics/evaluate/reference.jsonl \\
        --current predictions.jsonl [--window 500] [--reference-prevalence 0.25] \\
        [--alpha 0.05] [--design-effect 2] [--permutations 1000] [--seed 0] \\
        [--report PATH] [--plot PATH]

`--current` is what `python -m pneumonia.batch` writes (with `--features` for the MMD test);
only its `status: ok` rows are compared (the last `--window` of them), and the others are
counted. `--reference` is what the evaluate stage writes (`write_reference`): the validation
split's labels, calibrated probabilities and features. Three tests, each of the null "the
window is drawn from the reference's distribution":

- `ks`: two-sample Kolmogorov-Smirnov on the calibrated probabilities (what the model says);
- `mmd`: a kernel two-sample test (maximum mean discrepancy, permutation p-value) on the
  model's features (what the model sees): runs only when both files carry features;
- `prevalence`: the window's share of pneumonia estimated from the calibrated probabilities
  (maximum likelihood under label shift, Saerens et al. 2002), with a likelihood-ratio test
  against the reference's share.

Drift is any test below `alpha / tests run` (Bonferroni, so that the chance of any false
alarm stays at most `alpha` whatever the tests' dependence; for the decision "any test
rejects", Holm's procedure is the same). The tests take images as independent; a patient's
images are not, so each counts a window of n images as n / `--design-effect` (default 1.5,
measured on validation: DESIGN_EFFECT). Writes a JSON report (counts and statistics, no
file names: they carry patient ids) and a plot, by default beside the current file
(`predictions.jsonl` -> `predictions.monitor.json`, `predictions.monitor.png`), so that every
window monitored keeps its report next to its predictions. Exit status: 0 no drift, 1 drift,
2 bad usage or input (a message, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia.evaluation.reference import LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DIMS = 32  # principal components of the features the MMD test compares
PERMUTATIONS = 1000  # of the MMD test: p-values down to 1/1001
MAX_REFERENCE = 1000  # reference rows the MMD test uses at most (its cost is quadratic)
MAX_WINDOW = 1000  # window rows the MMD test uses at most: 2,000 rows, a 32 MB kernel
CI_LEVEL = 0.95  # of the reported prevalence interval
# Images of one patient are alike (here 1.9 images per patient; 3.1 for the average image),
# so a window of n images carries what fewer independent ones would: every test counts n
# images as n / DESIGN_EFFECT (Kish's design effect). Measured on validation split in
# halves by patient (windows of 100 from one half against the other, 12 splits x 25
# windows; each test at 0.05 / 3 = 1.67%): with 1 (images independent, the tests exact for
# them) MMD alarmed on 3.7% of the windows, KS on 3.0%, prevalence on 1.0%, any of them on
# 6.7%; with 1.25 on 0%, 1.0%, 1.0%, 2.0%; with 1.5 on 0%, 0%, 0.3%, 0.3%; with 2 on none.
# 1.5: the smallest with a margin; every step up costs detection (on the test split,
# brightness +0.15 is caught in 67% of windows of 100 with 2; benchmarks/monitor.py).
DESIGN_EFFECT = 1.5


class MonitorError(ValueError):
    """Input the monitor cannot use: the command line turns it into exit status 2."""


# ---------------------------------------------------------------- files


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of each line of a JSON lines file, read one line at a time. A torn
    last line (a batch run still writing, or killed while writing: no newline after it) is
    skipped, as pneumonia.batch itself drops it; any other line that is not a JSON object
    (invalid UTF-8, not JSON, numbers too long, nesting too deep) is a MonitorError naming it."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise MonitorError(f"cannot read {path}: {error.strerror or error}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as error:  # JSON, UTF-8 and int-digit errors
                if not raw.endswith(b"\n"):
                    continue  # the last line, unterminated: torn
                detail = (
                    error.msg if isinstance(error, json.JSONDecodeError) else type(error).__name__
                )
                raise MonitorError(f"{path}, line {number}: not JSON ({detail})") from None
            if not isinstance(row, dict):
                raise MonitorError(f"{path}, line {number}: not a JSON object")
            yield number, row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON lines file (the reference: validation's few hundred rows)."""
    return [row for _, row in iter_rows(path)]


@dataclass
class Window:
    """The last rows with status ok of a file read once, and what the rest of it held."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    model_versions: set[str]


def read_window(path: Path, window: int | None) -> Window:
    """The last `window` ok rows (all of them when None): memory bounded by the window, not
    by the file. Counts rows, ok and errors (not ok: refused or undecodable)."""
    kept: deque[dict[str, Any]] = deque(maxlen=window)
    counts = {"rows": 0, "ok": 0, "errors": 0}
    versions: set[str] = set()
    for _, row in iter_rows(path):
        counts["rows"] += 1
        if row.get("status") != "ok":
            counts["errors"] += 1
            continue
        counts["ok"] += 1
        kept.append(row)
        if row.get("modelVersion"):
            versions.add(str(row["modelVersion"]))
    return Window(list(kept), counts, versions)


# ---------------------------------------------------------------- rows to arrays


@dataclass(frozen=True)
class Sample:
    """The arrays of one side of the comparison."""

    probabilities: np.ndarray  # (N,) calibrated P(PNEUMONIA)
    features: np.ndarray | None  # (N, F) float64; None when any row carries none
    labels: np.ndarray | None = None  # (N,) 0/1; the reference's only
    missing_features: int = 0  # rows without features


def _probability(row: dict[str, Any], where: str) -> float:
    """A row's calibrated probability, checked."""
    value = row.get("probability_pneumonia")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise MonitorError(f"{where}: probability_pneumonia missing or not in [0, 1]")
    return float(value)


def _features(rows: list[dict[str, Any]], source: str) -> tuple[np.ndarray | None, int]:
    """(N, F) features of the rows, or None with the count of rows that carry none."""
    missing = sum(1 for row in rows if row.get("features") is None)
    if missing or not rows:
        return None, missing
    lengths = {len(row["features"]) for row in rows if isinstance(row["features"], list)}
    if len(lengths) != 1 or any(not isinstance(row["features"], list) for row in rows):
        raise MonitorError(f"{source}: feature vectors of different lengths {sorted(lengths)}")
    if lengths == {0}:
        raise MonitorError(f"{source}: empty feature vectors")
    try:
        array = np.asarray([row["features"] for row in rows], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise MonitorError(f"{source}: features that are not numbers") from None
    if not np.isfinite(array).all():
        raise MonitorError(f"{source}: features that are not finite")
    return array, 0


def _labels(rows: list[dict[str, Any]], source: str) -> np.ndarray:
    """(N,) 0/1 class ids of the reference's labels."""
    try:
        return np.array([LABELS.index(row.get("label")) for row in rows], dtype=np.int64)
    except ValueError:
        raise MonitorError(f"{source}: every row needs a label, one of {LABELS}") from None


def reference_sample(rows: list[dict[str, Any]], source: str = "reference") -> Sample:
    """The reference's labels, probabilities and features (all rows)."""
    if not rows:
        raise MonitorError(f"{source}: no rows")
    probabilities = np.array(
        [_probability(row, f"{source}, row {index + 1}") for index, row in enumerate(rows)]
    )
    features, missing = _features(rows, source)
    return Sample(probabilities, features, _labels(rows, source), missing)


def window_sample(window: Window, source: str = "current") -> tuple[Sample, dict[str, int]]:
    """The window's probabilities and features, and the counts of the file it came from."""
    if not window.rows:
        raise MonitorError(
            f"{source}: no rows with status ok ({window.counts['rows']} rows in all)"
        )
    counts = {**window.counts, "window": len(window.rows)}
    first = window.counts["ok"] - len(window.rows)  # the window's rows among the ok ones
    probabilities = np.array(
        [
            _probability(row, f"{source}, ok row {first + i + 1}")
            for i, row in enumerate(window.rows)
        ]
    )
    features, missing = _features(window.rows, source)
    return Sample(probabilities, features, None, missing), counts


def resample_to_prevalence(labels: np.ndarray, prevalence: float, seed: int) -> np.ndarray:
    """Sorted indices of the largest subset of the reference whose PNEUMONIA share is
    `prevalence`, drawn per class without replacement (seeded): a site with its own
    prevalence is compared with the reference as it would look there. Without replacement,
    so that no image counts twice (ties would bias the KS test and the kernel matrix)."""
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    size = math.floor(min(len(positives) / prevalence, len(negatives) / (1 - prevalence)))
    chosen_positive = min(len(positives), round(size * prevalence))
    chosen_negative = min(len(negatives), size - chosen_positive)
    if chosen_positive < 1 or chosen_negative < 1:
        raise MonitorError(
            f"the reference ({len(positives)} PNEUMONIA, {len(negatives)} NORMAL) cannot be "
            f"resampled to prevalence {prevalence}"
        )
    rng = np.random.default_rng(seed)
    picked = np.concatenate(
        [
            rng.choice(positives, chosen_positive, replace=False),
            rng.choice(negatives, chosen_negative, replace=False),
        ]
    )
    return np.sort(picked)


def subset(sample: Sample, index: np.ndarray) -> Sample:
    """The rows `index` of a sample."""
    return Sample(
        sample.probabilities[index],
        None if sample.features is None else sample.features[index],
        None if sample.labels is None else sample.labels[index],
        sample.missing_features,
    )


# ---------------------------------------------------------------- the tests


@dataclass(frozen=True)
class Result:
    """One test's outcome. `p_value` None: not run, `reason` says why."""

    name: str
    statistic: float | None
    p_value: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    null: np.ndarray | None = None  # the MMD's permutation statistics, for the plot


def ks_test(reference: np.ndarray, window: np.ndarray, design_effect: float = 1.0) -> Result:
    """Two-sample Kolmogorov-Smirnov on calibrated probabilities: scipy's statistic, and
    its asymptotic p-value (what `ks_2samp(method="asymp")` computes, Smirnov's
    distribution at m n / (m + n)) at the effective sizes m / design_effect and
    n / design_effect."""
    from scipy.stats import ks_2samp, kstwo

    statistic = float(ks_2samp(reference, window).statistic)
    effective = len(reference) * len(window) / (len(reference) + len(window)) / design_effect
    return Result(
        "ks",
        statistic,
        float(kstwo.sf(statistic, max(1, round(effective)))),
        {"reference_mean": float(np.mean(reference)), "window_mean": float(np.mean(window))},
    )


def reduce_features(pooled: np.ndarray, dims: int) -> np.ndarray:
    """(N, k) whitened principal components of (N, F) features: standardised, projected on
    the first `dims` principal components, each scaled to unit variance.

    Fitted on the pooled sample (reference and window together), never on the reference
    alone: then the reduction, like the bandwidth, is the same for every permutation and the
    permutation test keeps its level exactly. (Fitted on the reference alone, the window's
    out-of-sample spread along the trailing components is larger than the reference's
    in-sample one, and in-distribution windows alarm more often as `dims` grows.)
    Standardising: the three stages' channels have very different scales. Projecting: 336
    features from a few hundred images make every pairwise distance about the same.
    Whitening: exposure and framing shifts move components of small variance as much as
    large ones; unwhitened, the first few components decide the kernel. 32 components:
    on validation split in halves (half the reference, windows of 100 from the other
    half, clean or under evaluate's shifts), 16 missed brightness +0.15 in 7% of windows,
    8 in 37%, and 32 caught every shift the features move under; 64 no better.
    """
    mean = pooled.mean(axis=0)
    deviation = pooled.std(axis=0)
    # a channel constant over the pooled sample (a dead ReLU) is centred, not scaled
    deviation = np.where(deviation > 1e-6 * max(float(deviation.max()), 1e-12), deviation, 1.0)
    left, singular, _ = np.linalg.svd((pooled - mean) / deviation, full_matrices=False)
    rank = int(np.sum(singular > 1e-9 * float(singular[0]))) if singular[0] > 0 else 0
    if rank == 0:  # every row the same: nothing to compare, every distance zero
        return np.zeros((len(pooled), 1))
    return left[:, : min(dims, rank)] * math.sqrt(len(pooled))


def squared_distances(points: np.ndarray) -> np.ndarray:
    """(N, N) squared Euclidean distances of (N, k) points."""
    norms = np.einsum("ij,ij->i", points, points)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0)


def mmd_test(
    reference: np.ndarray,
    window: np.ndarray,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    dims: int = DIMS,
    max_reference: int = MAX_REFERENCE,
    design_effect: float = 1.0,
    max_window: int = MAX_WINDOW,
) -> Result:
    """Kernel two-sample test on features: MMD^2 with a Gaussian kernel, p-value by
        permutation.

        Features reduced by `reduce_features` (32 whitened principal components), and the
        bandwidth the median pairwise distance (Gretton et al. 2012's heuristic), both from the
        pooled sample: the statistic is then a function of the pooled sample and of which rows
        are the window's, and the permutation test's level is exact. The statistic is the
        biased (V-) estimate a' K a, a = +1/m on the reference's rows and -1/n on the window's.
        The kernel matrix is computed once and every permutation at once as a (P, m + n) matrix
        of such weights: one matrix product, P = 1000 permutations of 672 + 500 rows in about
        a second on two cores. A reference above `max_reference` rows and a window above
    `max_window` rows are subsampled (seeded): the kernel grows with the square of the rows.

        With `design_effect` D > 1 (images not independent), the observed statistic is compared
        with the permutation null scaled by D: this estimate's bias and null fluctuations both
        scale as 1 / n, and n images count as n / D. (A sample with every image twice has
        exactly the statistic of its originals, whose null is that of half as many images.)
    """
    rng = np.random.default_rng(seed)
    if len(reference) > max_reference:
        reference = reference[np.sort(rng.choice(len(reference), max_reference, replace=False))]
    if len(window) > max_window:
        window = window[np.sort(rng.choice(len(window), max_window, replace=False))]
    pooled = reduce_features(np.concatenate([reference, window]), dims)
    distances = squared_distances(pooled)
    upper = distances[np.triu_indices(len(pooled), k=1)]
    bandwidth_squared = float(np.median(upper)) if len(upper) else 1.0
    bandwidth_squared = bandwidth_squared if bandwidth_squared > 0 else 1.0
    kernel = np.exp(-distances / (2.0 * bandwidth_squared))
    size_reference, size_window = len(reference), len(window)
    # Row 0: the observed split; row p > 0: a permutation of the pooled rows, whose first m
    # play the reference. Computed in one product, so the observed row rounds as the others.
    order = np.tile(np.arange(len(pooled)), (permutations + 1, 1))
    order[1:] = rng.permuted(order[1:], axis=1)
    weights = np.full(order.shape, -1.0 / size_window)
    np.put_along_axis(weights, order[:, :size_reference], 1.0 / size_reference, axis=1)
    statistics = np.einsum("pi,pi->p", weights @ kernel, weights)
    observed, null = float(statistics[0]), statistics[1:]
    p_value = (1 + int(np.sum(design_effect * null >= observed))) / (1 + permutations)
    return Result(
        "mmd",
        observed,
        p_value,
        {
            "dims": int(pooled.shape[1]),
            "bandwidth": math.sqrt(bandwidth_squared),
            "permutations": permutations,
            "reference_rows": size_reference,
            "window_rows": size_window,
        },
        null=null,
    )


def _log_likelihood(proportion: float, positive: np.ndarray, negative: np.ndarray) -> float:
    """Log-likelihood (up to a constant) of a window's share of pneumonia under label
    shift: sum of log(pi * p(x|PNEUMONIA) + (1 - pi) * p(x|NORMAL)), with the class
    densities known up to one factor from the calibrated posteriors (Bayes' rule)."""
    mixture = proportion * positive + (1.0 - proportion) * negative
    return float(np.sum(np.log(np.maximum(mixture, 1e-300))))


def estimate_prevalence(
    probabilities: np.ndarray, prior: float, level: float = CI_LEVEL, design_effect: float = 1.0
) -> tuple[float, float, float]:
    """(estimate, low, high) of the window's share of pneumonia.

    `probabilities` are posteriors calibrated where the share was `prior`. Under label
    shift (p(x | class) unchanged), p(x | class) is proportional to posterior / prior, so
    the window's log-likelihood in its share pi is concave and its maximum is the fixed
    point of Saerens, Latinne & Decaestecker (2002)'s EM, found here directly as the root
    of the derivative. The interval is the profile-likelihood one (inverting the
    likelihood-ratio test, as `prevalence_test` does), so interval and test agree; with
    `design_effect` D it is widened as the test is (the likelihood's curvature over D).
    """
    from scipy.optimize import brentq
    from scipy.stats import chi2

    positive, negative = _class_ratios(probabilities, prior)

    def slope(proportion: float) -> float:
        return float(
            np.sum((positive - negative) / (proportion * positive + (1 - proportion) * negative))
        )

    if slope(0.0) <= 0:
        estimate = 0.0
    elif slope(1.0) >= 0:
        estimate = 1.0
    else:
        estimate = float(brentq(slope, 0.0, 1.0, xtol=1e-10))
    best = _log_likelihood(estimate, positive, negative)
    drop = float(chi2.ppf(level, 1)) / 2 * design_effect

    def excess(proportion: float) -> float:
        return best - _log_likelihood(proportion, positive, negative) - drop

    low = 0.0 if excess(0.0) <= 0 else float(brentq(excess, 0.0, estimate, xtol=1e-10))
    high = 1.0 if excess(1.0) <= 0 else float(brentq(excess, estimate, 1.0, xtol=1e-10))
    return estimate, low, high


def _class_ratios(probabilities: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """p(x | PNEUMONIA) and p(x | NORMAL) up to one common factor, from posteriors
    calibrated at `prior` (Bayes' rule)."""
    posterior = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    return posterior / prior, (1.0 - posterior) / (1.0 - prior)


def prevalence_test(
    probabilities: np.ndarray,
    prior: float,
    reference_share: float,
    reference_size: int | None = None,
    design_effect: float = 1.0,
) -> Result:
    """Is the window's share of pneumonia the reference's? Likelihood-ratio test of
    `estimate_prevalence`'s model, chi-squared with 1 degree of freedom.

    `prior`: the share the probabilities were calibrated at; `reference_share`: the share
    under the null. When it is a sample's (`reference_size` images; None: a share given, as
    `--reference-prevalence` is), it varies too, and the statistic is multiplied by
    var(window's estimate) / (var(window's estimate) + var(reference's share)), both at
    the null (the window's from its Fisher information), so that the test is two-sample,
    as KS and MMD are. Then divided by `design_effect` (Rao and Scott's first-order
    correction for clustered samples).
    """
    from scipy.stats import chi2

    estimate, low, high = estimate_prevalence(probabilities, prior, CI_LEVEL, design_effect)
    positive, negative = _class_ratios(probabilities, prior)
    ratio = 2.0 * (
        _log_likelihood(estimate, positive, negative)
        - _log_likelihood(reference_share, positive, negative)
    )
    mixture = reference_share * positive + (1.0 - reference_share) * negative
    information = float(np.sum(((positive - negative) / mixture) ** 2))
    reference_variance = (
        0.0 if reference_size is None else reference_share * (1 - reference_share) / reference_size
    )
    ratio = max(ratio, 0.0) / (1.0 + reference_variance * information) / design_effect
    return Result(
        "prevalence",
        ratio,
        float(chi2.sf(ratio, 1)),
        {
            "estimate": estimate,
            "ci95": [low, high],
            "reference": reference_share,
            "reference_share_from": "given" if reference_size is None else "reference labels",
            "calibration_prior": prior,
            "share_predicted_pneumonia": float(np.mean(np.asarray(probabilities) >= 0.5)),
        },
    )


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """Everything the report and the plot show."""

    reference: Sample
    window: Sample
    results: list[Result]
    alpha: float
    prior: float  # the share of pneumonia the probabilities are calibrated at
    design_effect: float = 1.0

    @property
    def level(self) -> float:
        """Each test's level: Bonferroni over the tests run."""
        return self.alpha / max(1, sum(r.p_value is not None for r in self.results))

    @property
    def drifted(self) -> list[str]:
        """The tests that reject at their level."""
        return [r.name for r in self.results if r.p_value is not None and r.p_value < self.level]


def mmd_or_reason(
    reference: Sample,
    window: Sample,
    permutations: int,
    seed: int,
    dims: int = DIMS,
    design_effect: float = 1.0,
) -> Result:
    """The MMD test when both sides carry features; otherwise why it was not run."""
    if reference.features is None:
        reason = "the reference carries no features"
    elif window.features is None:
        reason = (
            f"{window.missing_features} of the window's {len(window.probabilities)} rows carry "
            "no features (score with `python -m pneumonia.batch --features`)"
        )
    else:
        if reference.features.shape[1] != window.features.shape[1]:
            raise MonitorError(
                f"features of length {window.features.shape[1]} in the window, "
                f"{reference.features.shape[1]} in the reference"
            )
        return mmd_test(
            reference.features,
            window.features,
            permutations,
            seed,
            dims,
            design_effect=design_effect,
        )
    return Result("mmd", None, None, reason=reason)


def compare(
    reference: Sample,
    window: Sample,
    *,
    alpha: float = 0.05,
    reference_prevalence: float | None = None,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    dims: int = DIMS,
    design_effect: float = DESIGN_EFFECT,
) -> Comparison:
    """The three tests of a window against the reference (resampled to
    `reference_prevalence` first when given), each counting n images as n / design_effect."""
    if reference.labels is None:
        raise MonitorError("the reference needs labels")
    prior = float(np.mean(reference.labels))  # what Platt scaling on validation fitted to
    if reference_prevalence is not None:
        reference = subset(
            reference, resample_to_prevalence(reference.labels, reference_prevalence, seed)
        )
    assert reference.labels is not None
    share = float(np.mean(reference.labels))
    size = None if reference_prevalence is not None else len(reference.labels)
    results = [
        ks_test(reference.probabilities, window.probabilities, design_effect),
        mmd_or_reason(reference, window, permutations, seed, dims, design_effect),
        prevalence_test(window.probabilities, prior, share, size, design_effect),
    ]
    return Comparison(reference, window, results, alpha, prior, design_effect)


def drift_report(comparison: Comparison, counts: dict[str, int], warnings: list[str]) -> dict:
    """The JSON report: counts, each test, the decision. No file names."""
    tests: dict[str, Any] = {}
    for result in comparison.results:
        entry: dict[str, Any] = {"run": result.p_value is not None}
        if result.p_value is None:
            entry["reason"] = result.reason
        else:
            entry |= {
                "statistic": result.statistic,
                "p_value": result.p_value,
                "level": comparison.level,
                "drift": result.name in comparison.drifted,
            }
        tests[result.name] = entry | result.detail
    return {
        "drift": bool(comparison.drifted),
        "drifted_tests": comparison.drifted,
        "alpha": comparison.alpha,
        "correction": "bonferroni",
        "design_effect": comparison.design_effect,
        "counts": counts
        | {
            "error_share": counts["errors"] / max(counts["rows"], 1),
            "reference": len(comparison.reference.probabilities),
        },
        "tests": tests,
        "warnings": warnings,
    }


def _mmd_panel(axis: Any, mmd: Result, design_effect: float) -> None:
    """The permutation null (scaled by the design effect, as the test uses it) and the
    observed statistic; or why the test was not run."""
    if mmd.null is None or mmd.statistic is None:
        axis.text(0.5, 0.5, f"MMD not run:\n{mmd.reason}", ha="center", va="center", wrap=True)
        axis.set_axis_off()
        return
    label = "permutations" if design_effect == 1 else f"permutations x {design_effect:g}"
    axis.hist(design_effect * mmd.null, bins=40, color="grey", label=label)
    axis.axvline(mmd.statistic, color="red", label="observed")
    axis.set(xlabel="MMD^2 of the features", ylabel="permutations")
    axis.set_title(f"features: MMD p = {mmd.p_value:.3g}", fontsize=10)
    axis.legend()


def figure(comparison: Comparison) -> Figure:
    """Three panels: probability histograms, the MMD's permutation null with the observed
    statistic, the window's prevalence with its interval against the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks, mmd, prevalence = comparison.results
    plot, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=90, layout="constrained")
    bins = list(np.linspace(0, 1, 21))
    for name, sample in (("reference", comparison.reference), ("window", comparison.window)):
        axes[0].hist(sample.probabilities, bins=bins, density=True, alpha=0.5, label=name)
    axes[0].set(xlabel="calibrated P(pneumonia)", ylabel="density")
    axes[0].set_title(f"probabilities: KS {ks.statistic:.3f}, p = {ks.p_value:.3g}", fontsize=10)
    axes[0].legend()
    _mmd_panel(axes[1], mmd, comparison.design_effect)
    estimate, (low, high) = prevalence.detail["estimate"], prevalence.detail["ci95"]
    axes[2].errorbar(
        [0], [estimate], yerr=[[estimate - low], [high - estimate]], fmt="o", label="window, 95%"
    )
    axes[2].axhline(
        prevalence.detail["reference"], color="black", linestyle="--", label="reference"
    )
    axes[2].set(xlim=(-1, 1), ylim=(0, 1), xticks=[], ylabel="share of pneumonia")
    axes[2].set_title(
        f"prevalence: window {estimate:.2f} [{low:.2f}, {high:.2f}],\n"
        f"reference {prevalence.detail['reference']:.2f}, p = {prevalence.p_value:.3g}",
        fontsize=10,
    )
    axes[2].legend(loc="lower right")
    verdict = "DRIFT: " + ", ".join(comparison.drifted) if comparison.drifted else "no drift"
    plot.suptitle(
        f"{verdict} ({len(comparison.window.probabilities)} images against "
        f"{len(comparison.reference.probabilities)}; each test at {comparison.level:.4f})"
    )
    return plot


# ---------------------------------------------------------------- command line


def _fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive(text: str) -> int:
    """An argparse type: a positive integer."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _at_least_one(text: str) -> float:
    """An argparse type: a number of at least 1."""
    value = float(text)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1")
    return value


def add_test_options(parse: argparse.ArgumentParser) -> None:
    """The tests' options, shared by every command that runs them (pneumonia.watch too)."""
    parse.add_argument(
        "--reference-prevalence",
        type=_fraction,
        help="resample the reference per class to this share of pneumonia (a site's own)",
    )
    parse.add_argument("--alpha", type=_fraction, default=0.05, help="false-alarm rate")
    parse.add_argument(
        "--design-effect",
        type=_at_least_one,
        default=DESIGN_EFFECT,
        help="count n images as n / D independent ones (1: images independent)",
    )
    parse.add_argument("--permutations", type=_positive, default=PERMUTATIONS)
    parse.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parse = argparse.ArgumentParser(
        prog="python -m pneumonia.monitor", description=__doc__.splitlines()[0]
    )
    parse.add_argument("--reference", type=Path, required=True, help="evaluate's reference.jsonl")
    parse.add_argument("--current", type=Path, required=True, help="pneumonia.batch's output")
    parse.add_argument("--window", type=_positive, help="the last N ok rows (default: all)")
    add_test_options(parse)
    parse.add_argument("--report", type=Path, help="default: <current>.monitor.json beside it")
    parse.add_argument("--plot", type=Path, help="default: <current>.monitor.png beside it")
    parse.add_argument(
        "--no-plot",
        action="store_true",
        help="write the report alone (a check that reads only the exit status); the plot "
        "takes most of a run's time",
    )
    return parse


def version_warnings(reference: list[dict], theirs: set[str]) -> list[str]:
    """A warning when the two files come from different models (where they say)."""
    mine = {str(row["modelVersion"]) for row in reference if row.get("modelVersion")}
    if mine and theirs and mine != theirs:
        return [f"model versions differ: reference {sorted(mine)}, window {sorted(theirs)}"]
    return []


def run_monitor(args: argparse.Namespace) -> dict:
    """Read, compare, write the report and the plot; the report."""
    reference_rows, current = read_rows(args.reference), read_window(args.current, args.window)
    reference = reference_sample(reference_rows, str(args.reference))
    window, counts = window_sample(current, str(args.current))
    comparison = compare(
        reference,
        window,
        alpha=args.alpha,
        reference_prevalence=args.reference_prevalence,
        permutations=args.permutations,
        seed=args.seed,
        design_effect=args.design_effect,
    )
    versions = current.model_versions
    written = drift_report(comparison, counts, version_warnings(reference_rows, versions))
    written["model_versions"] = sorted(versions)
    stem = args.current.with_suffix("")
    report_path = args.report or stem.with_name(stem.name + ".monitor.json")
    plot_path = args.plot or stem.with_name(stem.name + ".monitor.png")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(written, indent=2) + "\n")
    written |= {"report": str(report_path), "plot": None}
    if not args.no_plot:
        import matplotlib.pyplot as plt

        plot_path.parent.mkdir(parents=True, exist_ok=True)
        drawn = figure(comparison)
        drawn.savefig(plot_path)
        plt.close(drawn)
        written["plot"] = str(plot_path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 no drift, 1 drift, 2 bad usage or input."""
    parse = parser()
    args = parse.parse_args(argv)
    try:
        written = run_monitor(args)
    except (MonitorError, OSError) as error:
        parse.error(str(error))  # exits with status 2
    for warning in written["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    summary = {
        "drift": written["drift"],
        "drifted_tests": written["drifted_tests"],
        **{
            f"{name}_p": test.get("p_value")
            for name, test in written["tests"].items()
            if test["run"]
        },
        "window": written["counts"]["window"],
        "report": written["report"],
        "plot": written["plot"],
    }
    print(json.dumps(summary))
    return 1 if written["drift"] else 0


if __name__ == "__main__":
    sys.exit(main())
