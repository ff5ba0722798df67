"""How the endpoint refuses and names the external radiographs under other draws of evaluate's
cross-validation folds, and what the view check costs real X-rays.

Needs `make repro` (models/model.keras, models/gate.npz, the prepared splits, data/raw).
Everything comes through evaluate's own code, computed once: the served network's features
(`Scorer`, `split_features`, `external_features`), the gate (`fit_gate`), the view and reason
rows (`ReasonNetwork`, `split_view_rows`). Then, for each `--seeds` draw of the folds:

- the intended-use head cross-validated (`fit_and_measure`), then the view check and the
  reason head (`fit_and_measure_view`): each kind's outcomes as the endpoint refuses and
  names them, every image not refused with its own reason, and every image that only the
  gate refused (the intended-use head passed it) with its name;

and with `--held-out`, the held-out splits (test, early, late) under each framing shift
(`framing_report`) refused by the committed models/gate.npz, with and without its view check.

    python -m benchmarks.fold_draws [--seeds 42 7 123] [--held-out] [--features F]

Prints the outcomes and appends them to benchmarks/fold_draws.txt (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache import features_once, print_and_record

ROOT = Path(__file__).resolve().parents[1]


@cache
def served() -> Any:
    """evaluate's `Scorer` of the committed network as served (loaded and converted once)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.config import load_params
    from pneumonia.data.prepared import preprocess_config
    from pneumonia.evaluation.scoring import Scorer
    from pneumonia.release.export import network_to_serve

    export = load_params(ROOT / "params.yaml").export_onnx
    model = keras.models.load_model(paths.KERAS_MODEL, compile=False)
    return Scorer(model, network_to_serve(model, preprocess_config().image_size, export))


def collect() -> dict[str, Any]:
    """The features evaluate fits the intended-use head, the view check and the reason head on."""
    from pneumonia.config import load_params
    from pneumonia.data.prepared import preprocess_config
    from pneumonia.evaluation.gate import fit_gate, split_features
    from pneumonia.evaluation.intended_use import external_features
    from pneumonia.evaluation.view import ReasonNetwork, split_view_rows
    from pneumonia.release.reason import network_onnx

    params = load_params(ROOT / "params.yaml")
    config, export = preprocess_config(), params.export_onnx
    scorer = served()
    rate = params.evaluate.ood_false_rejection_rate
    train = split_features(scorer, "train", config, every=4)
    val = split_features(scorer, "val", config)
    gate = fit_gate(scorer, config, rate, train, val, components=params.evaluate.gate_components)
    external = external_features(scorer, config)
    network = ReasonNetwork(network_onnx(export.opset))
    training, training_reasons = split_view_rows("train", every=4, network=network)
    validation, _ = split_view_rows("val")
    rows, reasons = [], []
    for gray in external.grays:
        view, reason = network.rows(gray) if gray.size else (np.zeros((0, 0)), np.zeros((0, 0)))
        rows.append(view)
        reasons.append(reason)
    return {
        "external": external,
        "train": train,
        "val": val,
        "gate": gate,
        "rate": rate,
        "training": training,
        "training_reasons": training_reasons,
        "validation": validation,
        "rows": rows,
        "reasons": reasons,
    }


def draw(found: dict[str, Any], seed: int) -> tuple[dict, dict[int, str], dict[int, str]]:
    """The kinds report, each committed image's final outcome and its outcome by the
    intended-use head and the gate (before the view check and the reason head) under the folds
    of `seed`."""
    from pneumonia.evaluation.intended_use import fit_and_measure
    from pneumonia.evaluation.view import (
        VIEW_REJECTION_RATE,
        Reasons,
        fit_and_measure_view,
        load_kept,
    )

    head_outcomes: dict[int, str] = {}
    fit_and_measure(
        found["external"],
        found["train"],
        found["val"],
        found["gate"].distance,
        found["gate"].threshold,
        found["rate"],
        seed,
        outcomes=head_outcomes,
    )
    outcomes: dict[int, str] = {}
    _, _, report = fit_and_measure_view(
        found["training"],
        found["validation"],
        found["external"].kinds,
        found["rows"],
        head_outcomes,
        load_kept(),
        VIEW_REJECTION_RATE,
        seed,
        Reasons(found["training_reasons"], found["reasons"]),
        outcomes=outcomes,
    )
    return report, outcomes, head_outcomes


