"""Small hostile inputs: real JPEG and PNG files with one structure abused.

Each builder returns bytes a client could send. The tests assert how the
endpoint and ingest answer them; `benchmarks/hostile.py` measures what each
costs. They are built from files Pillow writes, then edited at the level of
JPEG markers, PNG chunks and TIFF (EXIF) directories.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from tests.images import encode, gradient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION = 0x0112


# ---------------------------------------------------------------- structure


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """[(type, payload)] of a well-formed PNG."""
    chunks, position = [], len(PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        chunks.append((kind, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def png_with(data: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG with `extra` chunks inserted right after IHDR."""
    chunks = png_chunks(data)
    out = PNG_SIGNATURE + png_chunk(*chunks[0])
    out += b"".join(png_chunk(kind, payload) for kind, payload in extra)
    return out + b"".join(png_chunk(kind, payload) for kind, payload in chunks[1:])


def jpeg_segments(data: bytes) -> list[bytes]:
    """A baseline or progressive JPEG cut into marker segments; a scan keeps its entropy data."""
    segments, position = [data[:2]], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append(data[position : position + 2])
            break
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        end = position + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not RSTn
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] not in (0x00, *range(0xD0, 0xD8)):
                    break
                end += 2
        segments.append(data[position:end])
        position = end
    return segments


def tiff_directory(entries: list[tuple[int, int, int, bytes]], block: bytes = b"") -> bytes:
    """A little-endian TIFF header and one IFD of (tag, type, count, value-or-offset) entries.

    `block` follows the IFD; an entry's 4-byte field is used as given, so entries
    can point anywhere, at the block or past the end.
    """
    header = b"II*\x00" + struct.pack("<I", 8)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, field in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + field.ljust(4, b"\x00")[:4]
    return header + ifd + struct.pack("<I", 0) + block


def block_offset(n_entries: int) -> int:
    """Where `block` starts inside a `tiff_directory` of n entries."""
    return 8 + 2 + 12 * n_entries + 4


# ---------------------------------------------------------------- payloads


