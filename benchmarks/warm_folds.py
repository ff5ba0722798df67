"""What starting each cross-validation fold's solver from the head fitted on everything saves,
and what it changes: evaluate cross-validates the intended-use head and the reason head over
the external radiographs (five folds each), and since 2026-12-07 starts each fold's fit from
the head it fits on all of them first (`fit_use_head(start=)`).

For each head and each fold of `--seed`'s draw (`kind_folds`), the fold's head is fitted from
scratch and from the head on everything. Prints, per head, the seconds of the five fits each
way, the largest difference between the two heads' logits on the fold's held-out images (as it
is and under every shift) and how many of those rows they name differently.

Needs the features `python -m benchmarks.fold_draws --save-features F` keeps (evaluate's own
features of the committed network and external radiographs).

    python -m benchmarks.warm_folds --features F [--seed 42]

Prints a table and appends it to benchmarks/warm_folds.txt (`--out`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.cache import print_and_record, read_features

ROOT = Path(__file__).resolve().parents[1]


def problems(found: dict) -> dict[str, tuple[list[str], list[np.ndarray], dict, dict]]:
    """Each head's (kind of each external image, its rows, the always-fitted rows by kind,
    `fit_use_head`'s options as evaluate passes them): the intended-use head on the served
    network's features, the reason head on the fixed network's (the committed radiographs that
    reach the model, then the kept statistics)."""
    from pneumonia.decision.use import ANSWERED
    from pneumonia.evaluation.intended_use import USE_LAYOUT_ASYMMETRY, USE_STRENGTH
    from pneumonia.evaluation.view import REASON_STRENGTH, load_kept

    external = found["external"]
    reached = [i for i, reason in enumerate(external.refused_early) if reason is None]
    use = (
        [external.kinds[i] for i in reached],
        [external.features[i] for i in reached],
        {ANSWERED: [found["train"]]},
        {"strength": USE_STRENGTH, "layout_asymmetry": USE_LAYOUT_ASYMMETRY},
    )
    kinds = [kind for kind, rows in zip(external.kinds, found["reasons"], strict=True) if len(rows)]
    rows = [rows for rows in found["reasons"] if len(rows)]
    for source in load_kept():
        kinds += source.kinds
        rows += source.reasons or []
    reason = (kinds, rows, {ANSWERED: found["training_reasons"]}, {"strength": REASON_STRENGTH})
    return {"intended-use head": use, "reason head": reason}


def grouped(kinds: list[str], rows: list[np.ndarray], chosen: np.ndarray, base: dict) -> dict:
    """The fit's rows by kind: `base`'s and the `chosen` images'."""
    by = {kind: list(parts) for kind, parts in base.items()}
    for index in np.flatnonzero(chosen):
        by.setdefault(kinds[index], []).append(rows[index])
    return {kind: np.concatenate(parts) for kind, parts in by.items()}


def compare(name: str, problem: tuple, seed: int) -> str:
    """One table row: the five folds fitted cold and warm."""
    from pneumonia.decision.use import fit_use_head
    from pneumonia.evaluation.intended_use import FOLDS, kind_folds

    kinds, rows, base, options = problem
    everything = fit_use_head(grouped(kinds, rows, np.ones(len(kinds), bool), base), **options)
    fold_of = kind_folds(kinds, FOLDS, seed)
    seconds = {"cold": 0.0, "warm": 0.0}
    largest, differ, held = 0.0, 0, 0
    for fold in range(FOLDS):
        features = grouped(kinds, rows, fold_of != fold, base)
        heads = {}
        for mode, start in (("cold", None), ("warm", everything)):
            began = time.perf_counter()
            heads[mode] = fit_use_head(features, **options, start=start)
            seconds[mode] += time.perf_counter() - began
        out = np.concatenate([rows[i] for i in np.flatnonzero(fold_of == fold)])
        cold, warm = heads["cold"].logits(out), heads["warm"].logits(out)
        largest = max(largest, float(np.abs(cold - warm).max()))
        differ += int(np.sum(cold.argmax(axis=1) != warm.argmax(axis=1)))
        held += len(out)
    return (
        f"| {name} | {len(kinds)} | {seconds['cold']:.1f} | {seconds['warm']:.1f} "
        f"| {largest:.2g} | {differ} of {held} |"
    )


def main() -> None:
    """Parse the arguments, fit, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/warm_folds.txt")
    args = parser.parse_args()
    from pneumonia.machine import describe

    found = read_features(args.features)
    lines = [
        f"machine: {describe()}; folds of seed {args.seed}",
        "| head | images | 5 folds from scratch (s) | 5 folds warm-started (s) "
        "| largest logit difference | held-out rows named otherwise |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [compare(name, problem, args.seed) for name, problem in problems(found).items()]
    print_and_record("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
