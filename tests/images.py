"""Images made by the tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def gradient(width: int = 96, height: int = 64) -> np.ndarray:
    """(H, W) uint8: a horizontal ramp with a bright block top-left, so orientation shows."""
    pixels = np.tile(np.linspace(0, 200, width, dtype=np.uint8), (height, 1))
    pixels[: height // 4, : width // 4] = 255
    return pixels
