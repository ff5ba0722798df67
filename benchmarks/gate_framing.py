"""The refusals' trade-off under framing: how the gate's threshold and the intended-use head's
margin are set decides both how many real X-rays are refused under each framing and how many
other images are let through.

Needs `make repro` (models/model.keras, the prepared splits, data/raw). Features come through
evaluate's own code (`Scorer`, `split_features`, `external_features`, `framed`), once; then
for each way of setting the two (`--strengths` of the head's L2 penalty x `--framing-rates`,
"pool" meaning the pooled validation rate alone, as before this ceiling existed):

- real X-rays: the held-out splits (test, early, late) under each framing shift of the
  evaluation, refused by the cheap checks, the head or the gate: the worst shift's share;
- the out-of-distribution set (evaluate's), refused before or by the model;
- the external radiographs, cross-validated as evaluate does (`fit_and_measure`): adults and
  other body parts refused.

    python -m benchmarks.gate_framing [--strengths 0.05 0.5] [--framing-rates pool 0.01 0.02]
        [--asymmetry yes no] [--also-without-layout] [--save-features F | --features F]
        [--seed N]

Prints a table and writes it to benchmarks/gate_framing.txt (`--out`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache import features_once

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Features:
    """Everything measured, as the model's features, computed once."""

    train: np.ndarray  # a quarter of train, and under every shift (the gate's fit)
    val: np.ndarray  # validation, and under every shift (thresholds, margins)
    external: Any  # intended_use.External: adults and other body parts
    held: dict[str, tuple[np.ndarray, np.ndarray]]  # framing -> (features, cheap refusal)
    ood: np.ndarray  # the out-of-distribution images that reach the model
    ood_early: int  # those refused before it
    images: int  # held-out images per framing


def collect() -> Features:
    """The features through evaluate's own code (Scorer, split_features, framed, ...)."""
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.data.prepared import preprocess_config
    from pneumonia.evaluation.framing import framed, held_out_files
    from pneumonia.evaluation.gate import split_features
    from pneumonia.evaluation.intended_use import external_features
    from pneumonia.evaluation.ood import out_of_distribution_images
    from pneumonia.evaluation.scoring import Scorer
    from pneumonia.evaluation.shifts import FRAMING
    from pneumonia.images.formats import ImageError
    from pneumonia.images.screening import screen_and_prepare

    config = preprocess_config()
    scorer = Scorer(keras.models.load_model(paths.KERAS_MODEL), paths.ONNX_MODEL.read_bytes())
    files, _ = held_out_files(["test", "early", "late"])
    held = {}
    for name, shift in {"unchanged": lambda gray: gray, **FRAMING}.items():
        inputs, cheap, _ = framed(files, shift, config)
        held[name] = (scorer.outputs(inputs)[1], cheap)
    reached, early = [], 0
    for image in out_of_distribution_images():
        try:
            reached.append(screen_and_prepare(image.data, config)[1])
        except ImageError:
            early += 1
    return Features(
        train=split_features(scorer, "train", config, every=4),
        val=split_features(scorer, "val", config),
        external=external_features(scorer, config),
        held=held,
        ood=scorer.outputs(np.stack(reached))[1],
        ood_early=early,
        images=len(files),
    )


def refuses(head: Any, gate: Any, features: np.ndarray) -> np.ndarray:
    """(N,) whether the head names another kind or the gate finds the features too far."""
    from pneumonia.decision.use import ANSWERED

    off = np.array([kind != ANSWERED for kind in head.kinds(features)], dtype=bool)
    return off | ~(gate.distance(features) <= gate.threshold)


def without_layout(found: Features) -> Features:
    """The same features less the input's layout (the last LAYOUT_GRID^2 columns): what the
    gate and the head read before the layout was added."""
    from dataclasses import replace

    from pneumonia.images.layout import LAYOUT_GRID

    keep = slice(0, -(LAYOUT_GRID**2))
    external = replace(
        found.external, features=[f[:, keep] if f.size else f for f in found.external.features]
    )
    return replace(
        found,
        train=found.train[:, keep],
        val=found.val[:, keep],
        external=external,
        held={name: (f[:, keep], cheap) for name, (f, cheap) in found.held.items()},
        ood=found.ood[:, keep],
    )


