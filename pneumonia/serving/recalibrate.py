"""Fit the operating point to a site's own patients: calibration, threshold and indeterminate
band refitted on a small labelled sample, the graph unchanged.

    python -m pneumonia.recalibrate LABELLED_FOLDER --model-dir models --output DIR \\
        [--site NAME] [--min-per-class 25] [--seed 0] [--bootstrap 1000]

LABELLED_FOLDER holds NORMAL/ and PNEUMONIA/ (the model's labels), each with the site's
JPEG, PNG or DICOM files. Every file is scored through the endpoint's code path (decode,
checks, preprocessing, the ONNX graph, the gate); what the endpoint would refuse is counted
by reason and left out. On the answered images:

- a Platt map on the logit of the graph's calibrated probability (`recalibration` in
  model.json: the probability the endpoint answers);
- the threshold by the model's own rule (model.json's `operating_point`: the policy and
  target evaluate used), on the recalibrated probabilities;
- the indeterminate band: class-conditional conformal quantiles at the model's error rate.

The report compares the shipped operating point with a refitted one on half of the sample
that the refit never saw (each class split in two at random; `--seed`), with bootstrap
intervals: `DIR/recalibration.json` and `DIR/recalibration.md`. What is written is then
refitted on the whole sample: `DIR/model.onnx` (the same bytes; `reason.onnx` too, when the
model has one) and `DIR/model.json`, whose
`modelVersion` is new because its answering fields changed (docs/serving.md#model-version).
`--model-dir` is never written. Needs only the endpoint's dependencies
(lambda/requirements.txt). Exit status: 0 written, 2 refused (too few images of a class,
bad folders, an output that would overwrite the model) with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.decision.band import Band, band_metrics, conformal_band
from pneumonia.decision.calibration import Calibration, fit_calibration, logit
from pneumonia.decision.contract import SITE_PATTERN, ModelMetadata
from pneumonia.decision.rates import (
    binary_metrics,
    bootstrap_intervals,
    calibration_metrics,
    choose_threshold,
)
from pneumonia.serving.classifier import Classifier
from pneumonia.serving.requests import MAX_IMAGE_BYTES, ClientError

log = logging.getLogger("recalibrate")

MIN_PER_CLASS = 25  # answered images of each class below which the refit is refused
CALIBRATION_BINS = 10
WRITTEN = ("model.onnx", "reason.onnx", "model.json", "recalibration.json", "recalibration.md")
HEADLINE = ("roc_auc", "accuracy", "sensitivity", "specificity")


class RecalibrationError(ValueError):
    """A sample or an output the refit cannot use; the message says why."""


@dataclass(frozen=True)
class SiteSample:
    """The site's answered images: label (1 = the positive label) and the graph's calibrated
    probability, before any site recalibration; and what was refused, by class and reason."""

    labels: np.ndarray
    graph_probabilities: np.ndarray
    files: dict[str, int]
    refused: dict[str, dict[str, int]]


@dataclass(frozen=True)
class OperatingPoint:
    """What a refit gives: the site's Platt map, the threshold and the band on its output."""

    recalibration: Calibration
    threshold: float
    band: Band

    def probabilities(self, graph_probabilities: np.ndarray) -> np.ndarray:
        """The served probability for the graph's."""
        return self.recalibration.apply(logit(graph_probabilities))


def score_folder(folder: Path, model: Classifier) -> SiteSample:
    """Every file of folder/<label>/ scored as the endpoint would, with the graph's own
    probability (the model's recalibration, if it has one, left out: the refit replaces it)."""
    metadata = model.metadata.model_copy(update={"recalibration": None})
    graph = Classifier(model.session, metadata, model.reason_session)
    labels: list[int] = []
    probabilities: list[float] = []
    files: dict[str, int] = {}
    refused: dict[str, dict[str, int]] = {}
    unknown = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and p.name not in model.metadata.labels and not p.name.startswith(".")
    )
    if unknown:
        raise RecalibrationError(
            f"{folder} holds folders other than {' and '.join(model.metadata.labels)}: "
            f"{', '.join(unknown)}"
        )
    for index, label in enumerate(model.metadata.labels):
        reasons: Counter[str] = Counter()
        paths = sorted(
            p for p in (folder / label).glob("*") if p.is_file() and not p.name.startswith(".")
        )
        for path in paths:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                reasons["too_large"] += 1
                continue
            try:
                prediction = graph.classify(path.read_bytes())
            except ClientError as error:
                reasons[error.reason] += 1
                continue
            labels.append(index)
            probabilities.append(prediction.probability)
        files[label] = len(paths)
        refused[label] = dict(sorted(reasons.items()))
        log.info(
            "%s: %d files, %d answered, %d refused",
            label,
            len(paths),
            len(paths) - sum(reasons.values()),
            sum(reasons.values()),
        )
    return SiteSample(np.array(labels, dtype=int), np.array(probabilities), files, refused)


