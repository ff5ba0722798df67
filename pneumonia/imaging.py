"""The one image-preparation path, used by the preprocess stage and by serving.

`prepare_image` turns encoded bytes or a decoded array of any size, bit depth
and mode into the model's input: a square (S, S, 1) uint8 image. Per-image
standardisation happens inside the model, so the exported graph carries it.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

# Formats the pipeline and the endpoint accept; anything else is rejected.
ACCEPTED_FORMATS = ("JPEG", "PNG")
# Caps checked from the header, before any pixel is decoded.
MAX_PIXELS = 25_000_000
MAX_SIDE = 8192

Intensity = Literal["none", "equalize", "clahe"]


class ImageError(ValueError):
    """An input that is not a usable image; `reason` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        """`reason` picks the HTTP status and the quarantine entry; `message` explains."""
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """Format, size and mode, as read from the header before decoding."""

    format: str
    width: int
    height: int
    mode: str


class PreprocessConfig(BaseModel):
    """What `prepare_image` needs: params.yaml's `preprocess` section, and model.json's
    `preprocessing` block for serving. Strict: a missing, unknown or mistyped key fails."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    image_size: int = Field(ge=16, le=1024)  # square side in px fed to the model
    intensity: Intensity
    clahe_clip_limit: float = Field(gt=0, allow_inf_nan=False)
    clahe_tile_grid: int = Field(ge=1, le=64)


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    return data[128:132] == b"DICM"


def read_header(data: bytes) -> ImageHeader:
    """Identify the format and size from the header alone, without decoding pixels."""
    if is_dicom(data):  # pydicom is imported for DICOM files only
        from pneumonia.dicom import read_dicom_header  # here: pneumonia.dicom imports imaging

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
        from pneumonia.dicom import decode_dicom  # here: pneumonia.dicom imports imaging

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


# ---------------------------------------------------------------- sanitising
#
# Pillow parses metadata in Python (EXIF directories, text and ICC chunks) and
# libjpeg decodes every scan of a progressive JPEG in full. A small file can
# therefore cost minutes or gigabytes before a pixel is seen. `sanitize` walks
# the container itself, with caps, and hands Pillow only what decoding needs.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change the decoded pixels; every other chunk (text, ICC, EXIF,
# animation, private) is dropped before Pillow sees the file.
PNG_KEPT_CHUNKS = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")
MAX_PNG_CHUNKS = 20_000
# Progressive JPEGs use about 10 scans; each scan is decoded over the whole image.
MAX_JPEG_SCANS = 32
MAX_JPEG_SEGMENTS = 2_000
# JPEG APPn segments that change the decoded pixels: JFIF (APP0), Adobe colour transform (APP14).
JPEG_KEPT_APP = (0xE0, 0xEE)
MAX_EXIF_ENTRIES = 1_000
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Magic numbers of formats that are images but not accepted, for a 415 instead of a 400.
OTHER_FORMATS = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"GIF8", "GIF"),
    (0, b"RIFF", "WEBP"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (128, b"DICM", "DICOM"),
    (4, b"ftyp", "HEIF/AVIF"),
    (0, b"DDS ", "DDS"),
    (0, b"\x01\xda", "SGI"),
    (0, b"8BPS", "PSD"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"Image type", "IM"),
    (0, b"#define", "XBM"),
    (0, b"qoif", "QOI"),
)


def sanitize(data: bytes) -> tuple[str, bytes, int]:
    """(format, bytes for the decoder, EXIF orientation) of a JPEG or PNG, from its structure.

    Rejects other formats and abusive structure (too many scans, segments or
    chunks, truncated headers) before anything is decoded. The EXIF orientation
    is read here from the first directory, within its bounds; the metadata
    itself is not passed on. Malformed metadata counts as none.
    """
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":
        clean, orientation = _sanitize_jpeg(data)
        return "JPEG", clean, orientation
    if data[: len(PNG_SIGNATURE)] == PNG_SIGNATURE:
        clean, orientation = _sanitize_png(data)
        return "PNG", clean, orientation
    for offset, magic, name in OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            raise ImageError(
                "unsupported_format",
                f"format {name} is not accepted (use {' or '.join(ACCEPTED_FORMATS)})",
            )
    if data[:1] == b"P" and data[1:2] in b"1234567" and len(data) > 2:
        raise ImageError("unsupported_format", "format PPM/PGM is not accepted (use JPEG or PNG)")
    raise ImageError("not_an_image", "the bytes are not a recognised image")


def _sanitize_jpeg(data: bytes) -> tuple[bytes, int]:
    """Keep the segments decoding needs; count scans; read the orientation from EXIF."""
    kept = [data[:2]]
    exif: bytes | None = None  # the first EXIF block counts, as in Pillow
    scans, segments, position = 0, 0, 2
    while (position := _next_marker(data, position)) + 1 < len(data):
        marker = data[position + 1]
        if marker == 0xD9:  # EOI: anything after it is ignored
            kept.append(b"\xff\xd9")
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            kept.append(data[position : position + 2])
            position += 2
            continue
        segments += 1
        end = _segment_end(data, position, segments)
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                message = f"the JPEG has over {MAX_JPEG_SCANS} scans (progressive passes)"
                raise ImageError("too_complex", message)
            end = _entropy_end(data, end)
        if _is_exif(data, position, marker):
            exif = data[position + 10 : end] if exif is None else exif
        elif _needed_to_decode(marker):
            kept.append(data[position:end])
        position = end
    return b"".join(kept), 1 if exif is None else exif_orientation(exif)


def _next_marker(data: bytes, position: int) -> int:
    """The offset of the marker at `position`, past any fill bytes (len(data) at the end)."""
    if position >= len(data):  # no EOI: libjpeg decides what a truncated stream gives
        return len(data)
    if data[position] != 0xFF:
        raise ImageError("corrupt", "the JPEG has bytes between its segments")
    while position + 1 < len(data) and data[position + 1] == 0xFF:  # fill bytes
        position += 1
    return position


def _segment_end(data: bytes, position: int, segments: int) -> int:
    """The end of the marker segment at `position`, within the caps and the file."""
    if position + 4 > len(data):
        raise ImageError("corrupt", "the JPEG ends inside a segment header")
    if segments > MAX_JPEG_SEGMENTS:
        raise ImageError("corrupt", f"the JPEG has over {MAX_JPEG_SEGMENTS:,} segments")
    (length,) = struct.unpack_from(">H", data, position + 2)
    end = position + 2 + length
    if length < 2 or end > len(data):
        raise ImageError("corrupt", "a JPEG segment runs past the end of the file")
    return end


def _is_exif(data: bytes, position: int, marker: int) -> bool:
    return marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00"


def _needed_to_decode(marker: int) -> bool:
    """Frame, tables, scans, JFIF and Adobe: yes; other application data and comments: no."""
    return not ((0xE0 <= marker <= 0xEF and marker not in JPEG_KEPT_APP) or marker == 0xFE)


def _entropy_end(data: bytes, position: int) -> int:
    """The offset of the first marker after a scan's entropy-coded data (or the end)."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def _sanitize_png(data: bytes) -> tuple[bytes, int]:
    """Keep the chunks that make the pixels; read the orientation from eXIf."""
    kept = [PNG_SIGNATURE]
    orientation, count, position, seen_exif = 1, 0, len(PNG_SIGNATURE), False
    while position < len(data):
        if position + 8 > len(data):
            raise ImageError("corrupt", "the PNG ends inside a chunk header")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data) and kind != b"IDAT":
            raise ImageError("corrupt", f"the PNG's {kind!r} chunk runs past the end of the file")
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise ImageError("too_complex", f"the PNG has over {MAX_PNG_CHUNKS:,} chunks")
        if count == 1 and (kind != b"IHDR" or length != 13):
            raise ImageError("corrupt", "the PNG does not start with a 13-byte IHDR chunk")
        if kind in PNG_KEPT_CHUNKS:
            kept.append(data[position:end])
        elif kind == b"eXIf" and not seen_exif:
            orientation = exif_orientation(data[position + 8 : position + 8 + length])
            seen_exif = True
        position = end
        if kind == b"IEND":
            break
    return b"".join(kept), orientation


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (1..8) of EXIF's first directory; 1 when absent or malformed.

    Reads at most MAX_EXIF_ENTRIES entries of one directory and nothing they
    point to: the cost is bounded whatever the block declares.
    """
    if tiff[:4] in (b"II*\x00", b"MM\x00*"):
        order = "<" if tiff[:2] == b"II" else ">"
    else:
        return 1
    try:
        (first,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, first)
        for index in range(min(entries, MAX_EXIF_ENTRIES)):
            tag, kind, count = struct.unpack_from(order + "HHI", tiff, first + 2 + 12 * index)
            if tag == 0x0112:
                if kind != 3 or count < 1:
                    return 1
                (value,) = struct.unpack_from(order + "H", tiff, first + 2 + 12 * index + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:  # an offset past the end of the block
        return 1
    return 1


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


def decode_with_colour(
    data: bytes, min_size: int | None = None, side: int = 64
) -> tuple[np.ndarray, np.ndarray | None]:
    """`decode_gray`'s pixels, and a small RGB copy (at most `side` px a side) when the file
    is stored in colour, else None: what serving's colour check needs, at the cost of one
    decode. A colour JPEG is decoded once as YCbCr: its Y plane is, bit for bit, the luma
    `decode_gray` gets; the thumbnail comes from a strided sample of all three planes."""
    if is_dicom(data):
        return decode_gray(data, min_size), None
    with _open_checked(data) as (image, orientation):
        colour = image.mode in COLOUR_MODES
        single_pass = colour and image.format == "JPEG" and image.mode in ("RGB", "YCbCr")
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
