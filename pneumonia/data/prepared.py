"""Reading the preprocess stage's arrays."""

from __future__ import annotations

import json

import numpy as np

from pneumonia import paths
from pneumonia.images.config import PreprocessConfig


def load_split(split: str, images: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 1) uint8 images and (N,) uint8 labels of one prepared split. `images`:
    "before_intensity" for the train split's images before the intensity step (what training
    augments when it applies that step itself, as serving does)."""
    with np.load(paths.prepared_split(split)) as arrays:
        return arrays[images], arrays["labels"]


def load_files(split: str) -> np.ndarray:
    """(N,) the data/raw-relative file of each image of a split."""
    with np.load(paths.prepared_split(split)) as arrays:
        return arrays["files"]


def preprocessing() -> dict:
    """The config the arrays were made with (labels, image_size, intensity, ...)."""
    return json.loads(paths.PREPARED_PARAMS.read_text())


def preprocess_config() -> PreprocessConfig:
    """`preprocessing()` without the labels, as the config `prepare_image` takes."""
    prepared = preprocessing()
    prepared.pop("labels")
    return PreprocessConfig.model_validate(prepared)
