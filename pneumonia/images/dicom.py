"""DICOM Part 10 input: refused from its header, or decoded to the same (H, W) uint8 gray.

`read_dicom_header` parses the data set without reading the pixel data and applies
every refusal that the header can decide: size caps, multi-frame, colour, modality,
lateral view and an undecodable transfer syntax. `decode_dicom` applies the same
checks, checks a compressed frame's own header against Rows and Columns, decodes
with pydicom and renders for display in the order of DICOM PS3.3 C.11: stored
values -> Modality LUT -> VOI LUT -> Presentation LUT (INVERSE, MONOCHROME1) -> 8 bit.

Each compressed syntax has one chosen decoder (`PLUGINS`). GDCM, the only permissive
decoder here for JPEG lossless and JPEG-LS, aborts or segfaults on some corrupt
streams, so it runs in a child process capped in memory and time.

Privacy: a DICOM file carries patient data. No message raised here quotes a tag
value other than the transfer syntax, and pydicom never validates values on read
(its validation warnings quote the value): see `_quiet_pydicom`.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pneumonia.images.dicom_bounds import (
    JPEG_LOSSLESS_RATIO,
    MAX_JPEG_LS_RATIO,
    check_data_set,
    check_jpeg2000_frame,
    check_jpeg_frame,
    check_rle_output,
)
from pneumonia.images.formats import MAX_PIXELS, MAX_SIDE, ImageError, ImageHeader, is_dicom

# Projection radiographs: computed, digital (and the non-standard "DR" some vendors write).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "DR"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
# PS3.5 Age String (nnnD, nnnW, nnnM, nnnY), read leniently: 1 to 3 digits.
AGE_STRING = re.compile(r"(\d{1,3})\s*([DWMY])")
YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
# When PatientAge is absent: the birth date against the first of these dates.
EXAM_DATES = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Transfer syntaxes accepted, each with the pydicom decoding plugin that decodes it (all
# permissively licensed; pylibjpeg-libjpeg, GPL, is not to be installed). Native syntaxes
# need none.
NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
JPEG_SYNTAXES = frozenset(
    {
        JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50
        JPEGExtended12Bit,  # .51
        JPEGLossless,  # .57
        JPEGLosslessSV1,  # .70
        JPEGLSLossless,  # .80
        JPEGLSNearLossless,  # .81
    }
)
JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})  # .90, .91
PLUGINS = {
    RLELossless: "pylibjpeg",  # pylibjpeg-rle (Rust)
    JPEGBaseline8Bit: "pillow",  # libjpeg-turbo, as for JPEG files
    JPEGExtended12Bit: "pillow",  # 8-bit samples only (see _decodable)
    JPEG2000Lossless: "pylibjpeg",  # pylibjpeg-openjpeg
    JPEG2000: "pylibjpeg",
    JPEGLossless: "gdcm",  # python-gdcm, in a child process (see _decode_in_child)
    JPEGLosslessSV1: "gdcm",
    JPEGLSLossless: "gdcm",  # GDCM bundles CharLS
    JPEGLSNearLossless: "gdcm",
}
# Plugins that can crash the process on corrupt input: run in a capped child process.
ISOLATED_PLUGINS = frozenset({"gdcm"})
CHILD_TIMEOUT_S = 5  # wall clock, start-up included
CHILD_CPU_S = 2  # RLIMIT_CPU: the decode's share of a request's budget, imports included
CHILD_MEMORY_BYTES = 1 << 30  # RLIMIT_AS: address space, not resident memory
# Elements above this size (the pixel data) are not read until they are used.
DEFER_SIZE = 4096
# Attributes without which the pixel data cannot be interpreted.
REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelData",
)
# Without a VOI transform, images of more than 8 bits are windowed to these percentiles.
PERCENTILES = (0.5, 99.5)
# Widest span of stored values that is histogrammed (an exact percentile in one pass).
MAX_HISTOGRAM_SPAN = 1 << 20
# Marker segments walked in a compressed frame's first fragment before its frame header.
MAX_CODESTREAM_SEGMENTS = 1_000
# JPEG frame headers: SOF0..SOF15 less DHT (C4), JPG (C8) and DAC (CC); JPEG-LS SOF55 (F7).
FRAME_MARKERS = frozenset({*range(0xC0, 0xD0), 0xF7} - {0xC4, 0xC8, 0xCC})


def _quiet_pydicom() -> None:
    """Turn off pydicom's value validation on read, process-wide.

    Its warnings ("Invalid value for VR DA: '...'") quote the element's value, and
    would carry patient data into logs. The pixel data is still checked here.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


