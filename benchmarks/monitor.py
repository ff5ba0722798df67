"""Drift monitoring (pneumonia.monitor) calibrated on this project's own data.

Needs the prepared data and the model (`make repro`). Probabilities and features come
through the evaluate stage's own code: `Scorer` (the served graph, models/model.onnx: the
network as evaluate scored it, in int8 by default), `calibrate` (Platt on validation: what
evaluate writes into model.json and reference.jsonl) and `shifted_inputs` over `SHIFTS`
(its robustness shifts).
They are cached in /tmp (keyed by the model's and the arrays' bytes), so a rerun takes
seconds.

- reference: the validation split, clean (as `metrics/evaluate/reference.jsonl` holds it);
- in distribution: windows of 100 drawn (seeded, without replacement) from the test split;
- each robustness shift: windows of 100 of the test split under that shift;
- prevalence 25% -> 60%: the reference resampled to 25% (`--reference-prevalence 0.25`),
  windows from the test split whose PNEUMONIA count is Binomial(100, p) for p = 25%
  (false alarms) and p = 60% (detection);
- the two false-alarm rows again with `--design-effect 1` (the test split's images taken as
  independent, which they are not: 1.9 images per patient), to show what the default
  design effect is for;
- a window of 500 end to end through the CLI's code path (`pneumonia.monitor.main`: read
  both files, the three tests, report and plot), in-process and as a fresh process.

Each test runs at the CLI's defaults (alpha 0.05, Bonferroni, 1000 permutations, seed 0);
a detection rate is the share of windows flagged. Its table is benchmarks/monitor.txt.

    python -m benchmarks.monitor [--windows 200] [--size 100]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pneumonia.machine import describe

ROOT = Path(__file__).resolve().parents[1]
CLEAN = "clean"


def cache_key() -> str:
    """The bytes the arrays depend on: the model and the prepared splits."""
    digest = hashlib.sha256()
    for path in ("models/model.onnx", "data/prepared/val.npz", "data/prepared/test.npz"):
        digest.update((ROOT / path).read_bytes())
    return digest.hexdigest()[:16]


def compute_arrays() -> dict[str, np.ndarray]:
    """Calibrated probabilities and features of validation (clean) and test (clean and
    under every shift of evaluate's SHIFTS), through evaluate's own Scorer and calibration."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia import paths
    from pneumonia.data.prepared import load_files, load_split, preprocess_config
    from pneumonia.evaluation.scoring import Scorer, calibrate
    from pneumonia.evaluation.shifts import SHIFTS, shifted_inputs

    scorer = Scorer(keras.models.load_model(paths.KERAS_MODEL), paths.ONNX_MODEL.read_bytes())
    fitted = calibrate(scorer)  # Platt on validation, as evaluate fits it
    config = preprocess_config()
    arrays: dict[str, np.ndarray] = {
        "calibration": np.array([fitted["scale"], fitted["shift"]]),
    }
    for split in ("val", "test"):
        images, labels = load_split(split)
        arrays[f"{split}/labels"] = labels.astype(np.int64)
        arrays[f"{split}/{CLEAN}/probability"] = scorer(images)
        arrays[f"{split}/{CLEAN}/features"] = scorer.outputs(images)[1]
    test_files = [paths.RAW / name for name in load_files("test")]
    for name, shift in SHIFTS.items():
        started = time.perf_counter()
        images = shifted_inputs(test_files, shift, config)
        arrays[f"test/{name}/probability"] = scorer(images)
        arrays[f"test/{name}/features"] = scorer.outputs(images)[1]
        print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return arrays


def load_arrays() -> dict[str, np.ndarray]:
    """The arrays, from the /tmp cache when the model and data are unchanged."""
    cache = Path(tempfile.gettempdir()) / f"pneumonia-monitor-{cache_key()}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return {name: stored[name] for name in stored.files}
    arrays = compute_arrays()
    np.savez(cache, **arrays)  # type: ignore[arg-type]
    return arrays


Windows = list[tuple[np.ndarray, np.ndarray]]  # (probabilities (n,), features (n, F)) each


def random_windows(
    probabilities: np.ndarray, features: np.ndarray, count: int, size: int, seed: int
) -> Windows:
    """`count` windows of `size` rows drawn without replacement (each on its own)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(probabilities), size, replace=False) for _ in range(count)]
    return [(probabilities[index], features[index]) for index in picks]


def prevalence_windows(
    arrays: dict[str, np.ndarray], prevalence: float, count: int, size: int, seed: int
) -> Windows:
    """Windows of the clean test split at a share of pneumonia: Binomial(size, prevalence)
    PNEUMONIA images, the rest NORMAL, each drawn without replacement."""
    rng = np.random.default_rng(seed)
    labels = arrays["test/labels"]
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    windows = []
    for _ in range(count):
        sick = int(rng.binomial(size, prevalence))
        index = np.concatenate(
            [
                rng.choice(positives, sick, replace=False),
                rng.choice(negatives, size - sick, replace=False),
            ]
        )
        windows.append(
            (arrays[f"test/{CLEAN}/probability"][index], arrays[f"test/{CLEAN}/features"][index])
        )
    return windows


def rates(
    reference, windows: Windows, reference_prevalence: float | None, design_effect: float
) -> dict[str, float]:
    """Share of windows each test flags, and the combined decision's, at the CLI's defaults
    (alpha 0.05, Bonferroni, 1000 permutations, seed 0)."""
    from pneumonia.ops.monitor import Sample, compare

    flags: dict[str, list[bool]] = {"ks": [], "mmd": [], "prevalence": [], "drift": []}
    for probabilities, features in windows:
        comparison = compare(
            reference,
            Sample(probabilities, features),
            reference_prevalence=reference_prevalence,
            design_effect=design_effect,
        )
        for name in ("ks", "mmd", "prevalence"):
            flags[name].append(name in comparison.drifted)
        flags["drift"].append(bool(comparison.drifted))
    return {name: float(np.mean(values)) for name, values in flags.items()}


def wilson(share: float, count: int) -> tuple[float, float]:
    """95% Wilson interval of a binomial share."""
    z = 1.959964
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * np.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    return centre - half / (1 + z * z / count), centre + half / (1 + z * z / count)


def time_cli(arrays: dict[str, np.ndarray], size: int) -> tuple[float, float, int]:
    """(seconds in-process, seconds as a fresh `python -m pneumonia.monitor`, exit status)
    for one window of `size` test rows with features against the validation reference,
    files written as evaluate and pneumonia.batch write them."""
    import subprocess

    from pneumonia.evaluation.reference import LABELS, write_reference
    from pneumonia.ops.monitor import main

    with tempfile.TemporaryDirectory() as folder:
        reference, current = Path(folder) / "reference.jsonl", Path(folder) / "predictions.jsonl"
        write_reference(
            reference,
            arrays["val/labels"],
            arrays[f"val/{CLEAN}/probability"],
            arrays[f"val/{CLEAN}/features"],
        )
        rng = np.random.default_rng(1)
        index = rng.choice(len(arrays["test/labels"]), size, replace=False)
        with current.open("w") as sink:
            for number, row in enumerate(index):
                probability = float(arrays[f"test/{CLEAN}/probability"][row])
                line = {
                    "file": f"image-{number}.jpeg",
                    "sha256": f"{number:064x}",
                    "status": "ok",
                    "predicted_label": LABELS[int(probability >= 0.5)],
                    "probability_pneumonia": probability,
                    "decision": LABELS[int(probability >= 0.5)],
                    "modelVersion": "sha256-000000000000",
                    "features": [
                        float(f"{value:.6g}") for value in arrays[f"test/{CLEAN}/features"][row]
                    ],
                }
                sink.write(json.dumps(line) + "\n")
        command = ["--reference", str(reference), "--current", str(current)]
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            main(command)
        in_process = time.perf_counter() - started
        started = time.perf_counter()
        fresh = subprocess.run(
            [sys.executable, "-m", "pneumonia.monitor", *command], capture_output=True, cwd=ROOT
        )
        return in_process, time.perf_counter() - started, fresh.returncode


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200, help="per clean / prevalence row")
    parser.add_argument("--shift-windows", type=int, default=100, help="per shift row")
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    os.chdir(ROOT)
    from pneumonia.evaluation.shifts import SHIFTS
    from pneumonia.ops.monitor import DESIGN_EFFECT, Sample

    arrays = load_arrays()
    reference = Sample(
        arrays[f"val/{CLEAN}/probability"], arrays[f"val/{CLEAN}/features"], arrays["val/labels"]
    )
    rows: list[tuple[str, str, int, dict[str, float]]] = []

    def measure(
        name: str,
        kind: str,
        windows: Windows,
        prevalence: float | None = None,
        design_effect: float = DESIGN_EFFECT,
    ) -> None:
        started = time.perf_counter()
        measured = rates(reference, windows, prevalence, design_effect)
        rows.append((name, kind, len(windows), measured))
        print(f"  {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    clean = (arrays[f"test/{CLEAN}/probability"], arrays[f"test/{CLEAN}/features"])
    in_distribution = random_windows(*clean, args.windows, args.size, 0)
    measure("in distribution (test)", "false alarms", in_distribution)
    for index, shift in enumerate(SHIFTS, start=1):
        shifted = (arrays[f"test/{shift}/probability"], arrays[f"test/{shift}/features"])
        measure(shift, "detection", random_windows(*shifted, args.shift_windows, args.size, index))
    for share, kind in ((0.25, "false alarms"), (0.60, "detection")):
        windows = prevalence_windows(
            arrays, share, args.windows, args.size, seed=100 + int(share * 100)
        )
        measure(f"prevalence 25% ref, window at {share:.0%}", kind, windows, 0.25)
        if share == 0.25:
            at_25 = windows
    # the same windows, the images taken as independent: what the design effect is for
    measure("in distribution, --design-effect 1", "false alarms", in_distribution, None, 1.0)
    measure("25% ref, window at 25%, --design-effect 1", "false alarms", at_25, 0.25, 1.0)
    in_process, fresh, status = time_cli(arrays, 500)

    print(
        f"machine: {describe()}; reference: validation ({len(reference.probabilities)} images, "
        f"prevalence {reference.labels.mean():.3f}); windows of {args.size} from the test split "
        f"({len(arrays['test/labels'])} images); alpha 0.05, Bonferroni over 3 tests "
        f"(each at 0.0167), 1000 permutations, design effect {DESIGN_EFFECT:g} unless stated; "
        "calibration (Platt on validation) "
        f"scale {arrays['calibration'][0]:.4f}, shift {arrays['calibration'][1]:.4f}"
    )
    print("| window | measures | windows | KS | MMD | prevalence | drift (any) | drift 95% CI |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, kind, count, measured in rows:
        low, high = wilson(measured["drift"], count)
        print(
            f"| {name} | {kind} | {count} | {measured['ks']:.3f} | {measured['mmd']:.3f} | "
            f"{measured['prevalence']:.3f} | {measured['drift']:.3f} | [{low:.3f}, {high:.3f}] |"
        )
    print(
        f"one window of 500 (with features), CLI code path: {in_process:.2f} s in-process "
        f"(read, 3 tests, report, plot), {fresh:.2f} s as a fresh `python -m pneumonia.monitor` "
        f"(exit status {status})"
    )


if __name__ == "__main__":
    main()
