"""Ablation of the training levers under several seeds: one `dvc exp run` per lever and seed.

Each lever changes params against the committed defaults ("defaults" changes none) and is
run once per seed (`base.seed`: the random val/test carve, initialisation, data order and
augmentation; the early/late id blocks are the same images for every seed). The table gives,
per held-out split, the worst shift and the worst framing (each figure at its lowest over
the framing shifts of the held-out splits), each metric's mean and [min, max] over the
seeds, and the training time. Every run is appended to `--record` as it ends, so an
interrupted ablation keeps what it measured and `--table` reprints from that file. The
workspace is restored at the end.

    python benchmarks/ablation.py --only defaults --seeds 42 7 123 --spread metrics/seed_spread.json
    python benchmarks/ablation.py --seeds 42 7                       # every lever
    python benchmarks/ablation.py --table --spread metrics/seed_spread.json  # from the record
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pneumonia.evaluation.metrics import worst_of
from pneumonia.machine import cpu, describe
from pneumonia.paths import HELD_OUT

ROOT = Path(__file__).resolve().parents[1]
LEVERS: dict[str, list[str]] = {
    "defaults": [],
    # The framing of the earlier defaults: crops to 0.75 of the side, no padding, no stretch,
    # no mirror (and the Youden threshold they were chosen with).
    "previous-defaults": [
        "train.augment.crop_scale_min=0.75",
        "train.augment.pad_max=0.0",
        "train.augment.aspect=0.0",
        "train.augment.horizontal_flip=false",
        "evaluate.threshold_policy=youden",
    ],
    "no-pad-aspect-flip": [
        "train.augment.pad_max=0.0",
        "train.augment.aspect=0.0",
        "train.augment.horizontal_flip=false",
    ],
    "no-flip": ["train.augment.horizontal_flip=false"],
    "30-epochs": ["train.epochs=30", "train.early_stopping_patience=8"],
    "width-32": ["train.width=32"],
    "threshold-youden": ["evaluate.threshold_policy=youden"],
    "no-augmentation": ["train.augment.enabled=false"],
    "no-jpeg-augmentation": ["train.augment.jpeg_quality_min=100"],
    "no-clahe": ["preprocess.intensity=none"],
    "no-class-weight": ["train.class_weight=none"],
    "label-smoothing-0.1": ["train.label_smoothing=0.1"],
    "simple-cnn": ["train.architecture=simple"],
    "image-96px": ["preprocess.image_size=96"],
    "image-224px": ["preprocess.image_size=224"],
    # Canonical framing: training and serving both crop to the detected thorax first.
    "thorax-framing": ["preprocess.framing=thorax"],
    "thorax-framing-160px": ["preprocess.framing=thorax", "preprocess.image_size=160"],
    # The thorax already fills the input: random crops to half its side cut away lung.
    "thorax-framing-crop-0.8": ["preprocess.framing=thorax", "train.augment.crop_scale_min=0.8"],
    # The operating point: the as-is floor is 0.96 sensitivity, the validation target was 0.95.
    "target-sensitivity-0.96": ["evaluate.target_sensitivity=0.96"],
    # CLAHE after the random box, as serving computes it on a tighter field of view (the
    # default since it was measured), and before it, as the networks were trained until then.
    "intensity-last": ["train.augment.intensity_last=true"],
    "intensity-first": ["train.augment.intensity_last=false"],
    # Regularisers against a shift the held-out blocks show (the late block's specificity):
    # the weights' moving average over about one epoch's steps, and mixup.
    "ema-0.99": ["train.ema_momentum=0.99"],
    "mixup-0.2": ["train.augment.mixup_alpha=0.2"],
    # The committed model calls a sharpened late block less often PNEUMONIA (specificity
    # 0.806 -> 0.847 under an unsharp mask of 0.5): sharpness varied in training.
    "sharpness-0.8": ["train.augment.sharpness=0.8"],
    # A backbone that starts from ImageNet weights (EfficientNet-Lite0) against one trained
    # from scratch on 3,600 images: the late block's errors rank, they are not a threshold.
    "efficientnet-lite0": ["train.architecture=efficientnet_lite0"],
    # The gate's full Mahalanobis distance, against the default 256 components
    # (benchmarks/gate_components.jsonl, recorded as lever gate-256: the defaults).
    "gate-full": ["evaluate.gate_components=null"],
    # The network served (and scored) in float32, against the default int8
    # (benchmarks/quantize.jsonl, recorded as lever int8; gate-256 is float32).
    "float32": ["export_onnx.quantize=none"],
    # EfficientNet-Lite0 at 128 px against 160: 0.64 of the network's work in training and
    # per request (the intended-use issue's request-cost bound), at what cost in quality.
    "lite0-128px": ["preprocess.image_size=128"],
    # 112 px against 128: 0.77 of the network's work again (1.25 against 1.65 ms int8, one
    # thread, family 25), for the request-cost bound the 128 px model still misses (1.28-1.31x).
    "lite0-112px": ["preprocess.image_size=112"],
    # Lite0 cut at output stride 16 (blocks 0-10, then block 11's expansion to 672 channels):
    # 1.35 against 2.08 ms int8 at 128 px (one thread, family 25, a probe), for the same bound
    # without losing the input's resolution as 112 px did.
    "lite0-stride16": ["train.architecture=efficientnet_lite0_stride16"],
    # A quarter of the learning rate for the ImageNet backbone: its validation AUC swings
    # between epochs at 0.002 (0.98 -> 0.91 -> 0.98), and a fine-tuned backbone that moves
    # less from its ImageNet features may hold better on the early and late blocks.
    # Its int8 graph differs more from Keras (0.40 on seed 42 against 0.10-0.12 at 0.002):
    # export's bound on that difference goes to 0.5; evaluate scores the int8 graph either way.
    "lr-0.0005": ["train.learning_rate=0.0005", "export_onnx.quantization_tolerance=0.5"],
    # The lower rate kept the early block (sensitivity 0.960) and lost the 15% crop (0.947):
    # the backbone's first layers gently, its last ones and the head at the full rate, the
    # ImageNet stem at 0.85**13 = 0.12 of it, block 11's expansion at 0.85. The same int8
    # bound as lr-0.0005, so that an int8 drift does not stop the run at export.
    "layer-lr-0.85": ["train.layer_lr_decay=0.85", "export_onnx.quantization_tolerance=0.5"],
    # Seed 123 of layer-lr-0.85 peaked on validation in epoch 4 and early stopping ended it at
    # epoch 10, the rates still near their top: the same decay, trained to the last epoch
    # (the best epoch's weights kept, as always).
    "layer-lr-0.85-patience-20": [
        "train.layer_lr_decay=0.85",
        "train.early_stopping_patience=20",
        "export_onnx.quantization_tolerance=0.5",
    ],
    # The defaults trained to the last epoch (the best epoch's weights are still restored):
    # whether early stopping, not the draw, costs a seed whose validation AUC peaks early.
    "patience-20": ["train.early_stopping_patience=20"],
    # The framing issue's two training levers, each taken out of the defaults: black borders
    # (even and uneven: the box's offset is drawn, so a pad falls on any side) and then every
    # drawn framing (each image at its thorax box alone, as the data frames it).
    "no-borders": ["train.augment.pad_max=0.0"],
    "thorax-box-only": [
        "train.augment.crop_scale_min=1.0",
        "train.augment.pad_max=0.0",
        "train.augment.aspect=0.0",
    ],
}
SPLITS = (*HELD_OUT, "worst_split")
METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")
# What an experiment rewrites in git-tracked files; restored at the end.
TRACKED_OUTPUTS = ["params.yaml", "dvc.lock", "metrics", "models"]


def sh(*command: str) -> str:
    """The command's stdout; its stderr's tail in the error when it fails."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        failed = f"{' '.join(command)} failed ({done.returncode})"
        raise RuntimeError(f"{failed}:\n{done.stderr[-3000:]}")
    return done.stdout


