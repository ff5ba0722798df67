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


# ---------------------------------------------------------------- DICOM

DX = b"1.2.840.10008.5.1.4.1.1.1.1\x00"  # Digital X-Ray Image Storage - For Presentation


def dicom_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def dicom_file(
    syntax: bytes, body: bytes, group_length: int | None = None, version_bytes: int = 2
) -> bytes:
    """Preamble, DICM and a file meta group (its length as given, or the true one), then
    `body` as the data set."""
    rest = (
        dicom_element(2, 0x0001, b"OB", b"\x00\x01".ljust(version_bytes, b"\x00"))
        + dicom_element(2, 0x0002, b"UI", DX)
        + dicom_element(2, 0x0003, b"UI", b"1.2.3.4\x00")
        + dicom_element(2, 0x0010, b"UI", syntax + b"\x00" * (len(syntax) % 2))
    )
    length = len(rest) if group_length is None else group_length
    meta = dicom_element(2, 0, b"UL", struct.pack("<I", length)) + rest
    return b"\x00" * 128 + b"DICM" + meta + body


DEFLATED = b"1.2.840.10008.1.2.1.99"
EXPLICIT = b"1.2.840.10008.1.2.1"


def deflate_stream(parts, chunk: bytes = b"", repeats: int = 0) -> bytes:
    """Raw deflate of `parts` then `chunk` `repeats` times. After a full flush a deflate
    stream carries no state, so the chunk is compressed once and its blocks repeated: a
    gigabyte of zeros costs a millisecond to build and weighs about a megabyte."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = b"".join(packer.compress(part) for part in parts) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH) if repeats else b""
    return head + block * repeats + packer.flush()


def dicom_deflate_bomb(gib: float = 1.0, group_length: int | None = 0) -> bytes:
    """A deflated data set of one private OB element of `gib` GiB of zeros (about 1 MB)."""
    size = int(gib * (1 << 30))
    header = struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", size)
    body = deflate_stream([header], b"\x00" * (1 << 20), size >> 20)
    return dicom_file(DEFLATED, body, group_length)


def dicom_deflate_bomb_late_syntax() -> bytes:
    """The same bomb, its transfer syntax UID pushed past byte 4096 by a long meta element."""
    header = struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", 1 << 30)
    body = deflate_stream([header], b"\x00" * (1 << 20), 1 << 10)
    return dicom_file(DEFLATED, body, None, version_bytes=5000)


def element_flood(count: int) -> bytes:
    """`count` empty private LO elements: 8 bytes each."""
    return b"".join(
        struct.pack("<HH2sH", 0x0009, 0x1000 + i % 0xEFFF, b"LO", 0) for i in range(count)
    )


def dicom_tiny_elements_deflated(count: int = 16_000_000) -> bytes:
    """16M empty elements, deflated: about 128 MB inflated from a few hundred KB."""
    one = struct.pack("<HH2sH", 0x0009, 0x1000, b"LO", 0)
    return dicom_file(DEFLATED, deflate_stream([], one * 4096, count // 4096))


def dicom_element_flood(count: int = 350_000) -> bytes:
    """350,000 empty elements, uncompressed (2.8 MB)."""
    return dicom_file(EXPLICIT, element_flood(count))


def dx_dataset(rows: int, columns: int, syntax: str, bits: int = 8):
    """A DX data set's header for `rows` x `columns` gray pixels in `syntax` (no pixels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX.rstrip(b"\x00").decode()
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def dicom_with_frame(ds, frame: bytes) -> bytes:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_progressive_jpeg(repeats: int = 3_000) -> bytes:
    """A JPEG Baseline DICOM whose frame is a progressive JPEG with `repeats` extra scans."""
    frame = progressive_scan_bomb(repeats)
    return dicom_with_frame(dx_dataset(2048, 2048, "1.2.840.10008.1.2.4.50"), frame)


