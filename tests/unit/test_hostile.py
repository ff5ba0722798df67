"""Hostile JPEG and PNG structure: rejected from the bytes, or decoded without its metadata.

Each class below cost seconds, gigabytes or an unhandled exception before
`imaging.sanitize` (measured in benchmarks/hostile.py). The property tests
mutate real files at the level of JPEG segments, PNG chunks and EXIF
directories, and require a decoded image or an ImageError, nothing else.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_gray
from pneumonia.images.formats import ImageError
from pneumonia.images.prepare import prepare_image
from pneumonia.images.sanitize import MAX_JPEG_SCANS, exif_orientation, sanitize
from tests import hostile
from tests.images import encode, gradient

CONFIG = PreprocessConfig(image_size=64, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8)


def outcome(data: bytes) -> str:
    """'ok' or the ImageError reason; any other exception fails the test."""
    try:
        pixels = prepare_image(data, CONFIG)
    except ImageError as error:
        return error.reason
    assert pixels.shape == (64, 64, 1) and pixels.dtype == np.uint8
    return "ok"


# What prepare_image makes of each payload: decoded without its metadata ("ok"), or refused
# with this reason. Pinned one by one: a change of outcome is a change of behaviour.
EXPECTED = {
    "progressive JPEG, 30,000 scans": "too_complex",
    "PNG eXIf, 1,000 tags -> 1 MB block": "ok",
    "PNG eXIf, 2,000 SHORT arrays + orientation": "ok",
    "JPEG EXIF, orientation + bad offset": "ok",
    "JPEG EXIF, orientation of the wrong type": "ok",
    "PNG zTXt inflating to 5 MB": "ok",
    "PNG iCCP inflating to 5 MB": "ok",
    "PNG truncated IHDR": "corrupt",
    "PNG, 200,000 tEXt chunks": "too_complex",
    "PNG RGBA 8192x3051 (at the cap)": "ok",  # decoded by prepare_image; serving refuses it
    **{f"{name} sent as an image": "unsupported_format" for name in hostile.OTHER_FORMATS},
    "SPIDER sent as an image": "not_an_image",  # no magic number to name it by
}


@pytest.mark.parametrize("name", list(hostile.PAYLOADS))
def test_every_hostile_payload_is_decoded_or_refused_with_its_reason(name):
    builder, _ = hostile.PAYLOADS[name]
    assert outcome(builder()) == EXPECTED[name]


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    # 30,000 repeats of one 16-byte scan: about 110 s of libjpeg before the cap.
    bomb = hostile.progressive_scan_bomb()
    with pytest.raises(ImageError) as error:
        sanitize(bomb)
    assert error.value.reason == "too_complex"
    assert "scans" in str(error.value)


def test_an_ordinary_progressive_jpeg_is_served():
    image = encode(Image.fromarray(gradient(300, 200)).convert("RGB"), "JPEG", progressive=True)
    scans = sum(segment[1] == 0xDA for segment in hostile.jpeg_segments(image))
    assert 1 < scans <= MAX_JPEG_SCANS
    assert outcome(image) == "ok"


@pytest.mark.parametrize(
    "builder", [hostile.exif_memory_bomb, hostile.exif_cpu_bomb, hostile.png_oversized_ztxt]
)
def test_png_metadata_never_reaches_the_decoder(builder):
    bomb = builder()
    format, clean, _ = sanitize(bomb)
    assert format == "PNG"
    kinds = [kind for kind, _ in hostile.png_chunks(clean)]
    assert set(kinds) <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
    assert len(clean) < 100_000 < len(bomb) or builder is hostile.png_oversized_ztxt


def test_an_exif_bomb_costs_no_memory_and_keeps_its_orientation():
    # 2,000 arrays of 30,000 SHORTs on one block: Pillow 11.3 took 134 s and 1.4 GB.
    bomb = hostile.exif_cpu_bomb()
    assert sanitize(bomb)[2] == 6
    tracemalloc.start()
    try:
        gray = decode_gray(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB traced"
    upright = decode_gray(encode(hostile.xray(), "PNG"))
    np.testing.assert_array_equal(gray, np.rot90(upright, k=-1))  # orientation 6: 90 deg CW


def test_a_jpeg_exif_orientation_is_read_from_the_first_block_within_bounds():
    pixels = gradient(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    assert sanitize(data)[2] == 8
    assert decode_gray(data).shape == (96, 64)
    assert sanitize(hostile.jpeg_exif_malformed())[2] == 6  # orientation read, bad pointer ignored
    assert sanitize(hostile.jpeg_exif_wrong_types())[2] == 1  # a RATIONAL orientation is none


@pytest.mark.parametrize(
    "tiff",
    [
        b"",
        b"II*\x00",
        b"II*\x00\xff\xff\xff\xff",
        b"MM\x00*\x00\x00\x00\x08\xff\xff",
        hostile.tiff_directory([(0x0112, 3, 1, struct.pack("<H", 9))]),  # out of range
        hostile.tiff_directory([(0x0112, 3, 0, struct.pack("<H", 6))]),  # no value
    ],
)
def test_malformed_exif_means_no_orientation(tiff):
    assert exif_orientation(tiff) == 1


@pytest.mark.parametrize("name", hostile.OTHER_FORMATS)
def test_other_formats_are_refused_without_opening_them(name):
    data = hostile.other_format(name)()
    with pytest.raises(ImageError) as error:
        sanitize(data)
    assert error.value.reason in ("unsupported_format", "not_an_image")


def test_too_many_png_chunks_are_refused():
    with pytest.raises(ImageError) as error:
        sanitize(hostile.png_many_chunks())
    assert error.value.reason == "too_complex"


@pytest.mark.parametrize(
    "data",
    [hostile.png_truncated_ihdr(), hostile.PNG_SIGNATURE + hostile.png_chunk(b"IHDR", b"\x00" * 5)],
)
def test_a_png_with_a_broken_header_is_corrupt(data):
    assert outcome(data) == "corrupt"


# ---------------------------------------------------------------- structured mutations

BASE_PNG = encode(hostile.xray(96), "PNG")
BASE_PNG_16 = encode(Image.fromarray(gradient(80, 60).astype(np.uint16) * 257), "PNG")
BASE_JPEG = encode(hostile.xray(96), "JPEG", quality=85)
BASE_PROGRESSIVE = encode(hostile.xray(96).convert("RGB"), "JPEG", progressive=True)

CHUNK_KINDS = b"IHDR PLTE tRNS IDAT IEND eXIf zTXt iCCP tEXt iTXt acTL fcTL fdAT gAMA abcd"
chunk_kinds = st.sampled_from(CHUNK_KINDS.split())
payloads = st.one_of(
    st.binary(max_size=256),
    st.integers(1, 2_000_000).map(lambda n: zlib.compress(b"\x00" * n)),
    st.builds(lambda b: b"k\x00\x00" + zlib.compress(b * 1000), st.binary(min_size=1, max_size=64)),
)
exif_entries = st.lists(
    st.tuples(
        st.sampled_from([0x0112, 0x8769, 0x8825, 0x927C, 0x0100, 0x9000]) | st.integers(0, 65535),
        st.integers(0, 14),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=4, max_size=4),
    ),
    max_size=40,
)


def flip_a_bit(draw, data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(flipped)


@st.composite
def mutated_png(draw) -> bytes:
    chunks = hostile.png_chunks(draw(st.sampled_from([BASE_PNG, BASE_PNG_16])))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["insert", "exif", "drop", "duplicate", "flip", "swap"]))
        index = draw(st.integers(0, len(chunks) - 1))
        if action == "insert":
            chunks.insert(index, (draw(chunk_kinds), draw(payloads)))
        elif action == "exif":
            entries = draw(exif_entries)
            chunks.insert(
                index, (b"eXIf", hostile.tiff_directory(entries, draw(st.binary(max_size=64))))
            )
        elif action == "drop" and len(chunks) > 1:
            chunks.pop(index)
        elif action == "duplicate":
            chunks.insert(index, chunks[index])
        elif action == "flip" and chunks[index][1]:
            chunks[index] = (chunks[index][0], flip_a_bit(draw, chunks[index][1]))
        elif action == "swap":
            other = draw(st.integers(0, len(chunks) - 1))
            chunks[index], chunks[other] = chunks[other], chunks[index]
    data = hostile.PNG_SIGNATURE + b"".join(hostile.png_chunk(k, p) for k, p in chunks)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def mutated_jpeg(draw) -> bytes:
    segments = hostile.jpeg_segments(draw(st.sampled_from([BASE_JPEG, BASE_PROGRESSIVE])))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["app", "exif", "drop", "repeat", "flip", "swap"]))
        index = draw(st.integers(1, len(segments) - 1))
        if action == "app":
            marker = draw(st.integers(0xE0, 0xEF) | st.just(0xFE))
            body = draw(st.binary(max_size=512))
            segments.insert(index, bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body)
        elif action == "exif":
            tiff = hostile.tiff_directory(draw(exif_entries), draw(st.binary(max_size=64)))
            body = b"Exif\x00\x00" + tiff
            segments.insert(index, b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
        elif action == "drop" and len(segments) > 2:
            segments.pop(index)
        elif action == "repeat":
            segments[index:index] = [segments[index]] * draw(st.integers(1, 40))
        elif action == "flip":
            segments[index] = flip_a_bit(draw, segments[index])
        elif action == "swap":
            other = draw(st.integers(1, len(segments) - 1))
            segments[index], segments[other] = segments[other], segments[index]
    data = b"".join(segments)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=mutated_png())
def test_mutated_pngs_decode_or_raise_an_image_error(data):
    outcome(data)


@FUZZ
@given(data=mutated_jpeg())
def test_mutated_jpegs_decode_or_raise_an_image_error(data):
    outcome(data)