def measure(lever: str, seed: int, seconds: float) -> dict:
    """What one finished run wrote: every split's metrics, the shifts, the timing."""
    evaluation = json.loads((ROOT / "metrics/evaluate/metrics.json").read_text())
    train = json.loads((ROOT / "metrics/train/metrics.json").read_text())
    exported = ROOT / "metrics/export_onnx.json"
    parity = json.loads(exported.read_text())["parity"] if exported.exists() else {}
    return {
        "lever": lever,
        "seed": seed,
        "cpu": cpu(),
        **{split: evaluation.get(split) for split in SPLITS},
        "robustness": evaluation.get("robustness", {}),
        "framing": evaluation.get("framing", {}),
        "worst_framing": evaluation.get("worst_framing"),
        "policies": evaluation.get("policies", {}),
        # The intended-use check on the external radiographs, cross-validated, and the gate's
        # out-of-distribution set: what a seed changes in the refusals.
        "intended_use": (evaluation.get("intended_use") or {}).get("kinds", {}),
        "ood_refused": (evaluation.get("ood_gate") or {}).get("ood_detection", {}).get("all"),
        "train_seconds": train.get("train_seconds"),
        "rerun_seconds": round(seconds, 1),
        # The served int8 graph against Keras: largest probability difference, labels differing.
        "keras_parity": {
            key: parity.get("keras", {}).get(key) for key in ("max_abs_diff", "labels_differing")
        },
    }