_quiet_pydicom()


def read_dicom_header(data: bytes) -> ImageHeader:
    """Format "DICOM", Columns, Rows and the photometric interpretation, without reading
    pixel data; refuses (ImageError) what the header alone shows cannot be used."""
    return _checked_header(_parse(data))


def decode_dicom(data: bytes) -> np.ndarray:
    """Decode a single-frame grayscale DICOM to (H, W) uint8 for display.

    Stored values -> Modality LUT (rescale or LUT sequence) -> VOI LUT (the first
    window, or the VOI LUT sequence; else the stored range up to 8 bits stored and
    a 0.5..99.5 percentile window above) -> INVERSE and MONOCHROME1 each invert ->
    rounded to 8 bits.
    """
    dataset = _parse(data)
    _checked_header(dataset)
    stored = _stored_pixels(dataset, data)
    values = _modality_values(stored, dataset)
    display = _voi(values, stored, dataset)
    if _inverted(dataset):
        np.subtract(np.float32(255.0), display, out=display)
    np.nan_to_num(display, copy=False, nan=0.0)  # only from absurd rescale values
    return np.rint(display, out=display).astype(np.uint8)


# ---------------------------------------------------------------- the header


def _parse(data: bytes) -> Dataset:
    """The data set, its large elements (the pixel data) left unread."""
    if not is_dicom(data):
        raise ImageError("not_an_image", "the bytes are not a DICOM Part 10 file")
    check_data_set(data)  # deflate bombs and element floods, before pydicom parses
    try:
        return pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_SIZE, force=False)
    except Exception:  # any failure to parse is the input's fault
        raise ImageError("corrupt", "the DICOM data set cannot be parsed") from None


def _checked_header(dataset: Dataset) -> ImageHeader:
    """Every refusal the header decides, in order; the header of an acceptable image."""
    _check_required(dataset)
    rows, columns = _check_size(dataset)
    _check_frames(dataset)
    photometric = _check_grayscale(dataset)
    _check_modality(dataset)
    _check_view(dataset)
    _check_transfer_syntax(dataset)
    return ImageHeader("DICOM", columns, rows, photometric, patient_age_years(dataset))


def patient_age_years(dataset: Dataset) -> float | None:
    """The patient's age at the exam, in years: PatientAge, else the exam date less
    PatientBirthDate; None when neither can be read (an unreadable value refuses nothing)."""
    match = AGE_STRING.fullmatch(_optional_text(dataset, "PatientAge") or "")
    if match:
        return int(match.group(1)) * YEARS_PER_UNIT[match.group(2)]
    born = _date(dataset, "PatientBirthDate")
    exam = next((day for key in EXAM_DATES if (day := _date(dataset, key)) is not None), None)
    if born is None or exam is None or exam < born:
        return None
    return (exam - born).days / 365.25


def _optional_text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
        return None if value is None else _text(value)
    except Exception:  # a malformed optional element is unknown, not a refusal
        return None


