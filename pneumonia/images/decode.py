"""Encoded bytes (JPEG, PNG, DICOM) to gray pixels in the source's own depth.

The format, structure and pixel caps are checked from the bytes before decoding
(`sanitize`); a DICOM file is handed to `pneumonia.images.dicom`, imported for DICOM only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image

from pneumonia.images.formats import MAX_PIXELS, MAX_SIDE, ImageError, ImageHeader, is_dicom
from pneumonia.images.sanitize import sanitize


def read_header(data: bytes) -> ImageHeader:
    """Identify the format and size from the header alone, without decoding pixels."""
    if is_dicom(data):  # pydicom is imported for DICOM files only
        from pneumonia.images.dicom import (
            read_dicom_header,  # here: pneumonia.dicom imports imaging
        )

        return read_dicom_header(data)
    with _open_checked(data) as (image, _):
        return ImageHeader(image.format or "?", image.width, image.height, image.mode)


@contextmanager
def _open_checked(data: bytes) -> Iterator[tuple[Image.Image, int]]:
    """Open lazily (header only), after `sanitize`, with the format and size caps applied.

    Yields (image, EXIF orientation 1..8) and closes the image on exit. Pillow only
    ever sees a JPEG or a PNG stripped of metadata, opened by its own plugin.
    """
    format, clean, orientation = sanitize(data)
    try:
        image = Image.open(io.BytesIO(clean), formats=[format])
    except Image.DecompressionBombError:
        raise ImageError(
            "too_large", f"the image declares more than {MAX_PIXELS:,} pixels"
        ) from None
    except Exception:  # any failure to parse a header is the input's fault
        raise ImageError("corrupt", f"the {format} header cannot be read") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError("corrupt", "the image declares no pixels")
        if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
            raise ImageError(
                "too_large",
                f"{width}x{height} px is over the cap of {MAX_PIXELS:,} pixels "
                f"or {MAX_SIDE} px a side",
            )
        yield image, orientation


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
    float32 in [0, 1] for 32-bit float. A DICOM file decodes to (H, W) uint8 through
    its own display transforms (`pneumonia.dicom.decode_dicom`; `min_size` is ignored).
    """
    if is_dicom(data):  # pydicom is imported for DICOM files only
        from pneumonia.images.dicom import decode_dicom  # here: pneumonia.dicom imports imaging

        return decode_dicom(data)
    with _open_checked(data) as (image, orientation):
        try:
            if image.format == "JPEG":
                image.draft("L", (min_size, min_size) if min_size else None)
            image.load()  # truncated or corrupt streams fail here
            if orientation in TRANSPOSE:
                return to_gray(image.transpose(TRANSPOSE[orientation]))
            return to_gray(image)
        except Exception as exc:  # a decoder's failure on client bytes is never a fault
            message = f"the image cannot be decoded ({type(exc).__name__})"
            raise ImageError("corrupt", message) from None


TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "YCbCr", "CMYK", "LAB", "HSV")


def colour_thumbnail(data: bytes, side: int = 64) -> np.ndarray | None:
    """A small (h, w, 3) uint8 RGB copy of a JPEG or PNG stored in colour, at most `side`
    px a side; None when the file is grayscale. A JPEG is decoded at 1/8 scale in the DCT
    (a colour check needs no detail), so this costs far less than the full decode."""
    with _open_checked(data) as (image, _):
        if image.mode not in COLOUR_MODES:
            return None
        try:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # the smallest DCT scale, 1/8
            image.load()
            thumbnail = image.convert("RGB")
            if max(thumbnail.size) > side:
                thumbnail.thumbnail((side, side))
            return np.asarray(thumbnail)
        except Exception as exc:  # a decoder's failure on client bytes is never a fault
            message = f"the image cannot be decoded ({type(exc).__name__})"
            raise ImageError("corrupt", message) from None


def _gray_and_thumbnail(
    image: Image.Image, orientation: int, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """`decode_gray`'s pixels of an opened colour image and its RGB thumbnail, one decode."""
    try:
        image.load()
        oriented = image.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else image
        thumbnail = image.convert("RGB")
        if max(thumbnail.size) > side:
            thumbnail.thumbnail((side, side))
        return to_gray(oriented), np.asarray(thumbnail)
    except Exception as exc:  # a decoder's failure on client bytes is never a fault
        message = f"the image cannot be decoded ({type(exc).__name__})"
        raise ImageError("corrupt", message) from None


def decode_with_colour(
    data: bytes, min_size: int | None = None, side: int = 64
) -> tuple[np.ndarray, np.ndarray | None]:
    """`decode_gray`'s pixels, and a small RGB copy (at most `side` px a side) when the file
    is stored in colour, else None: what serving's colour check needs, at the cost of one
    decode. A colour JPEG is decoded once as YCbCr: its Y plane is, bit for bit, the luma
    `decode_gray` gets; the thumbnail comes from a strided sample of all three planes. A
    colour PNG is decoded once, and both come from its pixels."""
    if is_dicom(data):
        return decode_gray(data, min_size), None
    with _open_checked(data) as (image, orientation):
        colour = image.mode in COLOUR_MODES
        single_pass = colour and image.format == "JPEG" and image.mode in ("RGB", "YCbCr")
        if colour and image.format != "JPEG":  # a colour PNG: decoded once for both
            return _gray_and_thumbnail(image, orientation, side)
        if single_pass:
            try:
                image.draft("YCbCr", (min_size, min_size) if min_size else None)
                image.load()
                if orientation in TRANSPOSE:
                    image = image.transpose(TRANSPOSE[orientation])
                planes = np.asarray(image)
            except Exception as exc:  # a decoder's failure on client bytes is never a fault
                message = f"the image cannot be decoded ({type(exc).__name__})"
                raise ImageError("corrupt", message) from None
    if not single_pass:
        return decode_gray(data, min_size), colour_thumbnail(data, side) if colour else None
    step = max(1, -(-max(planes.shape[:2]) // side))
    sample = np.ascontiguousarray(planes[::step, ::step][:, :, [0, 2, 1]])  # Y, Cr, Cb
    return np.ascontiguousarray(planes[:, :, 0]), cv2.cvtColor(sample, cv2.COLOR_YCrCb2RGB)