def at_policy(run: dict, policy: str) -> dict:
    """A run's held-out metrics at another threshold policy's threshold (from `policies`).

    AUC does not depend on the threshold; "worst shift" stays at the run's own threshold.
    """
    chosen = run["policies"][policy]
    moved = {**run, "policy": policy}
    for split in HELD_OUT:
        if run.get(split) and split in chosen:
            moved[split] = {**run[split], **chosen[split]}
    moved["worst_split"] = worst_of(moved, [split for split in HELD_OUT if moved.get(split)])
    return moved


def worst_shift(run: dict) -> dict | None:
    """The shifted copy of test with the lowest AUC, at the run's own threshold."""
    shifts = run.get("robustness") or {}
    return min(shifts.values(), key=lambda values: values["roc_auc"], default=None)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def table(runs: list[dict]) -> str:
    """Markdown: one row per lever and split, mean [min, max] over the lever's seeds."""
    lines = [
        "| lever | split | seeds | AUC | accuracy | sensitivity | specificity | train s |",
        "|---|---|---:|---|---|---|---|---:|",
    ]
    for lever in dict.fromkeys(run["lever"] for run in runs):
        mine = [run for run in runs if run["lever"] == lever]
        seconds = np.mean([run["train_seconds"] for run in mine])
        for split in (*SPLITS, "worst_shift", "worst_framing"):
            rows = [worst_shift(run) if split == "worst_shift" else run.get(split) for run in mine]
            present = [row for row in rows if row]
            if not present:
                continue
            cells = " | ".join(spread([row[metric] for row in present]) for metric in METRICS)
            name = split.replace("_", " ")
            lines.append(f"| {lever} | {name} | {len(present)} | {cells} | {seconds:.0f} |")
    return "\n".join(lines)


