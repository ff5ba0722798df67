"""Test-time augmentation and seed ensembles under framing: does averaging the model over an
image and its mirror, or several seeds' models over an image, hold the framing floors better
than one model on the image alone?

Needs `make repro` (models/model.keras, the prepared splits, data/raw). Through evaluate's own
code: `Scorer` and `calibrate` (Platt on validation), `framed` (each held-out image reframed
from its thorax box, as the evaluation's framing report does), `threshold_for` (the
committed policy, on validation: with TTA, on validation's TTA probabilities). TTA here is
the mean of the calibrated probabilities of the image and its left-right mirror (the model
is trained with mirroring), so it costs a second forward pass per request.

    python -m benchmarks.tta                                  # this checkout's model
    python -m benchmarks.tta --record benchmarks/tta_seeds.jsonl --dump /tmp/members
    python -m benchmarks.tta --table benchmarks/tta_seeds.jsonl   # over the seeds recorded
    python -m benchmarks.tta --ensemble /tmp/members              # the dumped seeds averaged

The first prints, per framing (held-out splits pooled), AUC, sensitivity and specificity at
each variant's own threshold and writes the table to benchmarks/tta.txt; `--record` appends
the run (its seed, the CPU, every framing's figures) to a JSON-lines file, `--table` prints
mean [min, max] over the recorded seeds. `--dump` keeps the run's probabilities on the early
and late blocks, which are the same images for every seed and which no seed trains on
(`base.seed` redraws only validation and test), so `--ensemble` can average several seeds'
models on them: each member calibrated and thresholded on its own validation split, the
ensemble at the mean of the members' thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("roc_auc", "sensitivity", "specificity")
VARIANTS = ("image", "image + mirror")
BLOCKS = ("early", "late")


def cell(metrics: dict[str, float]) -> str:
    return " / ".join(f"{metrics[key]:.3f}" for key in KEYS)


def worst_of(framings: dict[str, dict[str, dict[str, float]]], variant: str) -> dict:
    return {key: min(row[variant][key] for row in framings.values()) for key in KEYS}


def measure(args: argparse.Namespace) -> None:
    """One model (this checkout's): every framing, both variants; the table, a record row and
    the early/late probabilities for --ensemble."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.config import load_params
    from pneumonia.data.prepared import load_files, load_split, preprocess_config
    from pneumonia.decision.rates import binary_metrics
    from pneumonia.evaluation.framing import framed, held_out_files
    from pneumonia.evaluation.metrics import threshold_for
    from pneumonia.evaluation.scoring import Scorer, calibrate
    from pneumonia.evaluation.shifts import FRAMING
    from pneumonia.machine import cpu, describe

    params = load_params(ROOT / "params.yaml")
    config = preprocess_config()
    scorer = Scorer(keras.models.load_model(paths.KERAS_MODEL), paths.ONNX_MODEL.read_bytes())
    calibrate(scorer)

    def tta(images: np.ndarray) -> np.ndarray:
        return (scorer(images) + scorer(images[:, :, ::-1])) / 2

    predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "image": scorer,
        "image + mirror": tta,
    }
    val_images, val_labels = load_split("val")
    thresholds = {
        name: threshold_for(val_labels, predict(val_images), params.evaluate)
        for name, predict in predictors.items()
    }
    files, labels = held_out_files(["test", *BLOCKS])
    in_blocks = slice(len(load_files("test")), None)
    seed = params.base.seed
    lines = [
        f"machine: {describe()}; models/model.keras of this checkout (seed {seed}); thresholds "
        f"on validation ({params.evaluate.threshold_policy}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in thresholds.items()),
        f"held-out splits pooled ({len(files)} images); AUC / sensitivity / specificity",
        "",
        "| framing | image | image + mirror |",
        "|---|---|---|",
    ]
    framings: dict[str, dict[str, dict[str, float]]] = {}
    dumped: dict[str, Any] = {}
    for name, shift in {"unchanged": lambda gray: gray, **FRAMING}.items():
        inputs, _, _ = framed(files, shift, config)
        framings[name] = {}
        for variant, predict in predictors.items():
            probabilities = predict(inputs)
            m = binary_metrics(labels, probabilities, thresholds[variant])
            framings[name][variant] = {key: float(m[key]) for key in KEYS}
            dumped[f"{name}|{variant}"] = probabilities[in_blocks]
        lines.append(f"| {name} | " + " | ".join(cell(framings[name][v]) for v in VARIANTS) + " |")
        print(lines[-1], flush=True)
    worst = {variant: worst_of(framings, variant) for variant in VARIANTS}
    lines.append("| **worst** | " + " | ".join(cell(worst[v]) for v in VARIANTS) + " |")
    print("\n".join(lines))
    row = {"seed": seed, "cpu": cpu(), "thresholds": thresholds, "framings": framings}
    dumped |= {
        "names": np.array([path.name for path in files[in_blocks]]),
        "labels": labels[in_blocks],
        "thresholds": np.array([thresholds[v] for v in VARIANTS]),
    }
    write_out(args, "\n".join(lines) + "\n", row | {"worst": worst}, dumped)