def held_out() -> list[str]:
    """The held-out splits' refusals under each framing by the committed models, with and
    without the view check: one line each."""
    from pneumonia import paths
    from pneumonia.data.prepared import preprocess_config
    from pneumonia.decision.band import Band
    from pneumonia.decision.gate import FeatureGate
    from pneumonia.decision.use import UseHead
    from pneumonia.decision.view import ViewCheck
    from pneumonia.evaluation.framing import framing_report
    from pneumonia.evaluation.scoring import calibrate

    config = preprocess_config()
    metrics = json.loads((ROOT / "metrics/evaluate/metrics.json").read_text())
    scorer = served()
    calibrate(scorer)
    with np.load(paths.GATE) as stored:
        arrays = dict(stored)
    gate = FeatureGate.from_arrays(
        arrays, metrics["ood_gate"]["threshold"], metrics["ood_gate"]["false_rejection_rate"]
    )
    head = UseHead.from_arrays(arrays, prefix="use_")
    check = ViewCheck.from_arrays(arrays, prefix="view_")
    assert check is not None
    decision = metrics["decision"]
    band = Band(decision["low"], decision["high"], decision["error_rate"])
    lines = []
    for name, used in (("with", check), ("without", None)):
        report, _, _ = framing_report(
            scorer, gate, band, metrics["threshold"], config, ["test", "early", "late"], head,
            None, used,
        )  # fmt: skip
        shares = ", ".join(
            f"{shift} {100 * row['refused']:.2f}% (view {100 * row['refused_view']:.2f}%)"
            for shift, row in report.items()
        )
        lines.append(f"- {name} the view check: {shares}")
    return lines


def main() -> None:
    """Parse the arguments, measure, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument(
        "--features", type=Path, help="a pickle this script wrote (--save-features)"
    )
    parser.add_argument("--save-features", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/fold_draws.txt")
    args = parser.parse_args()
    from pneumonia.decision.use import as_such
    from pneumonia.evaluation.intended_use import external_radiographs_manifest
    from pneumonia.machine import describe

    found = features_once(collect, args.features, args.save_features)
    files = [entry["file"] for entry in external_radiographs_manifest()]
    lines = [
        f"## {len(files)} external radiographs",
        "",
        describe(),
        "",
    ]
    for seed in args.seeds:
        report, outcome, by_head = draw(found, seed)
        lines += [f"folds seed {seed}:", ""]
        for kind, figures in report["kinds"].items():
            lines.append(
                f"- {kind}: {figures['images']} images, {100 * figures['refused_as_such']:.1f}% "
                f"refused as such; {figures['outcomes']}"
            )
        lines += ["", "not refused with their own reason:", ""]
        kinds = found["external"].kinds
        lines += [
            f"- {files[i]}: {outcome[i]}"
            for i in range(len(kinds))
            if not as_such(kinds[i], outcome[i])
        ]
        # The intended-use head passed these as pediatric chest X-rays; only the gate refused.
        lines += ["", "refused by the gate alone, as the endpoint names them:", ""]
        lines += [
            f"- {files[i]} ({kinds[i]}): {outcome[i]}"
            for i in range(len(kinds))
            if by_head[i].startswith("refused by the gate")
        ]
        lines.append("")
    if args.held_out:
        lines += ["held-out X-rays refused under each framing (committed models):", ""]
        lines += [*held_out(), ""]
    print_and_record("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
