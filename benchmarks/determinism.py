"""Does training give the same bytes on CPUs with other instruction sets? A table that tells.

oneDNN, TensorFlow's default CPU kernel library, picks its kernels at run time by the CPU's
widest instruction set (SSE4.1, AVX, AVX2, AVX-512), and kernels of another width sum in
another order. `ONEDNN_MAX_CPU_ISA` caps that choice, so one machine can play older CPUs.
Each row trains the default model from params.yaml for `--steps` steps (seed, data order
and augmentation as in the train stage) in a fresh process under one setting, and prints
the sha256 of the weights and the time per step. Rows with the same hash trained the same
model. Needs the prepared data (`dvc repro preprocess`).

    python benchmarks/determinism.py --steps 40
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

from pneumonia.machine import describe

# label -> environment; the oneDNN caps run below the native ISA of the machine.
SETTINGS: dict[str, dict[str, str]] = {
    "oneDNN, native ISA": {},
    "oneDNN, capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN, capped at AVX": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "oneDNN, capped at SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "oneDNN off (Eigen)": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "oneDNN off, cap SSE4.1": {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "oneDNN off, 1 thread": {"TF_ENABLE_ONEDNN_OPTS": "0", "PNEUMONIA_THREADS": "1"},
    "oneDNN, 1 thread": {"PNEUMONIA_THREADS": "1"},
}


def train_steps(steps: int) -> dict:
    """Train the default model `steps` steps in this process; the weights' hash and timing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from pneumonia.config import load_params
    from pneumonia.data.prepared import load_split
    from pneumonia.model.network import build_model
    from pneumonia.model.training import compile_model, make_datasets

    threads = int(os.environ.get("PNEUMONIA_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    params = load_params()
    keras.utils.set_random_seed(params.base.seed)
    tf.config.experimental.enable_op_determinism()
    train, val = load_split("train"), load_split("val")
    train_ds, _ = make_datasets(train, val, params.train, params.base.seed)
    model = build_model(train[0].shape[1], params.train)
    compile_model(model, params.train, steps_per_epoch=steps)
    started = time.perf_counter()
    history = model.fit(train_ds.take(steps), epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return {
        "sha256": digest.hexdigest(),
        "loss": float(history.history["loss"][-1]),
        "ms_per_step": 1000 * seconds / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per setting")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_steps(args.steps)))
        return

    print(f"{describe()}; {args.steps} training steps of the default model per row\n")
    print("| setting | weights sha256 | loss | ms / step |")
    print("|---|---|---:|---:|")
    for label, env in SETTINGS.items():
        result = subprocess.run(
            [sys.executable, __file__, "--worker", "--steps", str(args.steps)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {label} | {row['sha256'][:16]} | {row['loss']:.6f} | {row['ms_per_step']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
