"""The container walker: JPEG and PNG reduced to what decoding needs, with caps.

Pillow parses metadata in Python (EXIF directories, text and ICC chunks) and libjpeg
decodes every scan of a progressive JPEG in full. A small file can therefore cost minutes
or gigabytes before a pixel is seen. `sanitize` walks the container itself, with caps, and
hands Pillow only what decoding needs.
"""

from __future__ import annotations

import struct

from pneumonia.images.formats import ACCEPTED_FORMATS, ImageError

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