def j2k_frame(size: int, components: int, tile: int, levels: int = 5) -> bytes:
    """A JPEG 2000 codestream's main header (SOC, SIZ, COD, QCD) and EOC, no tile data."""
    siz = struct.pack(">HIIIIIIIIH", 0, size, size, 0, 0, tile, tile, 0, 0, components)
    siz += b"\x07\x01\x01" * components
    cod = struct.pack(">BBHBBBBBB", 0, 0, 1, 0, levels, 4, 4, 0, 1)
    qcd = struct.pack(">B", 0x20) + b"\x40" * (3 * levels + 1)
    return (
        b"\xff\x4f"
        + b"\xff\x51"
        + struct.pack(">H", len(siz) + 2)
        + siz
        + b"\xff\x52"
        + struct.pack(">H", len(cod) + 2)
        + cod
        + b"\xff\x5c"
        + struct.pack(">H", len(qcd) + 2)
        + qcd
        + b"\xff\xd9"
    )


def dicom_j2k(size: int = 2000, components: int = 300, tile: int = 2000, levels: int = 5) -> bytes:
    frame = j2k_frame(size, components, tile, levels)
    return dicom_with_frame(dx_dataset(size, size, "1.2.840.10008.1.2.4.90"), frame)


def dicom_rle(size: int = 5000) -> bytes:
    """RLE Lossless at `size`^2, 16 bits, whose one segment is a few bytes."""
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return dicom_with_frame(dx_dataset(size, size, "1.2.840.10008.1.2.5", 16), header + b"\x00\x00")


def dicom_jpeg_lossless(size: int = 5000) -> bytes:
    """JPEG Lossless SV1 at `size`^2 whose frame is a header and a few bytes of scan."""
    sof = b"\xff\xc3" + struct.pack(">HBHHB", 11, 8, size, size, 1) + b"\x01\x11\x00"
    dht = b"\xff\xc4" + struct.pack(">HB", 20, 0) + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x01\x00\x00"
    frame = b"\xff\xd8" + sof + dht + sos + b"\x00" * 64 + b"\xff\xd9"
    return dicom_with_frame(dx_dataset(size, size, "1.2.840.10008.1.2.4.70"), frame)


def dicom_jpeg_ls(size: int = 5000) -> bytes:
    """JPEG-LS lossless at `size`^2 whose frame is a header and a few bytes of scan."""
    sof = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, size, size, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
    frame = b"\xff\xd8" + sof + sos + b"\x00" * 64 + b"\xff\xd9"
    return dicom_with_frame(dx_dataset(size, size, "1.2.840.10008.1.2.4.80"), frame)


# name -> (builder, the reason it is refused with): each a class of issue 22's DICOM audit.
DICOM_PAYLOADS: dict[str, tuple[Callable[[], bytes], str]] = {
    "DICOM deflate, 1 GiB, meta group length 0": (dicom_deflate_bomb, "too_large"),
    "DICOM deflate, 1 GiB, syntax past byte 4096": (dicom_deflate_bomb_late_syntax, "too_large"),
    "DICOM deflate, 16M tiny elements": (dicom_tiny_elements_deflated, "too_large"),
    "DICOM, 350,000 elements": (dicom_element_flood, "too_complex"),
    "DICOM JPEG frame, 3,000 scans": (dicom_progressive_jpeg, "too_complex"),
    "DICOM JPEG 2000, 300 components at 2000^2": (dicom_j2k, "colour"),
    "DICOM JPEG 2000, 1 px tiles": (lambda: dicom_j2k(2000, 1, 1), "too_complex"),
    "DICOM JPEG 2000, 33 resolution levels": (lambda: dicom_j2k(2000, 1, 2000, 33), "too_complex"),
    "DICOM RLE, 5000^2 at 16 bits": (dicom_rle, "too_large"),
    "DICOM JPEG lossless, 5000^2, tiny body": (dicom_jpeg_lossless, "corrupt"),
    "DICOM JPEG-LS, 5000^2, tiny body": (dicom_jpeg_ls, "corrupt"),
}
