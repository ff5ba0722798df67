"""Time and memory of the pipeline on this machine; prints a table.

Runs each stage with `dvc repro --force --single-item <stage>` (so the default data
and params), then a no-op `dvc repro` three times. Peak memory is the largest
resident set of the stage's process tree (ru_maxrss of the waited-for children).

    python benchmarks/pipeline.py            # all five stages (~10 min on 2 cores)
    python benchmarks/pipeline.py --stages ingest preprocess
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pneumonia.machine import describe

STAGES = ["ingest", "preprocess", "train", "evaluate", "export_onnx"]
# Measures one command in a fresh interpreter, so each figure is that stage's own peak.
MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
seconds = time.perf_counter() - started
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(command: list[str]) -> tuple[float, float]:
    """(seconds, peak MiB) of a command; exits when it fails."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True
    )
    code, seconds, max_rss_kib = result.stdout.split()
    if int(code) != 0:
        sys.exit(f"{' '.join(command)} failed (exit {code}); run it by hand to see why")
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024  # macOS reports bytes
    return float(seconds), int(max_rss_kib) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    args = parser.parse_args()
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ["PATH"]

    rows = []
    for stage in args.stages:
        print(f"running {stage} ...", file=sys.stderr, flush=True)
        seconds, peak = measure(["dvc", "repro", "--force", "--single-item", stage])
        rows.append((f"stage {stage}", seconds, peak))
    total = sum(row[1] for row in rows)
    rows.append(("stages together", total, max(row[2] for row in rows)))
    no_op = [measure(["dvc", "repro"]) for _ in range(3)]
    rows.append(
        (
            "dvc repro, nothing changed (median of 3)",
            statistics.median(s for s, _ in no_op),
            max(p for _, p in no_op),
        )
    )

    print(f"\nmachine: {describe()}")
    print(f"{'what':<44} {'seconds':>9} {'peak MiB':>9}")
    print("-" * 64)
    for what, seconds, peak in rows:
        print(f"{what:<44} {seconds:>9.1f} {peak:>9.0f}")


if __name__ == "__main__":
    main()
