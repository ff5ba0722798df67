"""How the reason head names the external radiographs under each prior for other body parts
(`pneumonia.decision.reason.BODY_PART_PRIOR`), under several draws of evaluate's folds.

For each `--seeds` draw, the view check and the reason head are cross-validated as evaluate
does (`kind_folds`, the folds fitted by `pneumonia.evaluation.view`'s own fit), keeping each
image's cross-validated reason logits and lateral call. The prior is a constant added to one
logit after the fit, so every `--priors` value is then applied to the same logits: the fitted
prior is taken off and the candidate added. Prints, per prior and draw, each group's images
named as such (committed and kept), and how many adults are named another body part.

Needs the features `python -m benchmarks.fold_draws --save-features F` keeps.

    python -m benchmarks.body_part_prior --features F [--seeds 42 7 123 1 2 3]

Prints the table and appends it to benchmarks/body_part_prior.txt (`--out`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache import print_and_record, read_features

ROOT = Path(__file__).resolve().parents[1]
PRIORS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def cross_validated(found: dict, seed: int) -> tuple[list[str], list[bool], np.ndarray, np.ndarray]:
    """(each image's kind, whether it is committed, its reason logits without the prior,
    whether the view check calls it lateral), each image measured by checks fitted without it
    (evaluate's own `_cross_validate`)."""
    from pneumonia.decision.reason import BODY_PART_PRIOR
    from pneumonia.decision.use import USE_KINDS
    from pneumonia.evaluation.view import (
        VIEW_REJECTION_RATE,
        VIEW_SHIFTS,
        Reasons,
        _cross_validate,
        _fit,
        _images,
        load_kept,
    )

    reasons = Reasons(found["training_reasons"], found["reasons"])
    images = _images(found["external"].kinds, found["rows"], reasons, load_kept())
    frontal = np.concatenate(found["training"])
    validation = found["validation"]
    blocks = [np.stack([rows[i] for rows in validation]) for i in range(len(VIEW_SHIFTS))]
    _, everything = _fit(images, frontal, blocks, VIEW_REJECTION_RATE, reasons)

    def fit(chosen: list[int]) -> tuple[Any, Any]:
        picked = [images[i] for i in chosen]
        return _fit(picked, frontal, blocks, VIEW_REJECTION_RATE, reasons, everything)

    called, rows = _cross_validate(images, fit, seed)
    kinds = [kind for kind, *_ in images]
    assert all(row is not None for row in rows)  # `_fit` fits the head with `reasons`
    logits = np.stack([row for row in rows if row is not None])
    logits[:, USE_KINDS.index("other_body_part")] -= BODY_PART_PRIOR
    committed = [index is not None for _, _, index, _ in images]
    return kinds, committed, logits, called


def names(logits: np.ndarray, called: np.ndarray, prior: float) -> list[str]:
    """The kind each image's refusal is named with the prior `prior` (serving's
    `reason_kind`, then `decide_kind` with the view check's call)."""
    from pneumonia.decision.reason import reason_named
    from pneumonia.decision.use import USE_KINDS

    shifted = logits.copy()
    shifted[:, USE_KINDS.index("other_body_part")] += prior
    named = [reason_named(row, bool(c)) for row, c in zip(shifted, called, strict=True)]
    return [kind for kind in named if kind is not None]  # every row has logits: none dropped


def main() -> None:
    """Parse the arguments, cross-validate each draw, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/body_part_prior.txt")
    args = parser.parse_args()
    from pneumonia.decision.use import REFUSAL_REASONS
    from pneumonia.machine import describe

    found = read_features(args.features)
    draws = {seed: cross_validated(found, seed) for seed in args.seeds}
    lines = [f"machine: {describe()}; reason logits cross-validated under each fold draw", ""]
    lines += [
        "| prior | draw | named as such (committed / kept) | adults named another body part |",
        "|---:|---:|---|---:|",
    ]
    for prior in PRIORS:
        for seed, (kinds, committed, logits, called) in draws.items():
            named = names(logits, called, prior)
            groups: dict[str, list[bool]] = {}
            for kind, mine, name in zip(kinds, committed, named, strict=True):
                group = f"{'committed' if mine else 'kept'} {kind}"
                # as such: with the kind's own reason (a pediatric call is an adult's)
                groups.setdefault(group, []).append(REFUSAL_REASONS[name] == REFUSAL_REASONS[kind])
            shares = ", ".join(f"{g} {sum(v)}/{len(v)}" for g, v in sorted(groups.items()))
            adults = sum(
                kind == "adult_chest" and name == "other_body_part"
                for kind, name in zip(kinds, named, strict=True)
            )
            lines.append(f"| {prior:g} | {seed} | {shares} | {adults} |")
    print_and_record("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
