"""Ablation of the training levers: one `dvc exp run` per lever, a markdown table of the effects.

Each row changes one param against the committed defaults and reruns what it touches;
the table gives the test metrics with 95% bootstrap intervals, the worst robustness
shift, and the training time. The workspace is restored to the defaults at the end.

    python benchmarks/ablation.py                 # every lever (~8 min each on 2 cores)
    python benchmarks/ablation.py --only no-augmentation no-clahe
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVERS: dict[str, list[str]] = {
    "no-augmentation": ["train.augment.enabled=false"],
    "no-jpeg-augmentation": ["train.augment.jpeg_quality_min=100"],
    "no-clahe": ["preprocess.intensity=none"],
    "equalize": ["preprocess.intensity=equalize"],
    "no-class-weight": ["train.class_weight=none"],
    "label-smoothing-0.1": ["train.label_smoothing=0.1"],
    "simple-cnn": ["train.architecture=simple"],
    "image-96px": ["preprocess.image_size=96"],
    "threshold-sens-0.95": ["evaluate.threshold_policy=target_sensitivity"],
}
METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")
# What an experiment rewrites in git-tracked files; restored at the end.
TRACKED_OUTPUTS = ["params.yaml", "dvc.lock", "metrics", "models", "data/ingest_report.json"]


def sh(*command: str) -> str:
    return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def row(name: str, seconds: float | None) -> str:
    evaluation = json.loads((ROOT / "metrics/evaluate/metrics.json").read_text())
    train = json.loads((ROOT / "metrics/train/metrics.json").read_text())
    cells = []
    for metric in METRICS:
        value = evaluation["test"][metric]
        low, high = evaluation["test_ci95_low"][metric], evaluation["test_ci95_high"][metric]
        cells.append(f"{value:.3f} [{low:.3f}, {high:.3f}]")
    robustness = evaluation.get("robustness", {})
    worst = min(robustness.items(), key=lambda item: item[1]["roc_auc"], default=None)
    worst_cell = f"{worst[1]['roc_auc']:.3f} ({worst[0]})" if worst else "-"
    timing = f"{train.get('train_seconds', float('nan')):.0f}"
    wall = f"{seconds:.0f}" if seconds is not None else "-"
    return f"| {name} | " + " | ".join(cells) + f" | {worst_cell} | {timing} | {wall} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    args = parser.parse_args()
    if sh("git", "status", "--porcelain", *TRACKED_OUTPUTS).strip():
        sys.exit(f"uncommitted changes in {' '.join(TRACKED_OUTPUTS)}: commit or stash them")
    header = (
        "| lever | AUC | accuracy | sensitivity | specificity | worst shift AUC | "
        "train s | rerun s |\n|---|---|---|---|---|---|---:|---:|"
    )
    rows = [row("defaults (committed run)", None)]
    try:
        for name in args.only:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            sh("git", "checkout", "--", "params.yaml")
            started = time.perf_counter()
            settings = [arg for item in LEVERS[name] for arg in ("--set-param", item)]
            sh("dvc", "exp", "run", "--name", f"ablation-{name}", *settings)
            rows.append(row(name, time.perf_counter() - started))
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        sh("git", "checkout", "--", *TRACKED_OUTPUTS)
        restored = subprocess.run(["dvc", "checkout", "--force"], cwd=ROOT, capture_output=True)
        if restored.returncode != 0:
            print(
                "the committed outputs are not in this cache: run `dvc pull` or `dvc repro`",
                file=sys.stderr,
            )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