def use_table(runs: list[dict]) -> str:
    """Markdown: per lever and kind of external radiograph, the share refused and the share
    refused with the kind's own reason, mean [min, max] over the seeds that recorded them."""
    lines = [
        "| lever | kind | seeds | images | refused | with its own reason | OOD refused |",
        "|---|---|---|---|---|---|---|",
    ]
    for lever in dict.fromkeys(run["lever"] for run in runs):
        rows = [run for run in runs if run["lever"] == lever and run.get("intended_use")]
        kinds = dict.fromkeys(kind for run in rows for kind in run["intended_use"])
        for kind in kinds:
            mine = [run["intended_use"][kind] for run in rows if kind in run["intended_use"]]
            ood = [run["ood_refused"] for run in rows if run.get("ood_refused") is not None]
            cells = [
                str(len(mine)),
                str(mine[0]["images"]),
                spread([row["refused"] for row in mine]),
                spread([row["refused_as_such"] for row in mine]),
                spread(ood) if ood else "",
            ]
            lines.append(f"| {lever} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def policy_table(runs: list[dict]) -> str:
    """Markdown: each threshold policy's worst held-out split, mean [min, max] over seeds."""
    lines = [
        "| lever | policy | seeds | threshold | worst accuracy | worst sensitivity | "
        "worst specificity |",
        "|---|---|---:|---|---|---|---|",
    ]
    for lever in dict.fromkeys(run["lever"] for run in runs):
        mine = [run for run in runs if run["lever"] == lever and run.get("policies")]
        for policy in mine[0]["policies"] if mine else []:
            rows = [run["policies"][policy] for run in mine]
            splits = [split for split in HELD_OUT if split in rows[0]]
            cells = [spread([row["threshold"] for row in rows])] + [
                spread([min(row[split][metric] for split in splits) for row in rows])
                for metric in ("accuracy", "sensitivity", "specificity")
            ]
            lines.append(f"| {lever} | {policy} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_spread(runs: list[dict], lever: str = "defaults") -> dict:
    """Each metric's mean, min and max on each split over a lever's seeds: the gate's baseline."""
    mine = [run for run in runs if run["lever"] == lever]
    return {
        "lever": lever,
        "seeds": [run["seed"] for run in mine],
        "cpu": mine[0]["cpu"],
        "splits": {
            split: {
                metric: {
                    "mean": float(np.mean(values)),
                    "min": min(values),
                    "max": max(values),
                }
                for metric in METRICS
                for values in [[run[split][metric] for run in mine]]
            }
            for split in SPLITS
            if all(run.get(split) for run in mine)
        },
    }


def current_branch() -> str:
    """The branch checked out, or "" when HEAD is detached."""
    command = ["git", "symbolic-ref", "--quiet", "--short", "HEAD"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True).stdout.strip()


def reattach(branch: str) -> None:
    """Back on `branch` if `dvc exp run` left HEAD detached at its commit (an interrupted run
    does): commits made on a detached HEAD leave the branch behind."""
    if not branch or current_branch():
        return  # the run started detached, or HEAD is on a branch
    tip, head = sh("git", "rev-parse", branch, "HEAD").split()
    if tip == head:
        sh("git", "checkout", "--quiet", branch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 7, 123])
    parser.add_argument("--record", type=Path, default=ROOT / "benchmarks" / "ablation_runs.jsonl")
    parser.add_argument("--table", action="store_true", help="reprint the table of --record")
    parser.add_argument(
        "--spread",
        type=Path,
        help="write a lever's seed spread here (metrics/seed_spread.json, read by the PR gate)",
    )
    parser.add_argument("--spread-lever", default="defaults", help="the lever --spread describes")
    parser.add_argument(
        "--policy", help="with --table: every run at this threshold policy's threshold"
    )
    args = parser.parse_args()
    if args.table:
        runs = [json.loads(line) for line in args.record.read_text().splitlines() if line]
        if args.policy:
            runs = [at_policy(run, args.policy) for run in runs]
        print(f"{describe()}\n\n{table(runs)}\n\n{policy_table(runs)}\n\n{use_table(runs)}")
        if args.spread:
            args.spread.write_text(
                json.dumps(seed_spread(runs, args.spread_lever), indent=2) + "\n"
            )
        return
    if sh("git", "status", "--porcelain", "--untracked-files=no", *TRACKED_OUTPUTS).strip():
        sys.exit(f"uncommitted changes in {' '.join(TRACKED_OUTPUTS)}: commit or stash them")
    branch = current_branch()
    runs = []
    try:
        for name in args.only:
            for seed in args.seeds:
                print(f"running {name}, seed {seed} ...", file=sys.stderr, flush=True)
                sh("git", "checkout", "HEAD", "--", "params.yaml")
                started = time.perf_counter()
                changes = [f"base.seed={seed}", *LEVERS[name]]
                settings = [arg for item in changes for arg in ("--set-param", item)]
                sh("dvc", "exp", "run", "--name", f"ablation-{name}-{seed}", *settings)
                runs.append(measure(name, seed, time.perf_counter() - started))
                with args.record.open("a") as record:
                    record.write(json.dumps(runs[-1]) + "\n")
    finally:
        # from HEAD, not the index: `dvc exp run` stages params.yaml and dvc.lock, and an
        # interrupted run leaves them staged
        sh("git", "checkout", "HEAD", "--", *TRACKED_OUTPUTS)
        reattach(branch)
        restored = subprocess.run(["dvc", "checkout", "--force"], cwd=ROOT, capture_output=True)
        if restored.returncode != 0:
            print(
                "the committed outputs are not in this cache: run `dvc pull` or `dvc repro`",
                file=sys.stderr,
            )
    print(f"{describe()}\n\n{table(runs)}\n\n{policy_table(runs)}\n\n{use_table(runs)}")
    if args.spread:
        args.spread.write_text(json.dumps(seed_spread(runs, args.spread_lever), indent=2) + "\n")


if __name__ == "__main__":
    main()