def row(
    found: Features,
    rate: float,
    seed: int,
    strength: float,
    ceiling: str,
    asymmetry: bool,
    outcomes: dict[int, str] | None = None,
) -> str:
    """One way of setting the gate and the head, measured; `outcomes`, where given, gets each
    external image's cross-validated outcome by its index (`fit_and_measure`)."""
    from pneumonia.config import load_params
    from pneumonia.decision.gate import fit_feature_model, with_threshold
    from pneumonia.evaluation.gate import framing_blocks
    from pneumonia.evaluation.intended_use import fit_and_measure

    framing_rate = None if ceiling == "pool" else float(ceiling)
    # in as many principal components as evaluate takes (evaluate.gate_components)
    model = fit_feature_model(found.train, load_params().evaluate.gate_components)
    groups = []
    if framing_rate is not None:
        groups = [model.distance(block) for block in framing_blocks(found.val)]
    gate = with_threshold(model, model.distance(found.val), rate, groups, framing_rate)
    head, report = fit_and_measure(
        found.external,
        found.train,
        found.val,
        gate.distance,
        gate.threshold,
        rate,
        seed,
        framing_rate,
        strength,
        asymmetry,
        outcomes=outcomes,
    )
    refused = {
        name: float(np.mean(cheap | refuses(head, gate, features)))
        for name, (features, cheap) in found.held.items()
    }
    worst = max(refused, key=lambda name: refused[name])
    caught = found.ood_early + int(np.sum(refuses(head, gate, found.ood)))
    total = found.ood_early + len(found.ood)
    adults, others = report["kinds"]["adult_chest"], report["kinds"]["other_body_part"]
    laterals = report["kinds"]["lateral_chest"]
    as_lateral = round(laterals["refused_as_such"] * laterals["images"])
    not_a_chest = sum(
        count for outcome, count in adults["outcomes"].items() if "other_body_part" in outcome
    )
    return (
        f"| {'yes' if asymmetry else 'no'} | {strength} | {ceiling} | {refused[worst]:.1%} "
        f"| {worst} | {caught}/{total} | {adults['refused']:.1%} of {adults['images']} "
        f"| {adults['refused_as_such']:.1%} | {not_a_chest} "
        f"| {as_lateral} of {laterals['images']} "
        f"| {others['refused']:.1%} of {others['images']} | {others['refused_as_such']:.1%} |"
    )


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pneumonia.evaluation.intended_use import USE_LAYOUT_ASYMMETRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.05, 0.5])
    parser.add_argument("--framing-rates", nargs="+", default=["pool", "0.01", "0.02", "0.03"])
    parser.add_argument(
        "--asymmetry",
        nargs="+",
        choices=["yes", "no"],
        default=["yes" if USE_LAYOUT_ASYMMETRY else "no"],
        help="whether the head reads the layout's left-right asymmetry (default: as evaluate)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        help="a features file to read instead of the model's (a pickle: only one written "
        "by an earlier run with --save-features)",
    )
    parser.add_argument("--save-features", type=Path, help="write the features collected here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/gate_framing.txt")
    parser.add_argument(
        "--seed", type=int, help="the folds' seed (default: base.seed of params.yaml)"
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="list the external images each row does not refuse with their own reason",
    )
    parser.add_argument(
        "--also-without-layout",
        action="store_true",
        help="the same rows on the features less the input's layout (the checks before it)",
    )
    args = parser.parse_args()
    from pneumonia.config import load_params
    from pneumonia.decision.use import as_such
    from pneumonia.evaluation.intended_use import external_radiographs_manifest
    from pneumonia.machine import describe

    params = load_params(ROOT / "params.yaml")
    rate = params.evaluate.ood_false_rejection_rate
    found = features_once(collect, args.features, args.save_features)
    seed = params.base.seed if args.seed is None else args.seed
    files = [entry["file"] for entry in external_radiographs_manifest()]
    if args.misses and len(files) != len(found.external.kinds):
        raise SystemExit(
            f"the features hold {len(found.external.kinds)} external images, the manifest "
            f"{len(files)}: collect them again (without --features)"
        )
    variants = {"with the layout": found}
    if args.also_without_layout:
        variants["without the layout"] = without_layout(found)
    lines = [
        f"machine: {describe()}; "
        + (
            "features from " + str(args.features)
            if args.features
            else "models/model.keras of this checkout"
        )
        + f"; folds seed {seed}",
        f"pooled validation rate {rate}; held-out splits pooled ({found.images} images)",
    ]
    for name, features in variants.items():
        lines += [
            "",
            f"features {name}:",
            "",
            "| asymmetry | head strength | per-framing ceiling | worst framing refused "
            "| (shift) | OOD refused | adults refused (CV) | as adults "
            "| adults as not a chest X-ray | laterals as lateral_view "
            "| other body parts refused (CV) | as not_a_chest_xray |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for asymmetry in args.asymmetry:
            for strength in args.strengths:
                for ceiling in args.framing_rates:
                    outcomes: dict[int, str] = {}
                    lines.append(
                        row(features, rate, seed, strength, ceiling, asymmetry == "yes", outcomes)
                    )
                    print(lines[-1], flush=True)
                    if args.misses:
                        lines += ["", "not refused with their own reason:", ""]
                        lines += [
                            f"- {files[index]}: {outcome}"
                            for index, outcome in sorted(outcomes.items())
                            if not as_such(found.external.kinds[index], outcome)
                        ] + [""]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
