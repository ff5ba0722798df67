"""What a DICOM file may cost, bounded from its bytes before any parser or decoder runs.

pydicom parses a whole data set (every element, every sequence item) and inflates a
deflated one in one piece; pixel decoders allocate from what a frame declares. A small
file can therefore cost seconds and gigabytes. The checks here read the structure
themselves, with caps, so that every DICOM request stays within about a second of CPU and a
few hundred MB:

- the file meta group is walked element by element (its group length is not trusted) for
  the transfer syntax and where the data set starts;
- a deflated data set is inflated in chunks, up to MAX_INFLATED bytes, before pydicom
  inflates it in one piece;
- the data set's elements are counted, sequence items and pixel fragments included, up to
  MAX_ELEMENTS, without reading a value;
- a compressed frame is checked against what its decoder would do with it: JPEG scans and
  marker segments (the caps of JPEG files), JPEG 2000 components, tiles and resolution
  levels (SIZ, COD), the size RLE expands to, and the least a lossless JPEG frame of its
  size can weigh.

Every refusal is an ImageError with the reason the endpoint maps to a status; no message
quotes a value of the file.
"""

from __future__ import annotations

import math
import re
import struct
import zlib

from pydicom.datadict import dictionary_VR

from pneumonia.images.formats import ImageError
from pneumonia.images.sanitize import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS

# The largest pixel data the size caps allow at 16 bits (two bytes a pixel, the most a
# projection radiograph stores) and room for the rest of the data set.
MAX_INFLATED = 2 * 25_000_000 + (8 << 20)
MAX_ELEMENTS = 20_000  # data elements, sequence items and fragments: a DX header has hundreds
MAX_META_BYTES = 64 << 10  # of the file meta group
MAX_J2K_TILES = 4_096
MAX_J2K_LEVELS = 12  # decomposition levels (Part 1 allows 32; encoders use 5 or 6)
JPEG_LOSSLESS_RATIO = 8  # pixels a byte at most: every sample costs at least one bit
MAX_JPEG_LS_RATIO = 256  # pixels a byte allowed in JPEG-LS (runs of black border compress)
MAX_RLE_OUTPUT = 24 << 20  # bytes an RLE frame may expand to: about 3500x3500 at 16 bits
INFLATE_CHUNK = 1 << 20

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
# VRs whose length field is 4 bytes after 2 reserved ones in explicit VR encodings.
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
SEGMENT_MARKERS = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")  # not RST, not stuffing


def _too_complex(what: str) -> ImageError:
    return ImageError("too_complex", f"the DICOM {what}")


def file_meta(data: bytes) -> tuple[str, int]:
    """(transfer syntax UID, where the data set starts) from the file meta group, walked
    element by element from byte 132 (explicit VR little endian, group 0002)."""
    position, syntax = 132, ""
    end = min(len(data), 132 + MAX_META_BYTES)
    while position + 8 <= end and data[position : position + 2] == b"\x02\x00":
        element = struct.unpack_from("<H", data, position + 2)[0]
        vr = data[position + 4 : position + 6]
        if vr in LONG_VRS:
            if position + 12 > end:
                break
            length, header = struct.unpack_from("<I", data, position + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, position + 6)[0], 8
        value = data[position + header : position + header + length]
        if element == 0x0010:  # (0002,0010) Transfer Syntax UID
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        position += header + length
    if not syntax or position > len(data):
        raise ImageError("corrupt", "the DICOM file meta has no readable transfer syntax")
    return syntax, position


def check_inflated(data: bytes, start: int) -> bytes:
    """The data set after `start`, inflated, refused once it passes MAX_INFLATED bytes.
    pydicom inflates it again from the original bytes: that inflation is then bounded too."""
    inflater, parts, total, pending = zlib.decompressobj(-zlib.MAX_WBITS), [], 0, data[start:]
    try:
        while pending:
            part = inflater.decompress(pending, INFLATE_CHUNK)
            total += len(part)
            if total > MAX_INFLATED:
                raise ImageError(
                    "too_large", f"the deflated DICOM inflates past {MAX_INFLATED:,} bytes"
                )
            parts.append(part)
            pending = inflater.unconsumed_tail
    except zlib.error:
        raise ImageError("corrupt", "the deflated DICOM data set cannot be inflated") from None
    return b"".join(parts)


def check_data_set(data: bytes) -> None:
    """Every bound that the Part 10 bytes decide before pydicom parses them: the file meta,
    the inflated size of a deflated data set, and the count of its elements."""
    syntax, start = file_meta(data)
    body = check_inflated(data, start) if syntax == DEFLATED else data[start:]
    count_elements(body, implicit=syntax == IMPLICIT_LITTLE, little=syntax != EXPLICIT_BIG)


