"""Where the thorax is in a frontal chest X-ray: the lung fields and the ribcage, as a box.

Classical image processing on a 128 px copy, in about a millisecond:

- left and right: the mean of each column over the middle rows falls into two dark
  valleys, the lungs, either side of the bright mediastinum; the chest wall is the
  brightest column outside each valley (the image's edge when the lungs reach it);
- top and bottom: the vertical gradient averaged over the lung columns is most negative
  at the apices (bright neck and shoulders above, dark lungs below) in the upper half, and
  most positive at the diaphragm (dark lungs above, bright abdomen below) in the lower half.

A black border (a scanned film, a wider collimation) is cut off first: its columns would
be darker than any lung. So is a flat band, a margin that repeats the image's edge rows or
columns (a zoomed-out copy): it would widen the box, and the thorax would reach the model
smaller than the same X-ray's without it. A small margin is added on every side. The
evaluation builds framing shifts from the box (a crop to the thorax stands for tight
collimation); nothing here decides an answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SIDE = 128  # px of the square copy the profiles are read on
PREVIEW = 256  # px of the longest side the search runs at: a full-resolution image is shrunk
MARGIN = 0.04  # of the box's width and height, added on each side
MIN_HEIGHT = 0.5  # of the box's width: a shorter box is extended upwards to this
FLAT = 0.002  # of the gray range: a border row closer than this to the row inside it is flat
MIN_BAND = 3  # rows of the search copy: a flat band is at least this deep ...
BAND_SLACK = 2  # ... and starts within this many rows of the edge


@dataclass(frozen=True)
class Box:
    """A region of an image, in px: rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        """Rows in the box."""
        return self.bottom - self.top

    @property
    def width(self) -> int:
        """Columns in the box."""
        return self.right - self.left


def _smooth(profile: np.ndarray, width: int) -> np.ndarray:
    """A moving average of `width` samples, the same length as `profile` (edges repeated)."""
    padded = np.pad(profile, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def _columns(small: np.ndarray) -> tuple[int, int, int, int]:
    """(left chest wall, mediastinum, right chest wall, gap) as columns of the square copy."""
    n = small.shape[1]
    profile = _smooth(small[int(0.3 * n) : int(0.7 * n)].mean(axis=0), 5)
    centre = n // 3 + int(np.argmax(profile[n // 3 : 2 * n // 3]))
    gap = n // 20
    left_lung = gap + int(np.argmin(profile[gap : max(gap + 1, centre - gap)]))
    right_lung = centre + gap + int(np.argmin(profile[centre + gap : n - gap]))
    left = int(np.argmax(profile[: left_lung + 1]))
    right = right_lung + int(np.argmax(profile[right_lung:]))
    return left, centre, right, gap


def _rows(small: np.ndarray, left: int, centre: int, right: int, gap: int) -> tuple[int, int]:
    """(apices, diaphragm) as rows of the square copy, from the lung columns' gradient."""
    n = small.shape[0]
    lungs = np.r_[left : max(left + 1, centre - gap), min(right, centre + gap) : right + 1]
    slope = _smooth(cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=5)[:, lungs].mean(axis=1), 7)
    half = n // 2
    top = 2 + int(np.argmin(slope[2:half]))  # bright -> dark going down
    bottom = half + int(np.argmax(slope[half : n - 2]))  # dark -> bright going down
    return top, bottom


