"""The view check: is a plain image (JPEG, PNG, a DICOM without ViewPosition) a lateral view?

A linear (logistic) score over `view_features`: the whole decoded image resized to a 16x16
grid of cell means (a large image never copied whole to float: `cell_means`),
standardised (so bit depth, exposure and window do not matter), and how far each cell is
from its mirror cell. A frontal chest X-ray has a lung field either side of
a bright spine and is nearly its own mirror image; a lateral view has the spine at one side,
the sternum at the other and one lung field in profile. The grid is of the whole image,
squeezed square as the training X-rays are, before any thorax crop. Classical and
independent of the network, so the check can be fitted on statistics kept from radiographs
whose licence allows no copy, whatever network is trained.

Evaluate fits it on frontal X-rays (training X-rays, adults), other body parts and lateral
chest radiographs, each as it is and under the framing shifts; the laterals include
statistics kept from radiographs that may not be copied (`data/external/view_statistics`).
Its threshold is set on validation X-rays so that at most a given share of them, as they
are and under each framing, is called lateral. model.json carries it (`view_check`), so the
model version covers it.

Serving refuses a lateral with 422 `lateral_view`, unless the intended-use head names the
image another body part: a spine, shoulder or skull radiograph can look lateral at 16x16,
and `not_a_chest_xray` is the truer answer for it (`decide_kind`).

Other body parts are left to the intended-use head and the reason head, which see the
network's features: a second linear score on these 16x16 features, fitted on other body parts
against every chest radiograph, was tried and taken out of the decision. It changed no
external radiograph's outcome on evaluate's folds and refused held-out X-rays under a tight
crop (docs/model-quality.md#the-body-part-check-taken-out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from pneumonia.decision.band import conformal_quantile

VIEW_GRID = 16
# Bumped whenever `view_grid` or `view_features` computes something else: statistics kept
# under another version cannot be mixed with fresh ones (`evaluation.view.load_kept`).
VIEW_FEATURES_VERSION = 1
VIEW_FEATURES = VIEW_GRID**2 + VIEW_GRID * (VIEW_GRID // 2) + VIEW_GRID // 2


# Images up to this many pixels are area-resized by cv2 on a float32 copy (at most 4 MiB,
# and faster than `cell_means`' loop); larger ones a cell's rows at a time, so that no float
# copy of the whole image is made (95 MiB at the decoder's pixel cap). Both compute the same
# means, to float32 rounding.
WHOLE_COPY_PIXELS = 1 << 20


def shrink(values: np.ndarray, cells: int) -> np.ndarray:
    """(cells, ...) float64: the means of `values` over `cells` equal spans of its first axis,
    each row weighted by how much of it the span covers (an area resize, as cv2.INTER_AREA
    shrinks; a span within one row takes that row). One span's rows are converted to float at
    a time."""
    size = values.shape[0]
    scale = size / cells
    means = np.empty((cells, *values.shape[1:]))
    for cell in range(cells):
        start, stop = cell * scale, (cell + 1) * scale
        low, high = int(start), min(math.ceil(stop), size)
        rows = np.asarray(values[low:high], dtype=np.float64)
        total = rows.sum(axis=0) - (start - low) * rows[0]  # less the first row's part before
        if high > stop:
            total -= (high - stop) * rows[-1]  # ... and the last row's part after the span
        means[cell] = total / scale
    return means


def cell_means(gray: np.ndarray, cells: int = VIEW_GRID) -> np.ndarray:
    """(cells, cells) float64: the (H, W) image's area-resize cell means, the kept
    statistics' (cv2.resize INTER_AREA of a float32 copy); above WHOLE_COPY_PIXELS by
    `shrink`, down the rows then across the columns."""
    if gray.size <= WHOLE_COPY_PIXELS:
        copy = np.asarray(gray, dtype=np.float32)
        return cv2.resize(copy, (cells, cells), interpolation=cv2.INTER_AREA).astype(np.float64)
    return shrink(shrink(gray, cells).T, cells).T


def view_grid(gray: np.ndarray) -> np.ndarray:
    """(VIEW_GRID, VIEW_GRID) float32: the (H, W) gray image's cell means (`cell_means`),
    standardised to mean 0 and standard deviation 1; zeros for a uniform image."""
    grid = cell_means(np.asarray(gray)).astype(np.float32)
    spread = float(grid.std())
    if spread < 1e-6:
        return np.zeros((VIEW_GRID, VIEW_GRID), dtype=np.float32)
    return ((grid - grid.mean()) / spread).astype(np.float32)


def view_features(grids: np.ndarray) -> np.ndarray:
    """(N, VIEW_FEATURES) float64 from (N, VIEW_GRID, VIEW_GRID) grids: the cells row by row,
    then |cell - mirror cell| over the left half, then |column mean - mirror column mean|."""
    grids = np.asarray(grids, dtype=np.float64).reshape(-1, VIEW_GRID, VIEW_GRID)
    half = VIEW_GRID // 2
    mirrored = grids[:, :, ::-1]
    cells = np.abs(grids[:, :, :half] - mirrored[:, :, :half])
    columns = grids.mean(axis=1)
    profile = np.abs(columns[:, :half] - columns[:, ::-1][:, :half])
    flat = [grids.reshape(len(grids), -1), cells.reshape(len(grids), -1), profile]
    return np.concatenate(flat, axis=1)


LATERAL = "lateral_chest"
OTHER_BODY_PART = "other_body_part"
VIEW_STRENGTH = 0.05  # inverse L2 penalty on standardised features


@dataclass(frozen=True)
class ViewCheck:
    """score = features @ weights + bias (standardisation folded in); lateral above
    `threshold`."""

    weights: np.ndarray  # (F,)
    bias: float
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N,) scores for (N, F) view features."""
        return np.asarray(features, dtype=np.float64) @ self.weights + self.bias

    def lateral(self, features: np.ndarray) -> np.ndarray:
        """(N,) whether each image is called a lateral view."""
        return self.scores(features) > self.threshold

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Its arrays by name; evaluate saves them in models/gate.npz under `view_`."""
        named: dict = {"weights": self.weights, "bias": self.bias, "threshold": self.threshold}
        return {prefix + name: np.asarray(value) for name, value in named.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> ViewCheck | None:
        """The check saved by `arrays(prefix)`, or None when `arrays` hold none."""
        if prefix + "weights" not in arrays:
            return None
        return cls(
            weights=np.asarray(arrays[prefix + "weights"], dtype=np.float64),
            bias=float(arrays[prefix + "bias"]),
            threshold=float(arrays[prefix + "threshold"]),
        )


def fit_view_check(
    frontal: np.ndarray,
    lateral: np.ndarray,
    other: np.ndarray | None = None,
    strength: float = VIEW_STRENGTH,
) -> ViewCheck:
    """The score from (N, F) view features of frontal chest X-rays, of lateral views and of
    other body parts (negatives too); lateral against the rest, both sides balanced. Its
    threshold is 0 until `with_view_threshold` sets it."""
    from sklearn.linear_model import LogisticRegression

    negatives = [frontal] if other is None else [frontal, other]
    x = np.concatenate([*negatives, lateral]).astype(np.float64)
    y = np.concatenate([np.zeros(len(x) - len(lateral)), np.ones(len(lateral))])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=strength, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / scale, y)
    coefficients = model.coef_[0] / scale
    bias = float(model.intercept_[0] - coefficients @ mean)
    return ViewCheck(coefficients, bias, 0.0)


def with_view_threshold(
    check: ViewCheck, validation: Sequence[np.ndarray], false_rejection_rate: float
) -> ViewCheck:
    """The check whose threshold calls at most `false_rejection_rate` of each block of
    `validation` (validation X-rays unchanged, and under each framing) lateral: the largest
    split-conformal quantile, never below 0 (the fit's own boundary)."""
    level = 1 - false_rejection_rate
    quantiles = [conformal_quantile(check.scores(block), level) for block in validation]
    return replace(check, threshold=max(0.0, *quantiles))


def decide_kind(head_kind: str | None, lateral: bool) -> str | None:
    """The kind an image is refused as by the view check and the intended-use head: a lateral
    view when the view check calls it lateral (`lateral`), unless the head named it another
    body part; otherwise the head's kind (None: no head)."""
    if lateral and head_kind != OTHER_BODY_PART:
        return LATERAL
    return head_kind


def refused_by_view(check: ViewCheck | None, rows: np.ndarray, head_kinds: list[str]) -> np.ndarray:
    """(N,) whether serving refuses each image by the view check: it calls its unchanged rows
    (N, F) lateral and the head does not name it another body part."""
    if check is None:
        return np.zeros(len(rows), dtype=bool)
    not_body = np.array([kind != OTHER_BODY_PART for kind in head_kinds], dtype=bool)
    return check.lateral(rows) & not_body