def xray(size: int = 256) -> Image.Image:
    pixels = gradient(size, size)
    noise = np.random.default_rng(0).integers(0, 40, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels // 2 + noise)


def progressive_scan_bomb(repeats: int = 30_000) -> bytes:
    """A flat 2048 px progressive JPEG whose last (16-byte) scan is repeated `repeats` times."""
    flat = Image.fromarray(np.full((2048, 2048), 128, dtype=np.uint8))
    segments = jpeg_segments(encode(flat, "JPEG", quality=90, progressive=True))
    last_scan = max(i for i, s in enumerate(segments) if s[1] == 0xDA)
    return b"".join(segments[:last_scan] + [segments[last_scan]] * repeats + segments[-1:])


def exif_memory_bomb(tags: int = 1000, block_bytes: int = 1_000_000) -> bytes:
    """A PNG whose eXIf directory has `tags` entries all pointing at one large block."""
    offset = struct.pack("<I", block_offset(tags))
    entries = [(0x9000 + i, 7, block_bytes, offset) for i in range(tags)]  # UNDEFINED
    exif = tiff_directory(entries, bytes(block_bytes))
    return png_with(encode(xray(), "PNG"), [(b"eXIf", exif)])


def exif_cpu_bomb(tags: int = 2000, values: int = 30_000) -> bytes:
    """A PNG with an orientation tag and `tags` SHORT arrays of `values` sharing one block."""
    n_entries = tags + 1
    offset = struct.pack("<I", block_offset(n_entries))
    entries = [(ORIENTATION, 3, 1, struct.pack("<H", 6))]
    entries += [(0x9000 + i, 3, values, offset) for i in range(tags)]
    exif = tiff_directory(entries, bytes(2 * values))
    return png_with(encode(xray(), "PNG"), [(b"eXIf", exif)])


def jpeg_exif_malformed() -> bytes:
    """A JPEG whose EXIF has an orientation tag and a directory that points past its end."""
    exif = tiff_directory(
        [(ORIENTATION, 3, 1, struct.pack("<H", 6)), (0x8769, 4, 1, struct.pack("<I", 0xFFFFFF00))]
    )
    segments = jpeg_segments(encode(xray(64), "JPEG", quality=80))
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\x00\x00" + exif
    return b"".join([segments[0], app1, *segments[1:]])


def jpeg_exif_wrong_types() -> bytes:
    """A JPEG whose orientation tag is a RATIONAL pointing nowhere, among bogus counts."""
    exif = tiff_directory(
        [(ORIENTATION, 5, 3, struct.pack("<I", 0x7FFFFFF0)), (0x0100, 12, 0xFFFFFFF, b"\xff" * 4)]
    )
    segments = jpeg_segments(encode(xray(64), "JPEG", quality=80))
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\x00\x00" + exif
    return b"".join([segments[0], app1, *segments[1:]])


def png_oversized_ztxt() -> bytes:
    """A 2 kB zTXt chunk that inflates past Pillow's text limit (ValueError in Pillow)."""
    text = b"Comment\x00\x00" + zlib.compress(b"A" * 5_000_000, 9)
    return png_with(encode(xray(64), "PNG"), [(b"zTXt", text)])


def png_oversized_iccp() -> bytes:
    """An iCCP profile that inflates to 5 MB."""
    profile = b"icc\x00\x00" + zlib.compress(b"\x00" * 5_000_000, 9)
    return png_with(encode(xray(64), "PNG"), [(b"iCCP", profile)])


def png_truncated_ihdr() -> bytes:
    """A PNG whose IHDR chunk is cut short (its length says 13, fewer bytes follow)."""
    data = encode(xray(64), "PNG")
    return data[:8] + struct.pack(">I", 13) + b"IHDR" + data[16:24] + b"\x00" * 75


def png_many_chunks(count: int = 200_000) -> bytes:
    """200,000 empty tEXt chunks before the image data: about 3 MB of metadata."""
    return png_with(encode(xray(64), "PNG"), [(b"tEXt", b"k\x00")] * count)


def rgba_png_at_the_cap() -> bytes:
    """8192 x 3051 RGBA, all zero: under 100 kB, 100 MB once decoded."""
    return encode(Image.new("RGBA", (8192, 3051)), "PNG", optimize=True)


def other_format(format: str) -> Callable[[], bytes]:
    def build() -> bytes:
        image = xray(64).convert("RGB") if format in ("DDS", "JPEG2000") else xray(64)
        if format == "SPIDER":
            image = image.convert("F")
        if format == "XBM":
            image = image.convert("1")
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        return buffer.getvalue()

    return build


OTHER_FORMATS = ("PPM", "SGI", "IM", "XBM", "EPS", "JPEG2000", "DDS", "SPIDER", "TIFF", "BMP")

# name -> (builder, content type); every one must get a 200 or a 4xx JSON answer.
PAYLOADS: dict[str, tuple[Callable[[], bytes], str]] = {
    "progressive JPEG, 30,000 scans": (progressive_scan_bomb, "image/jpeg"),
    "PNG eXIf, 1,000 tags -> 1 MB block": (exif_memory_bomb, "image/png"),
    "PNG eXIf, 2,000 SHORT arrays + orientation": (exif_cpu_bomb, "image/png"),
    "JPEG EXIF, orientation + bad offset": (jpeg_exif_malformed, "image/jpeg"),
    "JPEG EXIF, orientation of the wrong type": (jpeg_exif_wrong_types, "image/jpeg"),
    "PNG zTXt inflating to 5 MB": (png_oversized_ztxt, "image/png"),
    "PNG iCCP inflating to 5 MB": (png_oversized_iccp, "image/png"),
    "PNG truncated IHDR": (png_truncated_ihdr, "image/png"),
    "PNG, 200,000 tEXt chunks": (png_many_chunks, "image/png"),
    "PNG RGBA 8192x3051 (at the cap)": (rgba_png_at_the_cap, "image/png"),
    **{f"{name} sent as an image": (other_format(name), "image/png") for name in OTHER_FORMATS},
}
