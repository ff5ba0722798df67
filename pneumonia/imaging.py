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
    with _open_checked(data) as image:
        return ImageHeader(image.format or "?", image.width, image.height, image.mode)


def _open_checked(data: bytes) -> Image.Image:
    """Open lazily (header only) and apply the format and size caps; the caller closes it."""
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageError(
                "too_large", f"the image declares more than {MAX_PIXELS:,} pixels"
            ) from None
        raise ImageError("not_an_image", "the bytes are not a recognised image") from None
    width, height = image.size
    problem = None
    if image.format not in ACCEPTED_FORMATS:
        problem = ImageError(
            "unsupported_format",
            f"format {image.format} is not accepted (use {' or '.join(ACCEPTED_FORMATS)})",
        )
    elif width < 1 or height < 1:
        problem = ImageError("corrupt", "the image declares no pixels")
    elif max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        problem = ImageError(
            "too_large",
            f"{width}x{height} px is over the cap of {MAX_PIXELS:,} pixels or {MAX_SIDE} px a side",
        )
    if problem is not None:
        image.close()
        raise problem
    return image


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to a grayscale float32 array in [0, 1], EXIF orientation applied.

    Returns: (H, W) float32.
    """
    return to_float(decode_gray(data))


def decode_gray(data: bytes, min_size: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to grayscale in the source's own depth, EXIF orientation applied.

    A JPEG is decoded straight to luma, and with `min_size` libjpeg may scale it
    down by 2, 4 or 8 in the DCT while both sides stay >= min_size: a 2000 px
    radiograph decodes at 250 px instead of decoding every pixel and averaging
    them away.

    Returns: (H, W) uint8 for 8-bit and palette sources, uint16 for 16-bit,
    float32 in [0, 1] for 32-bit float.
    """
    with _open_checked(data) as image:
        try:
            if image.format == "JPEG":
                image.draft("L", (min_size, min_size) if min_size else None)
            image.load()  # truncated or corrupt streams fail here
            return to_gray(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError) as exc:
            message = f"the image cannot be decoded ({type(exc).__name__})"
            raise ImageError("corrupt", message) from None


def to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to (H, W) gray: uint8, uint16 (16-bit) or float32 in [0, 1] (mode F)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG opens as I;16 or I): full scale is 65535.
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    # L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, 1: ITU-R 601 luma, alpha ignored.
    return np.asarray(image.convert("L"))


def array_to_gray(pixels: np.ndarray) -> np.ndarray:
    """A decoded (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array to (H, W) gray.

    uint8 and uint16 keep their depth; float input is taken as [0, 1].
    """
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.dtype == np.uint8:  # fixed-point ITU-R 601 luma, within 1 level of Pillow's "L"
            return cv2.cvtColor(np.ascontiguousarray(array[:, :, :3]), cv2.COLOR_RGB2GRAY)
        rgb = array[:, :, :3].astype(np.float32) / _full_scale(array.dtype)
        return np.clip(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 0.0, 1.0)
    if array.ndim != 2:
        raise ImageError("bad_shape", f"expected a 2-D image or HxWxC, got shape {array.shape}")
    if array.dtype in (np.uint8, np.uint16):
        return array
    return np.clip(array.astype(np.float32) / _full_scale(array.dtype), 0.0, 1.0)


def to_float(gray: np.ndarray) -> np.ndarray:
    """(H, W) gray of any depth to float32 in [0, 1]."""
    if gray.dtype == np.float32:
        return gray
    return gray.astype(np.float32) / np.float32(_full_scale(gray.dtype))


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """(H, W) gray of any depth to uint8, rounding to the nearest level."""
    if gray.dtype == np.uint8:
        return gray
    scaled = gray.astype(np.float32) * np.float32(255.0 / _full_scale(gray.dtype))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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

    Resizing works in the source's depth (8-bit stays 8-bit, so no float copies);
    the result is rounded to 8 bits once, after the resize.

    Returns: (S, S, 1) uint8, S = config.image_size.
    """
    size = config.image_size
    if isinstance(image, bytes | bytearray):
        gray = decode_gray(bytes(image), min_size=size)
    else:
        gray = array_to_gray(image)
    # INTER_AREA for shrinking (anti-aliased), cubic for the rare enlargement.
    interpolation = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_CUBIC
    pixels = to_uint8(cv2.resize(gray, (size, size), interpolation=interpolation))
    if config.intensity == "equalize":
        pixels = cv2.equalizeHist(pixels)
    elif config.intensity == "clahe":
        clahe = cv2.createCLAHE(  # per call: a CLAHE object is not thread-safe
            clipLimit=config.clahe_clip_limit,
            tileGridSize=(config.clahe_tile_grid, config.clahe_tile_grid),
        )
        pixels = clahe.apply(pixels)
    return pixels[:, :, np.newaxis]