def check_size(sample: SiteSample, names: tuple[str, str], minimum: int) -> None:
    """Refuse a sample with fewer than `minimum` answered images of a class, saying why."""
    short = []
    for index, name in enumerate(names):
        answered = int(np.sum(sample.labels == index))
        if answered < minimum:
            refused = sum(sample.refused.get(name, {}).values())
            short.append(
                f"{name}: {answered} answered of {sample.files.get(name, 0)} files "
                f"({refused} refused by the endpoint's checks)"
            )
    if short:
        raise RecalibrationError(
            f"too few images to refit on: {'; '.join(short)}; at least {minimum} answered "
            "images of each class are needed (--min-per-class). A smaller sample moves the "
            "threshold more than it corrects it."
        )


def fit_operating_point(
    labels: np.ndarray, graph_probabilities: np.ndarray, metadata: ModelMetadata
) -> OperatingPoint:
    """The site's Platt map, then the threshold by the model's rule and the band at its
    error rate, all on these images."""
    recalibration = fit_calibration(labels, logit(graph_probabilities))
    probabilities = recalibration.apply(logit(graph_probabilities))
    rule = metadata.operating_point
    policy = rule.policy if rule is not None else "target_sensitivity"
    target = rule.target_sensitivity if rule is not None else 0.95
    # youden_shifted pools shifted copies of validation; a site's sample has none
    policy = "youden" if policy == "youden_shifted" else policy
    threshold = choose_threshold(labels, probabilities, policy, target, metadata.threshold)
    band = conformal_band(labels, probabilities, metadata.decision_band.error_rate, threshold)
    return OperatingPoint(recalibration, threshold, band)


def shipped_point(metadata: ModelMetadata) -> OperatingPoint:
    """The model's own operating point, as an OperatingPoint."""
    spec = metadata.recalibration
    identity = Calibration(1.0, 0.0) if spec is None else Calibration(spec.scale, spec.shift)
    return OperatingPoint(identity, metadata.threshold, Band(**metadata.decision_band.model_dump()))


