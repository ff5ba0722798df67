"""The container walker (pneumonia.images.sanitize) on files assembled here byte by byte: each
JPEG segment and PNG chunk kept or dropped by name, each cap at its edge, each malformed
structure refused with its reason and message. The expected bytes are written out by hand."""

from __future__ import annotations

import struct

import pytest

from pneumonia.images.formats import ImageError
from pneumonia.images.sanitize import exif_orientation, sanitize
from tests.hostile import PNG_SIGNATURE, png_chunk, tiff_directory

SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def segment(marker: int, body: bytes = b"") -> bytes:
    """One JPEG marker segment: FF, the marker, a length that counts itself, the body."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def refusal(data: bytes) -> tuple[str, str]:
    with pytest.raises(ImageError) as refused:
        sanitize(data)
    return refused.value.reason, str(refused.value)


def big_endian_tiff(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, field in entries:
        ifd += struct.pack(">HHI", tag, kind, count) + field.ljust(4, b"\x00")[:4]
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)


def orientation_tiff(value: int) -> bytes:
    return tiff_directory([(0x0112, 3, 1, struct.pack("<H", value))])


# ---------------------------------------------------------------- which format


def test_an_empty_file_is_named_empty():
    assert refusal(b"") == ("empty", "the file is empty (0 bytes)")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"II*\x00rest", "TIFF"),
        (b"MM\x00*rest", "TIFF"),
        (b"BMrest", "BMP"),
        (b"GIF89a", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBP", "WEBP"),
        (b"\x00\x00\x00\x0cjP  \r\n", "JPEG2000"),
        (b"\xff\x4f\xff\x51\x00", "JPEG2000"),
        (bytes(128) + b"DICM\x02\x00", "DICOM"),
        (b"\x00\x00\x00\x18ftypheic", "HEIF/AVIF"),
        (b"DDS |\x00", "DDS"),
        (b"\x01\xda\x01\x01", "SGI"),
        (b"8BPS\x00\x01", "PSD"),
        (b"%!PS-Adobe", "EPS"),
        (b"\xc5\xd0\xd3\xc6\x1e", "EPS"),
        (b"%PDF-1.7", "PDF"),
        (b"\x00\x00\x01\x00\x01\x00", "ICO"),
        (b"Image type: L image", "IM"),
        (b"#define im_width 8", "XBM"),
        (b"qoif\x00\x00", "QOI"),
        (b"P6\n", "PPM/PGM"),
        (b"P1 4 4", "PPM/PGM"),
        (b"P7\n", "PPM/PGM"),
    ],
)
def test_another_image_format_is_named_in_its_415(data, name):
    message = f"format {name} is not accepted (use JPEG or PNG)"
    assert refusal(data) == ("unsupported_format", message)


@pytest.mark.parametrize(
    "data",
    [
        b"P6",  # two bytes: too short to be a PPM
        b"P",
        b"P8\n",
        b"P0\n",
        b"Q6\n",
        b"\xff\xd8\x00\x00",  # SOI without a marker after it
        b"\xff\xd9\xff",
        b"\x89PNG\r\n\x1a\x0b",  # one byte off the PNG signature
        bytes(127) + b"DICM",  # DICM one byte early
        b"\x00\x00\x00ftyp",  # ftyp one byte early
        b"hello",
    ],
)
def test_what_is_no_known_image_is_not_an_image(data):
    assert refusal(data) == ("not_an_image", "the bytes are not a recognised image")


# ---------------------------------------------------------------- JPEG


SOF = segment(0xC0, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00")
DQT = segment(0xDB, b"\x00" + bytes(range(64)))
DHT = segment(0xC4, b"\x00" + bytes(16))
SCAN_HEADER = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")


def test_a_jpeg_keeps_what_decoding_needs_and_drops_metadata_and_trailing_bytes():
    jfif = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    xmp = segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>")
    icc = segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + bytes(40))
    photoshop = segment(0xED, b"Photoshop 3.0\x00")
    adobe = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    app15 = segment(0xEF, b"private")
    comment = segment(0xFE, b"a comment")
    dri = segment(0xDD, b"\x00\x04")
    jpg0 = segment(0xF0, b"\x01")  # JPEG extension markers are not application data
    exp = segment(0xDF, b"\x11")
    # entropy-coded data with a stuffed 0xFF00 and restart markers inside: one scan
    entropy = b"\x12\x34\xff\x00\x56\xff\xd0\x78\xff\xd7\x9a"
    parts = [jfif, xmp, icc, DQT, photoshop, SOF, adobe, app15, DHT, comment, dri, jpg0, exp]
    data = SOI + b"".join(parts) + SCAN_HEADER + entropy + EOI + b"trailing junk"
    format, clean, orientation = sanitize(data)
    assert format == "JPEG" and orientation == 1
    kept = [jfif, DQT, SOF, adobe, DHT, dri, jpg0, exp]
    assert clean == SOI + b"".join(kept) + SCAN_HEADER + entropy + EOI


def test_fill_bytes_before_a_marker_are_dropped_and_stand_alone_markers_kept():
    data = SOI + b"\xff\xff\xff" + DQT + b"\xff\xd0" + b"\xff\xd7" + b"\xff\x01" + SOF + EOI
    assert sanitize(data)[1] == SOI + DQT + b"\xff\xd0\xff\xd7\xff\x01" + SOF + EOI


def test_a_jpeg_without_an_end_keeps_what_it_has():
    assert sanitize(SOI + DQT + SOF)[1] == SOI + DQT + SOF
    assert sanitize(SOI + DQT + b"\xff")[1] == SOI + DQT  # a lone 0xFF at the end
    assert sanitize(SOI + b"\xff")[1] == SOI
    # a scan that runs to the end of the file, and one whose data ends in 0xFF
    assert sanitize(SOI + SCAN_HEADER + b"\x01\x02")[1] == SOI + SCAN_HEADER + b"\x01\x02"
    assert sanitize(SOI + SCAN_HEADER + b"\x01\xff")[1] == SOI + SCAN_HEADER + b"\x01\xff"


def test_a_scan_ends_at_the_first_real_marker_after_fill_bytes():
    entropy = b"\x01\xff\x00\x02"
    data = SOI + SCAN_HEADER + entropy + b"\xff" + DHT + SCAN_HEADER + b"\x03" + EOI
    # a fill byte before DHT stays with the scan's data; DHT and the second scan follow
    assert sanitize(data)[1] == SOI + SCAN_HEADER + entropy + b"\xff" + DHT + SCAN_HEADER + (
        b"\x03" + EOI
    )


def test_jpeg_segments_at_the_edge_of_the_file():
    assert sanitize(SOI + segment(0xDB))[1] == SOI + segment(0xDB)  # length 2: no body
    assert sanitize(SOI + DQT)[1] == SOI + DQT  # ends exactly at the end of the file
    runs_past = ("corrupt", "a JPEG segment runs past the end of the file")
    assert refusal(SOI + DQT[:-1]) == runs_past
    assert refusal(SOI + b"\xff\xdb\x00\x01") == runs_past  # a length under 2
    assert refusal(SOI + b"\xff\xdb\x00\x00" + bytes(8)) == runs_past
    header = ("corrupt", "the JPEG ends inside a segment header")
    assert refusal(SOI + b"\xff\xdb\x00") == header
    assert refusal(SOI + b"\xff\xdb") == header


def test_bytes_between_jpeg_segments_are_corrupt():
    assert refusal(SOI + DQT + b"\x00" + SOF) == (
        "corrupt",
        "the JPEG has bytes between its segments",
    )


def test_the_jpeg_segment_cap_is_two_thousand():
    assert len(sanitize(SOI + segment(0xFE) * 2000 + EOI)[1]) == 4
    assert refusal(SOI + segment(0xFE) * 2001 + EOI) == (
        "corrupt",
        "the JPEG has over 2,000 segments",
    )


def test_the_jpeg_scan_cap_is_thirty_two():
    scan = SCAN_HEADER + b"\x01\x02"
    assert sanitize(SOI + scan * 32 + EOI)[1] == SOI + scan * 32 + EOI
    assert refusal(SOI + scan * 33 + EOI) == (
        "too_complex",
        "the JPEG has over 32 scans (progressive passes)",
    )


def test_the_orientation_comes_from_the_first_exif_block_which_is_not_passed_on():
    first = segment(0xE1, b"Exif\x00\x00" + orientation_tiff(6))
    second = segment(0xE1, b"Exif\x00\x00" + orientation_tiff(3))
    data = SOI + first + DQT + second + EOI
    assert sanitize(data) == ("JPEG", SOI + DQT + EOI, 6)
    assert sanitize(SOI + second + first + EOI)[2] == 3
    big_endian = big_endian_tiff([(0x0112, 3, 1, struct.pack(">H", 8))])
    assert sanitize(SOI + segment(0xE1, b"Exif\x00\x00" + big_endian) + EOI)[2] == 8
    # only APP1 carries EXIF, and only with its six-byte header
    assert sanitize(SOI + segment(0xE2, b"Exif\x00\x00" + orientation_tiff(6)) + EOI)[2] == 1
    assert sanitize(SOI + segment(0xE1, b"Exif\x00\x01" + orientation_tiff(6)) + EOI)[2] == 1
    # a malformed first block counts as none, and the next one is not read instead
    broken = segment(0xE1, b"Exif\x00\x00" + b"II*\x00")
    assert sanitize(SOI + broken + first + EOI)[2] == 1


# ---------------------------------------------------------------- PNG


IHDR = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
IDAT = png_chunk(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01")
IEND = png_chunk(b"IEND", b"")


def test_a_png_keeps_the_chunks_that_make_pixels_and_stops_at_iend():
    plte = png_chunk(b"PLTE", bytes(range(12)))
    trns = png_chunk(b"tRNS", b"\x00")
    others = [
        png_chunk(kind, b"payload")
        for kind in (b"tEXt", b"zTXt", b"iCCP", b"gAMA", b"acTL", b"iTXt", b"priv")
    ]
    data = PNG_SIGNATURE + IHDR + others[0] + plte + others[1] + trns + b"".join(others[2:])
    data += IDAT + IDAT + IEND + png_chunk(b"tEXt", b"after the end") + b"junk"
    assert sanitize(data) == ("PNG", PNG_SIGNATURE + IHDR + plte + trns + IDAT + IDAT + IEND, 1)
    assert sanitize(PNG_SIGNATURE + IHDR + IDAT)[1] == PNG_SIGNATURE + IHDR + IDAT  # no IEND
    assert sanitize(PNG_SIGNATURE)[1] == PNG_SIGNATURE


def test_a_png_must_start_with_a_13_byte_ihdr():
    message = ("corrupt", "the PNG does not start with a 13-byte IHDR chunk")
    assert refusal(PNG_SIGNATURE + png_chunk(b"IHDR", bytes(12)) + IEND) == message
    assert refusal(PNG_SIGNATURE + png_chunk(b"IHDR", bytes(14)) + IEND) == message
    assert refusal(PNG_SIGNATURE + png_chunk(b"tEXt", bytes(13)) + IHDR + IEND) == message
    assert refusal(PNG_SIGNATURE + IDAT + IHDR + IEND) == message
    # a second IHDR later is not checked here (libpng refuses it)
    assert sanitize(PNG_SIGNATURE + IHDR + png_chunk(b"IHDR", bytes(3)))[1] == (
        PNG_SIGNATURE + IHDR + png_chunk(b"IHDR", bytes(3))
    )


def test_png_chunks_at_the_edge_of_the_file():
    header = ("corrupt", "the PNG ends inside a chunk header")
    assert refusal(PNG_SIGNATURE + IHDR + IDAT[:7]) == header
    assert refusal(PNG_SIGNATURE + b"\x00") == header
    text = png_chunk(b"tEXt", b"comment")
    assert refusal(PNG_SIGNATURE + IHDR + text[:-1]) == (
        "corrupt",
        "the PNG's b'tEXt' chunk runs past the end of the file",
    )
    assert refusal(PNG_SIGNATURE + IHDR[:-1]) == (
        "corrupt",
        "the PNG's b'IHDR' chunk runs past the end of the file",
    )
    assert sanitize(PNG_SIGNATURE + IHDR + text)[1] == PNG_SIGNATURE + IHDR  # ends exactly
    # a truncated IDAT is passed on as it is: the decoder decides what it gives
    assert sanitize(PNG_SIGNATURE + IHDR + IDAT[:-3])[1] == PNG_SIGNATURE + IHDR + IDAT[:-3]
    assert sanitize(PNG_SIGNATURE + IHDR + IDAT[:8])[1] == PNG_SIGNATURE + IHDR + IDAT[:8]


def test_the_png_chunk_cap_is_twenty_thousand():
    filler = png_chunk(b"tEXt", b"")
    assert sanitize(PNG_SIGNATURE + IHDR + filler * 19_998 + IEND)[1] == (
        PNG_SIGNATURE + IHDR + IEND
    )
    assert refusal(PNG_SIGNATURE + IHDR + filler * 19_999 + IEND) == (
        "too_complex",
        "the PNG has over 20,000 chunks",
    )


def test_the_orientation_comes_from_the_first_exif_chunk_which_is_not_passed_on():
    first = png_chunk(b"eXIf", orientation_tiff(6))
    second = png_chunk(b"eXIf", orientation_tiff(8))
    data = PNG_SIGNATURE + IHDR + first + IDAT + second + IEND
    assert sanitize(data) == ("PNG", PNG_SIGNATURE + IHDR + IDAT + IEND, 6)
    # the first one counts even when malformed
    broken = png_chunk(b"eXIf", b"II*\x00\x40\x00\x00\x00")
    assert sanitize(PNG_SIGNATURE + IHDR + broken + second + IEND)[2] == 1
    # the payload alone is read: a value cut short is not completed by the CRC after it
    cut = cut_short_exif()
    assert sanitize(PNG_SIGNATURE + IHDR + png_chunk(b"eXIf", cut) + IEND)[2] == 1
    assert exif_orientation(cut + b"\x00") == 6


def cut_short_exif() -> bytes:
    """A directory whose orientation (6, little-endian) lacks its high byte, and whose chunk's
    CRC starts with 0x00: one byte more than the payload would read as orientation 6."""
    for count in range(1, 100_000):
        payload = tiff_directory([(0x0112, 3, count, b"\x06")])[:19]
        if png_chunk(b"eXIf", payload)[-4] == 0:
            return payload
    raise AssertionError("no such count")


# ---------------------------------------------------------------- EXIF


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (1, 1), (2, 2), (8, 8), (9, 1)])
def test_the_orientation_value_is_one_to_eight(value, expected):
    assert exif_orientation(orientation_tiff(value)) == expected
    big = big_endian_tiff([(0x0112, 3, 1, struct.pack(">H", value))])
    assert exif_orientation(big) == expected


def test_the_orientation_tag_is_found_among_others_and_must_be_one_short_or_more():
    other = (0x0100, 3, 1, struct.pack("<H", 4))
    assert exif_orientation(tiff_directory([other, (0x0112, 3, 1, b"\x03\x00")])) == 3
    assert exif_orientation(tiff_directory([(0x0112, 3, 2, b"\x05\x00\x06\x00")])) == 5
    assert exif_orientation(tiff_directory([(0x0112, 4, 1, b"\x03\x00\x00\x00")])) == 1
    assert exif_orientation(tiff_directory([(0x0112, 3, 0, b"\x03\x00")])) == 1
    assert exif_orientation(tiff_directory([other])) == 1
    assert exif_orientation(tiff_directory([])) == 1


def test_the_directory_is_read_where_the_header_points():
    entry = struct.pack("<HHI", 0x0112, 3, 1) + b"\x06\x00\x00\x00"
    tiff = b"II*\x00" + struct.pack("<I", 12) + b"pad!" + struct.pack("<H", 1) + entry
    assert exif_orientation(tiff) == 6
    assert exif_orientation(b"II*\x00" + struct.pack("<I", 100) + bytes(20)) == 1  # past the end
    assert exif_orientation(tiff[:23]) == 1  # the value cut short


def test_at_most_a_thousand_entries_are_read():
    filler = (0x0100, 3, 1, b"\x04\x00")
    orientation = (0x0112, 3, 1, b"\x06\x00")
    assert exif_orientation(tiff_directory([filler] * 999 + [orientation])) == 6
    assert exif_orientation(tiff_directory([filler] * 1000 + [orientation])) == 1


@pytest.mark.parametrize("header", [b"II*\x01", b"MM*\x00", b"IM*\x00", b"II\x00*", b""])
def test_only_a_tiff_header_is_read(header):
    assert exif_orientation(header + orientation_tiff(6)[4:]) == 1