def count_elements(body: bytes, implicit: bool, little: bool) -> int:
    """The data elements of a data set, sequence items and their elements and pixel
    fragments included, without reading a value; "too_complex" past MAX_ELEMENTS."""
    order = "<" if little else ">"
    position, count, fragments = 0, 0, False
    while position + 8 <= len(body):
        group, element = struct.unpack_from(f"{order}HH", body, position)
        tag = group << 16 | element
        count += 1
        if count > MAX_ELEMENTS:
            raise _too_complex(f"data set has more than {MAX_ELEMENTS:,} elements")
        if tag in (ITEM, ITEM_END, SEQUENCE_END):
            length = struct.unpack_from(f"{order}I", body, position + 4)[0]
            skip = fragments and tag == ITEM and length != UNDEFINED  # a fragment's bytes
            fragments = fragments and tag != SEQUENCE_END
            position += 8 + (length if skip else 0)  # an item's elements are walked
            continue
        vr, length, header = _element(body, position, order, implicit, tag)
        if length == UNDEFINED or vr == b"SQ":  # its items follow: walked
            fragments = tag == PIXEL_DATA
            position += header
            continue
        position += header + length
    return count


def _element(
    body: bytes, position: int, order: str, implicit: bool, tag: int
) -> tuple[bytes, int, int]:
    """(VR, value length, header bytes) of the element at `position`; in implicit VR, the
    VR is the data dictionary's (b"SQ" or b"")."""
    if implicit:
        length = struct.unpack_from(f"{order}I", body, position + 4)[0]
        try:
            vr = dictionary_VR(tag).encode()
        except KeyError:  # a private or unknown tag
            vr = b""
        return vr, length, 8
    vr = body[position + 4 : position + 6]
    if vr in LONG_VRS:
        if position + 12 > len(body):
            return vr, 0, len(body) - position  # ends inside the header: done
        return vr, struct.unpack_from(f"{order}I", body, position + 8)[0], 12
    return vr, struct.unpack_from(f"{order}H", body, position + 6)[0], 8


def check_jpeg_frame(frame: bytes, rows: int, columns: int, pixels_per_byte: int) -> None:
    """A JPEG (or JPEG-LS) frame within the caps of JPEG files: at most MAX_JPEG_SCANS scans
    (each decoded over the whole image) and MAX_JPEG_SEGMENTS marker segments; and heavy
    enough for its size: a lossless JPEG codes each sample in at least one bit (8 pixels a
    byte at most), JPEG-LS's run mode codes uniform runs in a few bits (MAX_JPEG_LS_RATIO
    pixels a byte is allowed); 0 skips that check (lossy JPEG)."""
    scans = frame.count(b"\xff\xda")  # FF DA cannot occur in entropy-coded data
    if scans > MAX_JPEG_SCANS:
        raise _too_complex(f"JPEG frame has {scans} scans; at most {MAX_JPEG_SCANS}")
    if len(SEGMENT_MARKERS.findall(frame)) > MAX_JPEG_SEGMENTS:
        raise _too_complex(f"JPEG frame has more than {MAX_JPEG_SEGMENTS:,} marker segments")
    if pixels_per_byte and len(frame) < rows * columns // pixels_per_byte:
        raise ImageError("corrupt", "the DICOM JPEG frame is too small to hold its pixels")


def check_jpeg2000_frame(frame: bytes) -> None:
    """One component, at most MAX_J2K_TILES tiles and MAX_J2K_LEVELS resolution levels, as
    the frame's SIZ and COD segments declare them."""
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if siz < 0 or siz + 42 > len(frame):
        raise ImageError("corrupt", "the DICOM JPEG 2000 frame has no SIZ segment")
    (x_size, y_size, x_offset, y_offset, x_tile, y_tile, x_tile_offset, y_tile_offset) = (
        struct.unpack_from(">8I", frame, siz + 8)
    )
    components = struct.unpack_from(">H", frame, siz + 40)[0]
    if components != 1:
        raise ImageError("colour", "the DICOM JPEG 2000 frame is not one gray component")
    if not x_tile or not y_tile:
        raise ImageError("corrupt", "the DICOM JPEG 2000 frame declares empty tiles")
    tiles = math.ceil((x_size - x_tile_offset) / x_tile) * math.ceil(
        (y_size - y_tile_offset) / y_tile
    )
    if tiles > MAX_J2K_TILES or x_offset >= x_size or y_offset >= y_size:
        raise _too_complex(f"JPEG 2000 frame has {tiles:,} tiles; at most {MAX_J2K_TILES:,}")
    cod = frame.find(b"\xff\x52", siz + 4, siz + 4096)
    if cod < 0 or cod + 10 > len(frame):
        raise ImageError("corrupt", "the DICOM JPEG 2000 frame has no COD segment")
    levels = frame[cod + 9]  # Lcod(2) Scod(1) SGcod(4), then SPcod's decomposition levels
    if levels > MAX_J2K_LEVELS:
        raise _too_complex(f"JPEG 2000 frame has {levels} levels; at most {MAX_J2K_LEVELS}")


def check_rle_output(rows: int, columns: int, bits_allocated: int) -> None:
    """The bytes an RLE frame expands to, at most MAX_RLE_OUTPUT: its decoder holds several
    copies of them."""
    size = rows * columns * max(1, bits_allocated // 8)
    if size > MAX_RLE_OUTPUT:
        raise ImageError(
            "too_large",
            f"the DICOM RLE frame expands to {size:,} bytes; the cap is {MAX_RLE_OUTPUT:,}",
        )
