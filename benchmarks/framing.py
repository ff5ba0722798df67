"""What finding the thorax costs (`pneumonia.images.framing.find_thorax`), single thread.

On the committed sample of real X-rays (224x224 JPEGs), decoded once, and on the same
images resized to 1024 and 2048 px, as full-resolution originals arrive:

    python -m benchmarks.framing [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from pneumonia.images.decode import decode_gray
from pneumonia.images.framing import find_thorax
from pneumonia.machine import describe

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "chest-xray-sample"


def timings(images: list[np.ndarray], repeats: int) -> np.ndarray:
    """Milliseconds per call, every image `repeats` times (after one warm-up call each)."""
    spent = []
    for image in images:
        find_thorax(image)
        for _ in range(repeats):
            started = time.perf_counter()
            find_thorax(image)
            spent.append(1000 * (time.perf_counter() - started))
    return np.array(spent)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images = [decode_gray(path.read_bytes()) for path in sorted(SAMPLE.glob("train/*/*.jpeg"))]
    print(f"find_thorax on {len(images)} real X-rays, {describe()}")
    print(f"| {'size':<12} | {'p50 ms':>7} | {'p95 ms':>7} | {'max ms':>7} |")
    print(f"|{'-' * 14}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for side in (224, 1024, 2048):
        sized = [cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC) for image in images]
        spent = timings(sized, args.repeats)
        p50, p95 = np.percentile(spent, (50, 95))
        print(f"| {f'{side}x{side}':<12} | {p50:7.2f} | {p95:7.2f} | {spent.max():7.2f} |")


if __name__ == "__main__":
    main()
