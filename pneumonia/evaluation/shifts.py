"""Shifts a different scanner, PACS or collimation could apply, on decoded images, and the
metrics of a split under each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pneumonia.evaluation.metrics import ROBUSTNESS_METRICS, binary_metrics
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_image
from pneumonia.images.prepare import prepare_image

# Shifts a different scanner or PACS could apply, on the decoded image (H, W) float in [0, 1].
# Each returns what prepare_image accepts: an array, or bytes when the shift is an encoding.
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray | bytes]] = {
    "brighter +0.15": lambda gray: np.clip(gray + 0.15, 0, 1),
    "darker -0.15": lambda gray: np.clip(gray - 0.15, 0, 1),
    "contrast x0.6": lambda gray: np.clip(gray.mean() + (gray - gray.mean()) * 0.6, 0, 1),
    "gamma 1.5": lambda gray: gray**1.5,
    "jpeg quality 20": lambda gray: _jpeg(gray, 20),
    "resolution 1/4": lambda gray: _rescale(gray, 0.25),
    "rotation +10 deg": lambda gray: _rotate(gray, 10),
    "rotation -10 deg": lambda gray: _rotate(gray, -10),
    # Framing: another collimation, field of view or orientation on the same patients.
    "border crop 8%": lambda gray: _crop(gray, 0.08),
    "padding 8%": lambda gray: _pad(gray, 0.08),
    "mirror": lambda gray: np.ascontiguousarray(gray[:, ::-1]),
}


def _crop(gray: np.ndarray, share: float) -> np.ndarray:
    """The image without `share` of its height and width on every side."""
    height, width = gray.shape
    top, left = round(height * share), round(width * share)
    return gray[top : height - top, left : width - left]


def _pad(gray: np.ndarray, share: float) -> np.ndarray:
    """A black border of `share` of the height and width on every side."""
    height, width = gray.shape
    top, left = round(height * share), round(width * share)
    return np.pad(gray, ((top, top), (left, left)))


def _jpeg(gray: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", np.rint(gray * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return encoded.tobytes()


def _rescale(gray: np.ndarray, factor: float) -> np.ndarray:
    height, width = gray.shape
    small = cv2.resize(
        gray,
        (max(1, round(width * factor)), max(1, round(height * factor))),
        interpolation=cv2.INTER_AREA,
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _rotate(gray: np.ndarray, degrees: float) -> np.ndarray:
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def shifted_inputs(raw_files: list[Path], shift: Callable, config: PreprocessConfig) -> np.ndarray:
    """(N, S, S, 1) uint8: each raw image decoded, shifted, then prepared as usual."""
    return np.stack(
        [prepare_image(shift(decode_image(path.read_bytes())), config) for path in raw_files]
    )


def shifted_probabilities(
    predict: Callable[[np.ndarray], np.ndarray],
    raw_files: list[Path],
    config: PreprocessConfig,
    description: str,
) -> dict[str, np.ndarray]:
    """P(PNEUMONIA) of each raw image under every shift of SHIFTS, by shift name."""
    return {
        name: predict(shifted_inputs(raw_files, shift, config))
        for name, shift in tqdm(SHIFTS.items(), desc=description, unit="shift")
    }


def robustness(shifted: dict[str, np.ndarray], labels: np.ndarray, threshold: float) -> dict:
    """Metrics of each shifted copy of a split, at the same threshold."""
    report = {}
    for name, probabilities in shifted.items():
        metrics = binary_metrics(labels, probabilities, threshold)
        report[name] = {key: float(metrics[key]) for key in ROBUSTNESS_METRICS}
    return report
