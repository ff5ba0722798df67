"""What a site's recalibration (`python -m pneumonia.recalibrate`) buys, measured on this
project's own other-period splits (early, late) as if each were a new site.

Needs `make repro` (models/model.onnx, model.json, data/manifest.csv, data/raw). Every image of
the split is scored once through the endpoint's code path (`Classifier.classify`, the graph's
own probability: no recalibration); images the endpoint refuses are left out, as the tool
leaves them out. Then, for each sample size N and each of `--draws` seeded draws:

- N labelled images are drawn from the split, each class at the split's share of N but at
  least 25 (the tool's minimum);
- the operating point is refitted on them with the tool's own function
  (`fit_operating_point`: Platt on the graph's logit, the model's threshold rule, the band);
- the shipped and the refitted operating points are measured on the rest of the split (the
  images not drawn), paired.

Prints, per split and N, the mean and the 5th-95th percentile over draws of sensitivity,
specificity, ECE, the share indeterminate and the accuracy on decided cases, shipped ->
refitted, and writes the table to benchmarks/recalibration.txt.

    python -m benchmarks.recalibration [--draws 200] [--sizes 50 100 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pneumonia.decision.band import band_metrics
from pneumonia.decision.rates import binary_metrics, calibration_metrics
from pneumonia.machine import describe
from pneumonia.serving.classifier import Classifier
from pneumonia.serving.recalibrate import MIN_PER_CLASS, fit_operating_point, shipped_point
from pneumonia.serving.requests import ClientError

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("sensitivity", "specificity", "ece", "share_indeterminate", "accuracy_decided")


def score_split(model: Classifier, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, graph probabilities, refused count) of a split's answered images."""
    graph = Classifier(model.session, model.metadata.model_copy(update={"recalibration": None}))
    manifest = pd.read_csv(ROOT / "data/manifest.csv")
    rows = manifest[manifest.split == split]
    labels, probabilities, refused = [], [], 0
    for file, label in zip(rows.file, rows.label, strict=True):
        try:
            answer = graph.classify((ROOT / "data/raw" / file).read_bytes())
        except ClientError:
            refused += 1
            continue
        labels.append(model.metadata.labels.index(label))
        probabilities.append(answer.probability)
    return np.array(labels), np.array(probabilities), refused


def figures(labels: np.ndarray, probabilities: np.ndarray, point) -> dict[str, float]:
    """The reported figures of one operating point on served probabilities."""
    rates = binary_metrics(labels, probabilities, point.threshold)
    return {
        "sensitivity": rates["sensitivity"],
        "specificity": rates["specificity"],
        **calibration_metrics(labels, probabilities, 10),
        **band_metrics(labels, probabilities, point.band),
    }


def draw(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a labelled sample of `size`: each class at its share, at least the minimum."""
    chosen = []
    positive = max(MIN_PER_CLASS, round(size * labels.mean()))
    for value, count in ((1, positive), (0, size - positive)):
        count = max(MIN_PER_CLASS, count)
        members = np.flatnonzero(labels == value)
        chosen.append(rng.choice(members, size=min(count, len(members) - 5), replace=False))
    return np.concatenate(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--splits", nargs="+", default=["early", "late"])
    args = parser.parse_args()
    model = Classifier.load(ROOT / "models")
    metadata = model.metadata
    shipped = shipped_point(metadata)
    lines = [
        f"machine: {describe()}",
        f"model: {metadata.model_version}; {args.draws} draws per row; figures on the images "
        "not drawn: mean [5th, 95th percentile], shipped -> refitted",
        "",
        "| split | N | rest | " + " | ".join(FIGURES) + " |",
        "|---|---|---|" + "---|" * len(FIGURES),
    ]
    for split in args.splits:
        labels, graph, refused = score_split(model, split)
        print(f"{split}: {len(labels)} answered, {refused} refused; prevalence {labels.mean():.2f}")
        for size in args.sizes:
            rng = np.random.default_rng(size)
            before, after, rest = [], [], []
            for _ in range(args.draws):
                sample = draw(labels, size, rng)
                others = np.setdiff1d(np.arange(len(labels)), sample)
                point = fit_operating_point(labels[sample], graph[sample], metadata)
                served_before = shipped.probabilities(graph[others])
                before.append(figures(labels[others], served_before, shipped))
                served_after = point.probabilities(graph[others])
                after.append(figures(labels[others], served_after, point))
                rest.append(len(others))

            def cell(name: str, runs_before=before, runs_after=after) -> str:
                parts = []
                for runs in (runs_before, runs_after):
                    values = np.array([run[name] for run in runs])
                    low, high = np.nanpercentile(values, [5, 95])
                    parts.append(f"{np.nanmean(values):.3f} [{low:.3f}, {high:.3f}]")
                return " -> ".join(parts)

            row = f"| {split} | {size} | {int(np.mean(rest))} | "
            lines.append(row + " | ".join(cell(name) for name in FIGURES) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks/recalibration.txt").write_text(text)


if __name__ == "__main__":
    main()
