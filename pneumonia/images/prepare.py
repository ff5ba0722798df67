"""The one image-preparation path, used by the preprocess stage and by serving.

`prepare_image` turns encoded bytes or a decoded array of any size, bit depth
and mode into the model's input: a square (S, S, 1) uint8 image. Per-image
standardisation happens inside the model, so the exported graph carries it.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import array_to_gray, decode_gray, to_uint8
from pneumonia.images.framing import Box, find_thorax

# A JPEG is decoded at a DCT scale (1/8, 1/4, 1/2 or whole: the smallest for which libjpeg's
# integer sizes keep both sides at least this many times the model's input), as the thorax
# box is cut from it before the resize: the box holds a median 0.61 of the height of training
# images (at least half on 90%), so a median box reaches the area resize at 1.7 times the
# input's side and 95% at 1.35 or more (a 224 px training copy's median box: 1.05). On the
# held-out X-rays enlarged to an original's 1,050-2,900 px (`python -m benchmarks.decode_size`,
# three seeds), sensitivity stays within 0.004 of the images as they are; at 1x, a 1,050 px
# original was decoded at 132 px, its thorax box (76 px) enlarged to 128, and sensitivity fell
# by 1.0-2.7 points. 4x scored the same and cost up to 4 ms more a request at 2,000 px. The
# training copies (224 px) are never scaled
# (docs/model-quality.md#full-resolution-originals-decoded-for-the-thorax-box).
DECODE_MARGIN = 2.75


def decode_size(config: PreprocessConfig) -> int:
    """The side, in px, that a JPEG's DCT scaling keeps both sides at or above (`DECODE_MARGIN`)."""
    return round(DECODE_MARGIN * config.image_size)


def model_region(gray: np.ndarray, config: PreprocessConfig) -> Box:
    """The part of an (H, W) gray image that the model sees: all of it, or with
    `framing: thorax` the thorax box (lung fields and ribcage with a small margin)."""
    if config.framing == "thorax":
        return find_thorax(gray)
    return Box(0, 0, *gray.shape)


def prepare_image(
    image: bytes | np.ndarray, config: PreprocessConfig, intensity: bool = True
) -> np.ndarray:
    """Encoded bytes or a decoded array to the model input.

    Resizing works in the source's depth (8-bit stays 8-bit, so no float copies);
    the result is rounded to 8 bits once, after the resize. `intensity=False` stops before
    the intensity step (`apply_intensity`), for training that applies it after augmentation.

    Returns: (S, S, 1) uint8, S = config.image_size.
    """
    size = config.image_size
    if isinstance(image, bytes | bytearray):
        gray = decode_gray(bytes(image), min_size=decode_size(config))
    else:
        gray = array_to_gray(image)
    box = model_region(gray, config)
    gray = gray[box.top : box.bottom, box.left : box.right]
    # INTER_AREA for shrinking (anti-aliased), cubic for the rare enlargement.
    interpolation = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_CUBIC
    pixels = to_uint8(cv2.resize(gray, (size, size), interpolation=interpolation))
    return (apply_intensity(pixels, config) if intensity else pixels)[:, :, np.newaxis]


def apply_intensity(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The intensity step of `config` on an (S, S) uint8 image: none, histogram equalisation
    or CLAHE. CLAHE's tiles are a fixed share of the image, so its result depends on the
    field of view it is computed on."""
    if config.intensity == "equalize":
        return cv2.equalizeHist(pixels)
    if config.intensity == "clahe":
        clahe = cv2.createCLAHE(  # per call: a CLAHE object is not thread-safe
            clipLimit=config.clahe_clip_limit,
            tileGridSize=(config.clahe_tile_grid, config.clahe_tile_grid),
        )
        return clahe.apply(pixels)
    return pixels