def _content(gray: np.ndarray) -> Box:
    """The image without its black border: rows and columns of which at least a fifth is
    brighter than 4% of the gray range (the whole image when that leaves too little); then
    without its flat bands (`_flat_bands`), each axis only where a quarter of it is left."""
    values = gray.astype(np.float32)
    low, high = np.percentile(values[:: max(1, values.shape[0] // 64)], (1, 99))
    lit = values > low + 0.04 * max(high - low, 1e-6) if high > low else np.ones_like(values)
    rows = np.flatnonzero(lit.mean(axis=1) >= 0.2)
    columns = np.flatnonzero(lit.mean(axis=0) >= 0.2)
    height, width = gray.shape
    if len(rows) < max(1, height // 4) or len(columns) < max(1, width // 4):
        return Box(0, 0, height, width)
    top, left, bottom, right = (
        int(rows[0]),
        int(columns[0]),
        int(rows[-1]) + 1,
        int(columns[-1]) + 1,
    )
    inside = values[top:bottom, left:right]
    cut = FLAT * max(high - low, 1e-6)
    top_rows, bottom_rows = _flat_bands(inside, cut)
    left_columns, right_columns = _flat_bands(inside.T, cut)
    if bottom - top - top_rows - bottom_rows < height // 4:
        top_rows = bottom_rows = 0
    if right - left - left_columns - right_columns < width // 4:
        left_columns = right_columns = 0
    return Box(top + top_rows, left + left_columns, bottom - bottom_rows, right - right_columns)


def _flat_bands(values: np.ndarray, cut: float) -> tuple[int, int]:
    """How many of the first and of the last rows of `values` are a flat band: a margin that
    repeats the row inside it (a zoomed-out copy whose edges were replicated, or any other
    flat band), which holds no anatomy and would widen the box, so that the thorax reached
    the model smaller than in the same X-ray without it.

    A band starts within BAND_SLACK rows of the edge (a black border's last row, blended by
    the shrink, may come first and is cut with it), is at least MIN_BAND rows, and every row
    of it is within `cut` (mean absolute difference) of the first row inside it: an
    upsampled or blurred image's nearly repeated edge rows, or a smooth gradient, are not."""
    return _leading_band(values, cut), _leading_band(values[::-1], cut)


def _leading_band(values: np.ndarray, cut: float) -> int:
    """`_flat_bands` at the top of `values`."""
    steps = np.abs(np.diff(values, axis=0)).mean(axis=1) >= cut  # row i differs from i + 1
    for start in range(min(BAND_SLACK, len(steps) - 1) + 1):
        if steps[start] or not steps[start:].any():
            continue
        inner = start + int(np.argmax(steps[start:]))  # the first row that is not a copy
        flat = np.abs(values[start:inner] - values[inner]).mean(axis=1) < cut
        return inner if inner - start >= MIN_BAND and flat.all() else 0
    return 0


def find_thorax(gray: np.ndarray) -> Box:
    """The box of the lung fields and ribcage in an (H, W) gray image (any dtype), in px.

    Always a box inside the image, at least a few px a side; on an image that is not a
    frontal chest X-ray it is still a box, just not a meaningful one. An image over PREVIEW
    px a side is searched on a copy shrunk to it.
    """
    height, width = gray.shape
    scale = PREVIEW / max(height, width)
    if scale >= 1:
        return _find(gray)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = _find(cv2.resize(gray.astype(np.float32), size, interpolation=cv2.INTER_AREA))
    top, left = (max(0, math.floor(edge / scale)) for edge in (small.top, small.left))
    bottom = min(height, math.ceil(small.bottom / scale))
    right = min(width, math.ceil(small.right / scale))
    return Box(top, left, bottom, right)


def _find(gray: np.ndarray) -> Box:
    """find_thorax at the image's own size."""
    content = _content(gray)
    inside = gray[content.top : content.bottom, content.left : content.right]
    height, width = inside.shape
    small = cv2.resize(inside.astype(np.float32), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2)
    left, centre, right, gap = _columns(small)
    top, bottom = _rows(small, left, centre, right, gap)
    box_width = right + 1 - left
    top = min(top, bottom - round(MIN_HEIGHT * box_width))
    margin_x, margin_y = MARGIN * box_width, MARGIN * (bottom - top)
    scale_y, scale_x = height / SIDE, width / SIDE
    top_px = max(0, round((top - margin_y) * scale_y))
    left_px = max(0, round((left - margin_x) * scale_x))
    bottom_px = min(height, max(top_px + 4, round((bottom + margin_y) * scale_y)))
    right_px = min(width, max(left_px + 4, round((right + 1 + margin_x) * scale_x)))
    return Box(
        content.top + top_px,
        content.left + left_px,
        content.top + bottom_px,
        content.left + right_px,
    )
