"""The one image-preparation path, used by the preprocess stage and by serving.

`prepare_image` turns encoded bytes or a decoded array of any size, bit depth
and mode into the model's input: a square (S, S, 1) uint8 image. Per-image
standardisation happens inside the model, so the exported graph carries it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats the pipeline and the endpoint accept; anything else is rejected.
ACCEPTED_FORMATS = ("JPEG", "PNG")
# Caps checked from the header, before any pixel is decoded.
MAX_PIXELS = 25_000_000
MAX_SIDE = 8192

Intensity = Literal["none", "equalize", "clahe"]


class ImageError(ValueError):
    """An input that is not a usable image; `reason` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    mode: str


@dataclass(frozen=True)
class PreprocessConfig:
    """What `prepare_image` needs; written into the model metadata for serving."""

    image_size: int
    intensity: Intensity = "none"
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8


def read_header(data: bytes) -> ImageHeader:
    """Identify the format and size from the header alone, without decoding pixels."""
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            header = ImageHeader(image.format or "?", image.width, image.height, image.mode)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageError(
                "too_large", f"the image declares more than {MAX_PIXELS:,} pixels"
            ) from None
        raise ImageError("not_an_image", "the bytes are not a recognised image") from None
    if header.format not in ACCEPTED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"format {header.format} is not accepted (use {' or '.join(ACCEPTED_FORMATS)})",
        )
    if header.width < 1 or header.height < 1:
        raise ImageError("corrupt", "the image declares no pixels")
    if max(header.width, header.height) > MAX_SIDE or header.width * header.height > MAX_PIXELS:
        raise ImageError(
            "too_large",
            f"{header.width}x{header.height} px is over the cap of {MAX_PIXELS:,} pixels "
            f"or {MAX_SIDE} px a side",
        )
    return header


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to a grayscale float32 array in [0, 1], EXIF orientation applied.

    Returns: (H, W) float32.
    """
    read_header(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # truncated or corrupt streams fail here
            return to_gray(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"the image cannot be decoded ({type(exc).__name__})") from None


def to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to (H, W) float32 in [0, 1]; 16-bit keeps its precision."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG opens as I;16 or I): full scale is 65535.
        pixels = np.asarray(image, dtype=np.float64)
        return np.clip(pixels / 65535.0, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        return np.clip(pixels, 0.0, 1.0)
    # L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, 1: ITU-R 601 luma, alpha ignored.
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def array_to_gray(pixels: np.ndarray) -> np.ndarray:
    """A decoded (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/uint16/float array to gray."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3].astype(np.float32)
        array = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        scale = _full_scale(pixels.dtype)
        return np.clip(array / scale, 0.0, 1.0).astype(np.float32)
    if array.ndim != 2:
        raise ImageError("bad_shape", f"expected a 2-D image or HxWxC, got shape {array.shape}")
    return np.clip(array.astype(np.float32) / _full_scale(array.dtype), 0.0, 1.0)


def _full_scale(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ImageError("bad_dtype", f"unsupported pixel type {dtype}")


def prepare_image(image: bytes | np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Encoded bytes or a decoded array to the model input.

    Returns: (S, S, 1) uint8, S = config.image_size.
    """
    gray = decode_image(image) if isinstance(image, bytes | bytearray) else array_to_gray(image)
    size = config.image_size
    # INTER_AREA for shrinking (anti-aliased), cubic for the rare enlargement.
    interpolation = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_CUBIC
    resized = cv2.resize(gray, (size, size), interpolation=interpolation)
    pixels = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    if config.intensity == "equalize":
        pixels = cv2.equalizeHist(pixels)
    elif config.intensity == "clahe":
        clahe = cv2.createCLAHE(
            clipLimit=config.clahe_clip_limit,
            tileGridSize=(config.clahe_tile_grid, config.clahe_tile_grid),
        )
        pixels = clahe.apply(pixels)
    return pixels[:, :, np.newaxis]