def write_out(args: argparse.Namespace, text: str, row: dict, dumped: dict[str, Any]) -> None:
    """The table to --output, the row to --record, the early/late arrays to --dump."""
    if args.output:
        args.output.write_text(text)
    if args.record:
        with args.record.open("a") as record:
            record.write(json.dumps(row) + "\n")
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        np.savez(args.dump / f"seed-{row['seed']}.npz", **dumped)


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def seeds_table(record: Path) -> str:
    """Mean [min, max] over the recorded seeds: each framing, then the worst."""
    rows = [json.loads(line) for line in record.read_text().splitlines() if line]
    seeds = ", ".join(str(row["seed"]) for row in rows)
    cpus = sorted({f"{row['cpu']['model']} ({row['cpu']['isa']})" for row in rows})
    lines = [
        f"seeds {seeds}; {', '.join(cpus)}; held-out splits pooled; mean [min, max] over the "
        "seeds of AUC / sensitivity / specificity, each variant at its own threshold",
        "",
        "| framing | variant | AUC | sensitivity | specificity |",
        "|---|---|---|---|---|",
    ]
    for name in rows[0]["framings"]:
        for variant in VARIANTS:
            figures = [
                spread([row["framings"][name][variant][key] for row in rows]) for key in KEYS
            ]
            lines.append(f"| {name} | {variant} | " + " | ".join(figures) + " |")
    for variant in VARIANTS:
        figures = [spread([row["worst"][variant][key] for row in rows]) for key in KEYS]
        lines.append(f"| **worst** | {variant} | " + " | ".join(figures) + " |")
    return "\n".join(lines) + "\n"


def ensemble_table(folder: Path) -> str:
    """The dumped seeds' models alone and averaged, on the early and late blocks pooled."""
    from pneumonia.decision.rates import binary_metrics

    members = {path.stem: np.load(path) for path in sorted(folder.glob("seed-*.npz"))}
    if len(members) < 2:
        raise SystemExit(f"{folder}: at least two seed-*.npz to average, found {len(members)}")
    order = next(iter(members.values()))["names"]
    aligned = {}
    for name, member in members.items():
        if sorted(member["names"]) != sorted(order):
            raise SystemExit(f"{name}: the early and late blocks differ between seeds")
        position = {file: index for index, file in enumerate(member["names"])}
        aligned[name] = (member, np.array([position[file] for file in order]))
    labels = next(iter(members.values()))["labels"]
    framings = [key.split("|")[0] for key in next(iter(members.values())).files if "|" in key]
    framings = list(dict.fromkeys(framings))
    columns = [*members, "ensemble"]
    lines = [
        f"{len(order)} images of the early and late blocks (held out by every seed); "
        "AUC / sensitivity / specificity; each member at its own validation threshold, the "
        "ensemble (the mean of the members' calibrated probabilities) at the mean of theirs",
        "",
        "| framing | variant | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    worst: dict[tuple[str, str], dict[str, float]] = {}
    for framing in framings:
        for index, variant in enumerate(VARIANTS):
            key = f"{framing}|{variant}"
            probabilities = {name: member[key][where] for name, (member, where) in aligned.items()}
            thresholds = {
                name: float(member["thresholds"][index]) for name, (member, _) in aligned.items()
            }
            probabilities["ensemble"] = np.mean(list(probabilities.values()), axis=0)
            thresholds["ensemble"] = float(np.mean(list(thresholds.values())))
            cells = []
            for column in columns:
                m = binary_metrics(labels, probabilities[column], thresholds[column])
                cells.append(cell(m))
                low = worst.setdefault((column, variant), {k: 1.0 for k in KEYS})
                for k in KEYS:
                    low[k] = min(low[k], float(m[k]))
            lines.append(f"| {framing} | {variant} | " + " | ".join(cells) + " |")
    for variant in VARIANTS:
        lines.append(
            f"| **worst** | {variant} | "
            + " | ".join(cell(worst[(column, variant)]) for column in columns)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/tta.txt")
    parser.add_argument("--record", type=Path, help="append this run to a JSON-lines file")
    parser.add_argument("--dump", type=Path, help="keep the early/late probabilities here")
    parser.add_argument("--table", type=Path, help="print the seeds of a --record file")
    parser.add_argument("--ensemble", type=Path, help="average the seeds dumped in a folder")
    args = parser.parse_args()
    if args.table:
        print(seeds_table(args.table))
    elif args.ensemble:
        print(ensemble_table(args.ensemble))
    else:
        measure(args)


if __name__ == "__main__":
    main()
