"""prepare_image: every input mode and bit depth to (S, S, 1) uint8; bad bytes get a reason."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumonia.evaluation.shifts import SHIFTS
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_gray, decode_image, read_header
from pneumonia.images.formats import ImageError
from pneumonia.images.prepare import decode_size, prepare_image
from tests.conftest import SAMPLE_DATA
from tests.hostile import png_chunk
from tests.images import encode, gradient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CONFIG = PreprocessConfig(image_size=32, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8)


def rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([pixels] * 3, axis=-1))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("L", lambda p: Image.fromarray(p)),
        ("RGB", rgb),
        ("RGBA", lambda p: rgb(p).convert("RGBA")),
        ("LA", lambda p: Image.fromarray(p).convert("LA")),
        ("P", lambda p: rgb(p).convert("P")),
        ("I;16", lambda p: Image.fromarray(p.astype(np.uint16) * 257)),
        ("1", lambda p: Image.fromarray(p).convert("1")),
    ],
)
def test_every_mode_becomes_a_square_single_channel_uint8(name, make):
    image = make(gradient())
    output = prepare_image(encode(image, "PNG"), CONFIG)
    assert output.shape == (32, 32, 1)
    assert output.dtype == np.uint8
    if name != "1":  # a 1-bit image is dithered; the others keep the ramp
        row = output[-1, :, 0].astype(int)
        assert row[-1] > row[0] + 100, f"{name}: the left-to-right ramp is lost"


def test_rgb_jpeg_and_gray_png_of_the_same_picture_agree():
    pixels = gradient()
    from_png = prepare_image(encode(Image.fromarray(pixels), "PNG"), CONFIG).astype(int)
    from_jpeg = prepare_image(encode(rgb(pixels), "JPEG", quality=98), CONFIG).astype(int)
    assert np.abs(from_png - from_jpeg).max() <= 6


def test_sixteen_bit_keeps_precision_below_eight_bits():
    # Values 0..255 in 16-bit are all below one 8-bit step: they must not collapse to 0.
    ramp = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (64, 1))  # (64, 256)
    gray = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert gray.dtype == np.float32
    assert gray.max() == pytest.approx(65280 / 65535, abs=1e-6)
    assert len(np.unique(gray)) == 256


def test_exif_orientation_is_applied():
    pixels = gradient(96, 64)  # bright block top-left, wider than tall
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    gray = decode_image(data)
    assert gray.shape == (96, 64)  # displayed upright: taller than wide
    assert gray[:10, -10:].mean() > 0.95  # the bright block is now top-right


def test_a_large_jpeg_is_scaled_down_in_the_dct_and_matches_the_full_decode():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (1024, 1200)).astype(np.uint8), (0, 0), 12)
    pixels = cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX)
    data = encode(rgb(pixels), "JPEG", quality=95)
    config = PreprocessConfig(
        image_size=128, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    # libjpeg decodes 1/8 of each side, still >= 128, straight to luma.
    assert decode_gray(data, min_size=128).shape == (128, 150)
    assert decode_gray(data, min_size=200).shape == (256, 300)  # 1/4: 1/8 would be < 200
    assert decode_gray(data).shape == (1024, 1200)
    scaled = prepare_image(data, config).astype(int)
    full = prepare_image(decode_gray(data), config).astype(int)
    assert np.abs(scaled - full).mean() < 1.0
    assert np.abs(scaled - full).max() <= 4


def test_an_original_size_jpeg_reaches_the_model_as_its_full_decode_does():
    # A 1,050 px original: decoded at 132 px (1/8), its thorax box (about 76 px) was enlarged
    # to the input; at decode_size (>= 352 px, so 1/2) it is shrunk by the area resize.
    config = PreprocessConfig(
        image_size=128, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8, framing="thorax"
    )
    assert decode_size(config) == 352

    def sharpness(pixels: np.ndarray) -> float:
        return float(cv2.Laplacian(pixels[..., 0].astype(np.float32), cv2.CV_32F).std())

    sharper, differences = [], []
    for path in sorted((SAMPLE_DATA / "train").glob("*/*.jpeg"))[::5]:  # 30 committed X-rays
        data = SHIFTS["original size 1050 px"](decode_image(path.read_bytes()))
        assert decode_gray(data, decode_size(config)).shape == (525, 525)
        served = prepare_image(data, config)
        full = prepare_image(decode_gray(data), config)  # every pixel decoded
        sharper.append(sharpness(served) / sharpness(full))
        differences.append(np.abs(served.astype(int) - full).mean())
    # 1/8: a median difference of 4.2 gray levels, sharpness 0.83 of the full decode's at
    # worst; 1/4: 1.9 and 0.89; 1/2: 0.4 and 0.98.
    assert np.median(differences) < 1.0
    assert min(sharper) > 0.95


def test_sixteen_bit_and_eight_bit_sources_prepare_alike():
    pixels = gradient(200, 160)
    eight = prepare_image(encode(Image.fromarray(pixels), "PNG"), CONFIG).astype(int)
    sixteen = prepare_image(encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG"), CONFIG)
    floats = prepare_image(pixels / 255.0, CONFIG)
    assert np.abs(eight - sixteen.astype(int)).max() <= 1
    assert np.abs(eight - floats.astype(int)).max() <= 1


def test_decoded_array_and_bytes_take_the_same_path():
    pixels = gradient()
    from_bytes = prepare_image(encode(Image.fromarray(pixels), "PNG"), CONFIG)
    from_array = prepare_image(pixels, CONFIG)
    from_rgb_array = prepare_image(np.stack([pixels] * 3, axis=-1), CONFIG)
    np.testing.assert_array_equal(from_bytes, from_array)
    np.testing.assert_array_equal(from_bytes, from_rgb_array)


@pytest.mark.parametrize("intensity", ["equalize", "clahe"])
def test_intensity_normalisation_spreads_a_low_contrast_image(intensity):
    dull = (gradient() // 8 + 100).astype(np.uint8)  # values 100..131
    config = PreprocessConfig(
        image_size=32, intensity=intensity, clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    output = prepare_image(encode(Image.fromarray(dull), "PNG"), config)
    assert np.ptp(output) > 1.5 * np.ptp(prepare_image(dull, CONFIG))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"patient notes, not a picture\n", "not_an_image"),
        (encode(Image.fromarray(gradient()), "BMP"), "unsupported_format"),
        (encode(Image.fromarray(gradient()), "JPEG")[:-64], "corrupt"),  # truncated
    ],
)
def test_bad_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ImageError) as error:
        decode_image(data)
    assert error.value.reason == reason


def test_oversized_header_is_rejected_before_decoding():
    # A 1-bit PNG whose header declares 30000 x 30000 px (900 MP if decoded), built chunk by
    # chunk with one row of pixel data: refused from the header alone.
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 30000 // 8))
    data = PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", row)
    data += png_chunk(b"IEND", b"")
    assert len(data) < 200
    with pytest.raises(ImageError) as error:
        read_header(data)
    assert error.value.reason == "too_large"


@pytest.mark.parametrize(
    "shape", [(4,), (2, 3, 2), (2, 3, 5), (1, 2, 3, 1)], ids=["1-D", "2 ch", "5 ch", "4-D"]
)
def test_an_array_that_is_no_image_shape_is_refused_as_bad_shape(shape):
    from pneumonia.images.decode import array_to_gray
    from pneumonia.images.formats import ImageError

    with pytest.raises(ImageError) as refused:
        array_to_gray(np.zeros(shape, dtype=np.uint8))
    assert refused.value.reason == "bad_shape"
    assert str(shape) in str(refused.value)


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.bool_])
def test_a_pixel_type_without_a_full_scale_is_refused_as_bad_dtype(dtype):
    from pneumonia.images.decode import array_to_gray, to_uint8
    from pneumonia.images.formats import ImageError

    for convert in (array_to_gray, to_uint8):
        with pytest.raises(ImageError) as refused:
            convert(np.zeros((2, 2), dtype=dtype))
        assert refused.value.reason == "bad_dtype"
        assert np.dtype(dtype).name in str(refused.value)


def test_uint16_and_float_arrays_keep_their_scale():
    from pneumonia.images.decode import array_to_gray, to_float, to_uint8

    deep = np.array([[0, 65535], [257, 32896]], dtype=np.uint16)
    assert array_to_gray(deep) is not None and array_to_gray(deep).dtype == np.uint16
    assert to_uint8(deep).tolist() == [[0, 255], [1, 128]]
    assert to_float(deep)[0, 1] == 1.0
    floats = np.array([[-0.5, 0.25], [1.0, 2.0]], dtype=np.float64)
    assert array_to_gray(floats).tolist() == [[0.0, 0.25], [1.0, 1.0]]