def measure(
    labels: np.ndarray, probabilities: np.ndarray, point: OperatingPoint, samples: int, seed: int
) -> dict[str, Any]:
    """The figures of one operating point on labelled served probabilities, with 95%
    bootstrap intervals of the rates."""
    rates = binary_metrics(labels, probabilities, point.threshold)
    intervals = bootstrap_intervals(labels, probabilities, point.threshold, samples, seed)
    return {
        "threshold": point.threshold,
        "band": [point.band.low, point.band.high],
        **{name: float(rates[name]) for name in HEADLINE},
        "ci95": {name: list(intervals[name]) for name in HEADLINE},
        **calibration_metrics(labels, probabilities, CALIBRATION_BINS),
        "mean_probability": float(np.mean(probabilities)),
        **band_metrics(labels, probabilities, point.band),
    }


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices: each class shuffled and cut in two, the larger half fitted."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        cut = (len(members) + 1) // 2
        fit.append(members[:cut])
        held.append(members[cut:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def report(
    sample: SiteSample, metadata: ModelMetadata, written: OperatingPoint, samples: int, seed: int
) -> dict[str, Any]:
    """Before (the shipped operating point) and after (one refitted on the other half) on
    the held-out half, and what was written."""
    fit, held = halves(sample.labels, seed)
    shipped = shipped_point(metadata)
    refit = fit_operating_point(sample.labels[fit], sample.graph_probabilities[fit], metadata)
    labels = sample.labels[held]
    graph = sample.graph_probabilities[held]
    return {
        "base_model_version": metadata.model_version,
        "sample": {
            name: {
                "files": sample.files[name],
                "answered": int(np.sum(sample.labels == index)),
                "refused": sample.refused[name],
            }
            for index, name in enumerate(metadata.labels)
        },
        "seed": seed,
        "held_out": {
            "images": len(held),
            "fitted_on": len(fit),
            "before": measure(labels, shipped.probabilities(graph), shipped, samples, seed),
            "after": measure(labels, refit.probabilities(graph), refit, samples, seed),
        },
        "written": {
            "fitted_on": len(sample.labels),
            "recalibration": {
                "scale": written.recalibration.scale,
                "shift": written.recalibration.shift,
            },
            "threshold": written.threshold,
            "band": [written.band.low, written.band.high],
        },
    }


def recalibrated_metadata(
    metadata: ModelMetadata,
    onnx_bytes: bytes,
    point: OperatingPoint,
    site: str | None,
    figures: dict[str, Any],
) -> ModelMetadata:
    """model.json for the same graph at the site's operating point, with its new version."""
    fields = metadata.model_dump(exclude={"model_version"})
    fields.update(
        threshold=point.threshold,
        decision_band={
            "low": point.band.low,
            "high": point.band.high,
            "error_rate": metadata.decision_band.error_rate,
        },
        recalibration={
            "method": "platt",
            "scale": point.recalibration.scale,
            "shift": point.recalibration.shift,
        },
        site=site,
        metrics={**metadata.metrics, "site_held_out": figures},
        versions={**metadata.versions, "recalibrated_from": metadata.model_version},
    )
    fields["labels"] = tuple(fields["labels"])
    return ModelMetadata.for_graph(onnx_bytes, fields)


def check_output(output: Path, model_dir: Path) -> None:
    """Refuse an output folder that is the model's own, or holds files other than ours."""
    if output.resolve() == model_dir.resolve():
        raise RecalibrationError(f"--output {output} is --model-dir: the model is never changed")
    if output.exists():
        others = sorted(p.name for p in output.iterdir() if p.name not in WRITTEN)
        if others:
            raise RecalibrationError(
                f"--output {output} holds other files ({', '.join(others[:5])}); "
                "give an empty or new folder"
            )


def markdown(figures: dict[str, Any], version: str, site: str | None) -> str:
    """The report as a table a reviewer reads."""
    held = figures["held_out"]
    lines = [
        f"# Recalibration{f' for {site}' if site else ''}: {figures['base_model_version']} "
        f"-> {version}",
        "",
        f"Held-out half: {held['images']} images; the refit saw the other {held['fitted_on']}. "
        "95% bootstrap intervals.",
        "",
        "| | before (shipped) | after (refitted on the other half) |",
        "|---|---|---|",
    ]
    before, after = held["before"], held["after"]
    for name in HEADLINE:
        cells = [
            f"{point[name]:.3f} [{point['ci95'][name][0]:.3f}, {point['ci95'][name][1]:.3f}]"
            for point in (before, after)
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for name in ("ece", "brier", "share_indeterminate", "accuracy_decided", "threshold"):
        lines.append(f"| {name} | {before[name]:.3f} | {after[name]:.3f} |")
    written = figures["written"]
    lines += [
        "",
        f"Written: refitted on all {written['fitted_on']} answered images: threshold "
        f"{written['threshold']:.4f}, band [{written['band'][0]:.4f}, {written['band'][1]:.4f}).",
        "",
    ]
    return "\n".join(lines)


def recalibrate(
    folder: Path,
    model_dir: Path,
    output: Path,
    site: str | None = None,
    minimum: int = MIN_PER_CLASS,
    seed: int = 0,
    samples: int = 1000,
) -> dict[str, Any]:
    """Score, refuse or refit, write DIR's four files; returns the report."""
    check_output(output, model_dir)
    if site is not None and not re.fullmatch(SITE_PATTERN, site):
        raise RecalibrationError(f"--site {site!r}: lower-case letters, digits and '-' only")
    if not folder.is_dir():
        raise RecalibrationError(f"{folder} is not a folder")
    model = Classifier.load(model_dir)
    metadata = model.metadata
    missing = [name for name in metadata.labels if not (folder / name).is_dir()]
    if missing:
        raise RecalibrationError(f"{folder} has no {' or '.join(missing)} folder")
    sample = score_folder(folder, model)
    check_size(sample, metadata.labels, minimum)
    written = fit_operating_point(sample.labels, sample.graph_probabilities, metadata)
    figures = report(sample, metadata, written, samples, seed)
    onnx_bytes = (model_dir / "model.onnx").read_bytes()
    summary = {k: figures["held_out"]["after"][k] for k in HEADLINE}
    new = recalibrated_metadata(metadata, onnx_bytes, written, site, summary)
    figures["model_version"] = new.model_version
    figures["site"] = site
    output.mkdir(parents=True, exist_ok=True)
    (output / "model.onnx").write_bytes(onnx_bytes)
    if metadata.reason is not None:  # the reason head, as it is (model.json names its hash)
        name = metadata.reason.file
        (output / name).write_bytes((model_dir / name).read_bytes())
    (output / "recalibration.json").write_text(json.dumps(figures, indent=2) + "\n")
    (output / "recalibration.md").write_text(markdown(figures, new.model_version, site))
    (output / "model.json").write_text(new.to_json())
    Classifier.load(output)  # what was written loads as the endpoint would load it
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 2 with one line for what cannot be refitted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="NORMAL/ and PNEUMONIA/ of labelled images")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--site", help="the site's name, recorded in model.json (a-z, 0-9, -)")
    parser.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS)
    parser.add_argument("--seed", type=int, default=0, help="of the halves and the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    try:
        figures = recalibrate(
            args.folder,
            args.model_dir,
            args.output,
            args.site,
            args.min_per_class,
            args.seed,
            args.bootstrap,
        )
    except (RecalibrationError, ValueError) as error:
        print(f"recalibrate: {error}", file=sys.stderr)
        return 2
    print((args.output / "recalibration.md").read_text())
    print(f"{figures['base_model_version']} -> {figures['model_version']} in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
