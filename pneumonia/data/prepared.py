"""Reading the preprocess stage's arrays."""

from __future__ import annotations

import json

import numpy as np

from pneumonia import paths


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 1) uint8 images and (N,) uint8 labels of one prepared split."""
    with np.load(paths.prepared_split(split)) as arrays:
        return arrays["images"], arrays["labels"]


def load_before_intensity(split: str) -> np.ndarray:
    """(N, S, S, 1) uint8 images of a split before the intensity step (train only: what
    training augments and then gives the intensity step, as serving applies it)."""
    with np.load(paths.prepared_split(split)) as arrays:
        return arrays["before_intensity"]


def load_files(split: str) -> np.ndarray:
    """(N,) the data/raw-relative file of each image of a split."""
    with np.load(paths.prepared_split(split)) as arrays:
        return arrays["files"]


def preprocessing() -> dict:
    """The config the arrays were made with (labels, image_size, intensity, ...)."""
    return json.loads(paths.PREPARED_PARAMS.read_text())