def _date(dataset: Dataset, keyword: str) -> datetime.date | None:
    text = _optional_text(dataset, keyword)
    try:
        return datetime.datetime.strptime((text or "")[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _value(dataset: Dataset, keyword: str, convert: Callable[[Any], Any]) -> Any:
    """`convert` of the element's first value, None when absent or empty; a value that
    cannot be read is "corrupt" (the message names the attribute, never its value)."""
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, MultiValue | list | tuple):
            value = value[0]
        return convert(value)
    except Exception:
        raise ImageError("corrupt", f"the DICOM {keyword} cannot be read") from None


def _text(value: Any) -> str:
    return str(value).strip().upper()


def _check_required(dataset: Dataset) -> None:
    missing = [keyword for keyword in REQUIRED if keyword not in dataset]
    if missing:
        raise ImageError("corrupt", f"the DICOM file has no {', '.join(missing)}")
    bits_allocated = _value(dataset, "BitsAllocated", int)
    bits_stored = _value(dataset, "BitsStored", int)
    if bits_allocated not in (1, 8, 16, 32) or not 1 <= (bits_stored or 0) <= bits_allocated:
        raise ImageError("corrupt", "the DICOM BitsAllocated or BitsStored is not usable")
    if _value(dataset, "PixelRepresentation", int) not in (0, 1):
        raise ImageError("corrupt", "the DICOM PixelRepresentation is neither 0 nor 1")


def _check_size(dataset: Dataset) -> tuple[int, int]:
    rows, columns = _value(dataset, "Rows", int), _value(dataset, "Columns", int)
    if not rows or not columns or rows < 1 or columns < 1:
        raise ImageError("corrupt", "the DICOM image declares no pixels")
    if max(rows, columns) > MAX_SIDE or rows * columns > MAX_PIXELS:
        raise ImageError(
            "too_large",
            f"the DICOM image is over the cap of {MAX_PIXELS:,} pixels or {MAX_SIDE} px a side",
        )
    return rows, columns


def _check_frames(dataset: Dataset) -> None:
    frames = _value(dataset, "NumberOfFrames", int)
    if frames is not None and frames > 1:
        raise ImageError("multi_frame", "the DICOM has several frames; send one radiograph")


def _check_grayscale(dataset: Dataset) -> str:
    samples = _value(dataset, "SamplesPerPixel", int)
    photometric = _value(dataset, "PhotometricInterpretation", _text)
    if samples != 1 or photometric not in GRAYSCALE:
        raise ImageError(
            "colour", "the DICOM image is not grayscale (MONOCHROME1 or MONOCHROME2, 1 sample)"
        )
    return str(photometric)


def _check_modality(dataset: Dataset) -> None:
    modality = _value(dataset, "Modality", _text)
    if modality is not None and modality not in PROJECTION_MODALITIES:
        raise ImageError(
            "wrong_modality",
            "the DICOM Modality is not a projection radiograph (CR, DX or DR)",
        )


def _check_view(dataset: Dataset) -> None:
    if _value(dataset, "ViewPosition", _text) in LATERAL_VIEWS:
        raise ImageError(
            "lateral_view", "the DICOM ViewPosition is a lateral view; send a frontal (PA/AP)"
        )


def _check_transfer_syntax(dataset: Dataset) -> None:
    syntax = _transfer_syntax(dataset)
    if not _decoder_installed(syntax):
        raise _unsupported(syntax, "")
    if not _depth_supported(syntax, _value(dataset, "BitsStored", int)):
        raise _unsupported(syntax, " at this bit depth")


def _unsupported(syntax: UID, qualifier: str) -> ImageError:
    name = syntax.name if syntax.name != str(syntax) else "an unknown transfer syntax"
    message = f"the DICOM transfer syntax {name} ({syntax}) cannot be decoded here{qualifier}"
    return ImageError("unsupported_transfer_syntax", message)


def _decoder_installed(syntax: UID) -> bool:
    """Native, or a compressed syntax whose chosen (permissive) plugin is installed."""
    if syntax in NATIVE_SYNTAXES:
        return True
    return syntax in PLUGINS and PLUGINS[syntax] in get_decoder(syntax).available_plugins


def _depth_supported(syntax: UID, bits_stored: int) -> bool:
    """The depths the chosen plugins refuse, known from the header."""
    if syntax == JPEGExtended12Bit:  # 12-bit samples: only pylibjpeg-libjpeg (GPL) decodes
        return bits_stored == 8
    if syntax in (JPEGLSLossless, JPEGLSNearLossless):  # GDCM (CharLS) refuses 6 and 7
        return bits_stored not in (6, 7)
    return True


def _transfer_syntax(dataset: Dataset) -> UID:
    """The file meta's Transfer Syntax UID; one that is missing or malformed is "corrupt"."""
    try:
        syntax = UID(dataset.file_meta.get("TransferSyntaxUID"))
    except Exception:  # absent (None), or not text
        syntax = None
    if syntax is None or not syntax.is_valid:
        raise ImageError("corrupt", "the DICOM transfer syntax UID is missing or malformed")
    return syntax


# ---------------------------------------------------------------- the pixels


def _stored_pixels(dataset: Dataset, data: bytes) -> np.ndarray:
    """The stored values, (Rows, Columns); a decoder's failure is "corrupt"."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    syntax = _transfer_syntax(dataset)
    if syntax.is_encapsulated:
        _check_codestream(dataset, syntax, rows, columns)
    plugin = PLUGINS.get(syntax, "")
    pixels = (
        _decode_in_child(data, plugin) if plugin in ISOLATED_PLUGINS else _decode(dataset, plugin)
    )
    if pixels.ndim != 2 or pixels.shape != (rows, columns) or pixels.dtype.kind not in "iu":
        raise ImageError("corrupt", "the DICOM pixel data does not match Rows and Columns")
    return pixels


def _decode(dataset: Dataset, plugin: str) -> np.ndarray:
    """pydicom's pixel_array, with `plugin` for compressed data, in this process."""
    try:
        if plugin:
            dataset.pixel_array_options(decoding_plugin=plugin)
        return np.asarray(dataset.pixel_array)
    except BaseException as exc:  # a decoder's failure on client bytes is never a fault
        # pylibjpeg-rle's out-of-bounds panics (pyo3 PanicException) are BaseExceptions.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        message = f"the DICOM pixel data cannot be decoded ({type(exc).__name__})"
        raise ImageError("corrupt", message) from None


# Run by `_decode_in_child`: argv[1] the plugin, argv[2] the address-space cap in bytes,
# argv[3] the CPU-seconds cap; the Part 10 bytes on stdin, the stored values (.npy) on stdout.
_CHILD = """
import io, resource, sys
for limit, value in ((resource.RLIMIT_AS, sys.argv[2]), (resource.RLIMIT_CPU, sys.argv[3])):
    try:
        resource.setrlimit(limit, (int(value), int(value)))
    except (ValueError, OSError):  # not enforceable on every platform (macOS)
        pass
try:
    import numpy as np
    import pydicom
    from pydicom import config
except ImportError:
    sys.exit(3)
config.settings.reading_validation_mode = config.IGNORE
try:
    dataset = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read()), force=False)
    dataset.pixel_array_options(decoding_plugin=sys.argv[1])
    pixels = dataset.pixel_array
except Exception:
    sys.exit(2)
buffer = io.BytesIO()  # numpy 2.4 cannot np.save to a pipe (tofile needs a position)
np.save(buffer, pixels, allow_pickle=False)
sys.stdout.buffer.write(buffer.getvalue())
"""
CHILD_CANNOT_IMPORT = 3


def _decode_in_child(data: bytes, plugin: str) -> np.ndarray:
    """Decode in a child process, capped in memory and time: GDCM aborts or segfaults on
    some corrupt JPEG lossless and JPEG-LS streams, which must cost a refusal, not the
    process. Its output (which may echo decoder messages) is discarded."""
    command = [
        sys.executable,
        "-P",
        "-c",
        _CHILD,
        plugin,
        str(CHILD_MEMORY_BYTES),
        str(CHILD_CPU_S),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        result = subprocess.run(
            command, input=data, capture_output=True, timeout=CHILD_TIMEOUT_S, env=environment
        )
    except subprocess.TimeoutExpired:
        message = f"the DICOM pixel data did not decode within {CHILD_TIMEOUT_S} s"
        raise ImageError("corrupt", message) from None
    if result.returncode == CHILD_CANNOT_IMPORT:  # the deployment's fault, not the input's
        raise RuntimeError("the DICOM decoder process cannot import numpy and pydicom")
    if result.returncode != 0:
        failure = "crashed" if result.returncode < 0 else "failed"
        raise ImageError("corrupt", f"the DICOM pixel data cannot be decoded (decoder {failure})")
    try:
        return np.asarray(np.load(io.BytesIO(result.stdout), allow_pickle=False))
    except Exception:
        raise ImageError("corrupt", "the DICOM decoder returned no pixels") from None


def _check_codestream(dataset: Dataset, syntax: UID, rows: int, columns: int) -> None:
    """A compressed frame declares its own size: it must be Rows x Columns, so that no
    decoder allocates for a size the header caps never saw; and its structure must be
    within what its decoder can do in the request's budget (`dicom_bounds`)."""
    if syntax == RLELossless:  # decoded into Rows x Columns
        check_rle_output(rows, columns, _value(dataset, "BitsAllocated", int))
        return
    try:
        frame = next(generate_fragmented_frames(dataset.PixelData, number_of_frames=1))
    except Exception:
        raise ImageError("corrupt", "the DICOM encapsulated pixel data is malformed") from None
    first = frame[0] if frame else b""
    size = _jpeg2000_size(first) if syntax in JPEG2000_SYNTAXES else _jpeg_size(first)
    if size != (columns, rows):
        raise ImageError(
            "corrupt", "the DICOM compressed frame's size does not match Rows and Columns"
        )
    if syntax in JPEG2000_SYNTAXES:
        check_jpeg2000_frame(first)
    else:
        ratio = {
            JPEGLossless: JPEG_LOSSLESS_RATIO,
            JPEGLosslessSV1: JPEG_LOSSLESS_RATIO,
            JPEGLSLossless: MAX_JPEG_LS_RATIO,
            JPEGLSNearLossless: MAX_JPEG_LS_RATIO,
        }.get(syntax, 0)
        check_jpeg_frame(b"".join(frame), rows, columns, ratio)


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or JPEG-LS frame header (SOFn, SOF55); None if none."""
    if stream[:2] != b"\xff\xd8":
        return None
    position = 2
    for _ in range(MAX_CODESTREAM_SEGMENTS):
        while stream[position : position + 2] == b"\xff\xff":  # fill bytes
            position += 1
        if position + 9 > len(stream) or stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        if marker in FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", stream, position + 5)
            return width, height
        if marker == 0xDA:  # a scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", stream, position + 2)
        position += 2 + length
    return None


def _jpeg2000_size(stream: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 SIZ segment (bare or in a JP2 box); None if none."""
    position = stream.find(b"\xff\x4f\xff\x51", 0, 4096)
    if position < 0 or position + 24 > len(stream):
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack_from(">IIII", stream, position + 8)
    return x_size - x_offset, y_size - y_offset


def _rescale(dataset: Dataset) -> tuple[float, float]:
    slope = _value(dataset, "RescaleSlope", float)
    intercept = _value(dataset, "RescaleIntercept", float)
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise ImageError("corrupt", "the DICOM RescaleSlope or RescaleIntercept is not usable")
    return slope, intercept


def _modality_values(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """PS3.3 C.11.1: the Modality LUT Sequence, else RescaleSlope and RescaleIntercept;
    float32, a new array."""
    if "ModalityLUTSequence" in dataset:
        try:
            return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)
        except Exception:
            raise ImageError("corrupt", "the DICOM Modality LUT Sequence is not usable") from None
    slope, intercept = _rescale(dataset)
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _voi(values: np.ndarray, stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """PS3.3 C.11.2, to float32 in [0, 255], in place: the first window, else the VOI LUT
    Sequence, else the stored range (<= 8 bits stored) or a percentile window."""
    window = _window(dataset)
    if window is not None:
        center, width = window
        function = _value(dataset, "VOILUTFunction", _text) or "LINEAR"
        return WINDOW_FUNCTIONS.get(function, _linear)(values, center, width)
    if "VOILUTSequence" in dataset:
        return _voi_lut_sequence(values, dataset)
    low, high = _default_range(values, stored, dataset)
    return _stretch(values, low, high)


def _window(dataset: Dataset) -> tuple[float, float] | None:
    """The first (WindowCenter, WindowWidth); None when absent or unusable."""
    try:
        center = _value(dataset, "WindowCenter", float)
        width = _value(dataset, "WindowWidth", float)
    except ImageError:  # an unreadable window is no window
        return None
    if center is None or width is None or not np.isfinite(center) or not width >= 1:
        return None
    return center, width


def _linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped to [0, 255]."""
    if width == 1:  # a threshold at c - 0.5
        return np.where(values > center - 0.5, np.float32(255.0), np.float32(0.0))
    scale = 255.0 / (width - 1)
    return _affine(values, scale, (0.5 - (center - 0.5) / (width - 1)) * 255.0)


def _linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """C.11.2.1.3.2: y = ((x - c) / w + 0.5) * 255, clipped to [0, 255]."""
    return _affine(values, 255.0 / width, (0.5 - center / width) * 255.0)


def _sigmoid(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """C.11.2.1.3.1: y = 255 / (1 + exp(-4 (x - c) / w))."""
    exponent = np.clip((values - np.float32(center)) * np.float32(-4.0 / width), -80, 80)
    return (255.0 / (1.0 + np.exp(exponent))).astype(np.float32)


WINDOW_FUNCTIONS = {"LINEAR": _linear, "LINEAR_EXACT": _linear_exact, "SIGMOID": _sigmoid}


def _affine(values: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """scale * values + offset clipped to [0, 255], in place."""
    values *= np.float32(scale)
    values += np.float32(offset)
    return np.clip(values, 0.0, 255.0, out=values)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] linearly to [0, 255], clipped, in place."""
    span = high - low if high > low else 1.0
    return _affine(values, 255.0 / span, -low * 255.0 / span)


def _voi_lut_sequence(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The first VOI LUT (C.11.2.1.1), its output range (LUTDescriptor's bits) scaled to
    [0, 255]. Looked up here: pydicom 3.0's `apply_voi` indexes an 8-bit LUT through
    uint8, wrapping any value over 255."""
    try:
        item = dataset.VOILUTSequence[0]
        entries, first, bits = (int(value) for value in item.LUTDescriptor)
        table = _lut_data(item, entries or 65536, dataset.original_encoding[1] is not False)
    except Exception:
        raise ImageError("corrupt", "the DICOM VOI LUT Sequence is not usable") from None
    if bits < 1 or bits > 16:
        raise ImageError("corrupt", "the DICOM VOI LUT Sequence is not usable")
    values -= np.float32(first)
    np.clip(np.rint(values, out=values), 0, table.size - 1, out=values)
    output = table[values.astype(np.intp)]
    return _stretch(output, 0.0, float(2**bits - 1))


def _lut_data(item: Dataset, entries: int, little_endian: bool) -> np.ndarray:
    """LUT Data as float32 entries: US values, or OW words in the data set's byte order."""
    element = item["LUTData"]
    if isinstance(element.value, bytes):
        table = np.frombuffer(element.value, dtype="<u2" if little_endian else ">u2")
    else:
        table = np.asarray(element.value, dtype=np.float64).reshape(-1)
    if table.size < entries:
        raise ValueError("fewer LUT entries than the descriptor declares")
    return table[:entries].astype(np.float32)


def _default_range(values: np.ndarray, stored: np.ndarray, dataset: Dataset) -> tuple[float, float]:
    """Without a VOI transform: the full stored range through the Modality LUT when
    BitsStored <= 8, otherwise the 0.5..99.5 percentiles of the image's values."""
    bits = int(dataset.BitsStored)
    if bits <= 8:
        signed = int(dataset.PixelRepresentation) == 1
        ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    elif "ModalityLUTSequence" in dataset or not np.issubdtype(stored.dtype, np.integer):
        low, high = np.percentile(values, PERCENTILES)
        return float(low), float(high)
    else:  # rescaling is monotonic: the stored values' percentiles, rescaled
        ends = _integer_percentiles(stored)
    mapped = _modality_values(ends, dataset)
    return float(mapped.min()), float(mapped.max())


def _integer_percentiles(stored: np.ndarray) -> np.ndarray:
    """np.percentile(stored, PERCENTILES) (linear interpolation) from a histogram: one
    pass over the pixels instead of a partial sort."""
    flat = stored.ravel()
    offset, top = int(flat.min()), int(flat.max())
    if top - offset > MAX_HISTOGRAM_SPAN:
        return np.percentile(flat, PERCENTILES)
    shifted = flat if offset == 0 else flat.astype(np.int64) - offset
    cumulative = np.cumsum(np.bincount(shifted, minlength=top - offset + 1))
    positions = np.array(PERCENTILES) / 100.0 * (flat.size - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, flat.size - 1)
    low_values = np.searchsorted(cumulative, lower, side="right")
    high_values = np.searchsorted(cumulative, upper, side="right")
    fraction = positions - lower
    return offset + low_values + fraction * (high_values - low_values)


def _inverted(dataset: Dataset) -> bool:
    """PS3.3 C.11.6: Presentation LUT Shape INVERSE and MONOCHROME1 each invert."""
    inverse = _value(dataset, "PresentationLUTShape", _text) == "INVERSE"
    monochrome1 = _value(dataset, "PhotometricInterpretation", _text) == "MONOCHROME1"
    return inverse != monochrome1
