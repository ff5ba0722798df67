"""Shifts a different scanner, PACS or collimation could apply, on decoded images, and the
metrics of a split under each.

SHIFTS change exposure, encoding, resolution and orientation. FRAMING changes what the
frame holds, from each image's own thorax box (`pneumonia.images.framing`): a crop to the
thorax (tight collimation: the lungs fill the frame), fixed crops, black borders even and
uneven (a scanned film, a wider collimation), zoomed-out copies whose margins repeat the
image's edges (the same thorax smaller in the frame, with no black border to cut off) and a
rotation with black corners. The training images are framed wide, so a shift of the frame
alone shows whether the model reads the label off the framing, and the zoomed-out copies
whether it reads it off the thorax's scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pneumonia.evaluation.metrics import ROBUSTNESS_METRICS, binary_metrics
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_image
from pneumonia.images.framing import find_thorax
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
    # An original's size: the endpoint decodes a large JPEG at a DCT scale (1/2 to 1/8,
    # `pneumonia.images.prepare.decode_size`), where the 224 px training copies never are.
    "original size 1050 px": lambda gray: original_size(gray, 1050),
    "rotation +10 deg": lambda gray: _rotate(gray, 10),
    "rotation -10 deg": lambda gray: _rotate(gray, -10),
    # Framing: another collimation, field of view or orientation on the same patients.
    "border crop 8%": lambda gray: _crop(gray, 0.08),
    "padding 8%": lambda gray: _pad(gray, 0.08),
    "mirror": lambda gray: np.ascontiguousarray(gray[:, ::-1]),
}

UNEVEN = (0.4, 1.6, 1.6, 0.4)  # top, bottom, left, right: the same area, mostly on two sides


MAX_ASPECT = 1.25  # width / height of a collimated chest field; a wider box grows in height


def _thorax_crop(gray: np.ndarray) -> np.ndarray:
    """The image cropped to its thorax box (lung fields and ribcage, with a small margin), as
    tight collimation frames it: at most MAX_ASPECT wide for its height."""
    box = find_thorax(gray)
    height = gray.shape[0]
    rows = min(height, max(box.height, round(box.width / MAX_ASPECT)))
    top = min(max(0, box.top - (rows - box.height) // 2), height - rows)
    return gray[top : top + rows, box.left : box.right]


def _border(
    gray: np.ndarray, share: float, weights: tuple[float, float, float, float] = (1, 1, 1, 1)
) -> np.ndarray:
    """A black border of `share` of the height (top, bottom) and width (left, right), each
    side scaled by its weight."""
    height, width = gray.shape
    top, bottom, left, right = (
        round(size * share * weight)
        for size, weight in zip((height, height, width, width), weights, strict=True)
    )
    return np.pad(gray, ((top, bottom), (left, right)))


def _zoom_out(gray: np.ndarray, share: float) -> np.ndarray:
    """A margin of `share` of the height (top, bottom) and width (left, right) that repeats
    the image's edge rows and columns: the image zoomed out, the thorax smaller in a frame
    that has no black border."""
    height, width = gray.shape
    top, left = round(height * share), round(width * share)
    return np.pad(gray, ((top, top), (left, left)), mode="edge")


def _rotate_black(gray: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about the centre, the corners it uncovers black (a film turned on a scanner)."""
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (width, height), borderMode=cv2.BORDER_CONSTANT)


FRAMING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "thorax crop": _thorax_crop,
    "crop 8%": lambda gray: _crop(gray, 0.08),
    "crop 15%": lambda gray: _crop(gray, 0.15),
    "border 5%": lambda gray: _border(gray, 0.05),
    "border 10%": lambda gray: _border(gray, 0.10),
    "border 20%": lambda gray: _border(gray, 0.20),
    "border 5% uneven": lambda gray: _border(gray, 0.05, UNEVEN),
    "border 10% uneven": lambda gray: _border(gray, 0.10, UNEVEN),
    "border 20% uneven": lambda gray: _border(gray, 0.20, UNEVEN),
    "zoom out 10%": lambda gray: _zoom_out(gray, 0.10),
    "zoom out 20%": lambda gray: _zoom_out(gray, 0.20),
    "rotation 5 deg, black corners": lambda gray: _rotate_black(gray, 5),
}
ALL_SHIFTS = SHIFTS | FRAMING  # what the gate is fitted and thresholded on


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


def original_size(gray: np.ndarray, side: int) -> bytes:
    """The image enlarged (cubic) to `side` px on its shorter side, as JPEG quality 95."""
    height, width = gray.shape
    scale = side / min(height, width)
    size = (round(width * scale), round(height * scale))
    return _jpeg(np.clip(cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC), 0, 1), 95)


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
    shifts: dict[str, Callable] = SHIFTS,
) -> dict[str, np.ndarray]:
    """P(PNEUMONIA) of each raw image under every shift of `shifts`, by shift name."""
    return {
        name: predict(shifted_inputs(raw_files, shift, config))
        for name, shift in tqdm(shifts.items(), desc=description, unit="shift")
    }


def robustness(shifted: dict[str, np.ndarray], labels: np.ndarray, threshold: float) -> dict:
    """Metrics of each shifted copy of a split, at the same threshold."""
    report = {}
    for name, probabilities in shifted.items():
        metrics = binary_metrics(labels, probabilities, threshold)
        report[name] = {key: float(metrics[key]) for key in ROBUSTNESS_METRICS}
    return report
