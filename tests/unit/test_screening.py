"""The cheap "is this a chest X-ray?" checks: every committed real X-ray passes, with its
framing and exposure shifted too; colour, near-uniform and strip-shaped pictures do not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.images.decode import colour_thumbnail, decode_gray
from pneumonia.images.screening import screen
from tests.conftest import SAMPLE_DATA


def judged(data: bytes) -> str | None:
    return screen(decode_gray(data), colour_thumbnail(data))


def encoded(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


XRAYS = sorted(SAMPLE_DATA.rglob("*.jpeg"))


def test_every_committed_real_xray_passes():
    assert len(XRAYS) == 150
    refused = {path.name: why for path in XRAYS if (why := judged(path.read_bytes()))}
    assert refused == {}


@pytest.mark.parametrize(
    "shift",
    [
        lambda g: np.clip(g.astype(int) * 0.6 + 50, 0, 255).astype(np.uint8),  # low contrast
        lambda g: np.pad(g, 20),  # a black border
        lambda g: g[:, 20:-20],  # narrower: aspect 0.82
        lambda g: np.stack([g] * 3, axis=-1),  # gray stored as RGB
    ],
    ids=["low contrast", "padded", "portrait crop", "gray as RGB"],
)
def test_real_xrays_stay_accepted_under_ordinary_variation(shift):
    for path in XRAYS[::15]:
        gray = decode_gray(path.read_bytes())
        assert judged(encoded(np.ascontiguousarray(shift(gray)))) is None


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_a_colour_picture_is_refused(format):
    rgb = np.zeros((240, 240, 3), np.uint8)  # red to green across, blue down: a colourful scene
    rgb[..., 0] = np.linspace(0, 255, 240)[None, :]
    rgb[..., 1] = np.linspace(255, 0, 240)[None, :]
    rgb[..., 2] = np.linspace(0, 200, 240)[:, None]
    assert "colour" in judged(encoded(rgb, format))


def test_a_tinted_xray_with_little_saturation_is_still_gray_enough():
    gray = decode_gray(XRAYS[0].read_bytes()).astype(np.float32)
    sepia = np.stack([gray, gray * 0.95, gray * 0.85], axis=-1).astype(np.uint8)
    assert judged(encoded(sepia)) is None


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_images_are_refused(level):
    assert "uniform" in judged(encoded(np.full((300, 300), level, np.uint8)))


def test_a_near_constant_image_with_a_few_stray_pixels_is_refused():
    pixels = np.full((300, 300), 120, np.uint8)
    pixels[::50, ::50] = 255
    assert "uniform" in judged(encoded(pixels))


@pytest.mark.parametrize("shape", [(100, 400), (1920, 600)], ids=["banner", "tall strip"])
def test_strips_are_refused_for_their_aspect_ratio(shape):
    pixels = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    assert "aspect ratio" in judged(encoded(pixels))


def test_serving_decodes_once_and_gets_the_same_gray_pixels_as_the_pipeline():
    """decode_with_colour (serving: one YCbCr decode for a colour JPEG) against decode_gray
    (pipeline): bit-identical gray, at the model's size and in full, EXIF rotation included."""
    from pneumonia.images.decode import decode_with_colour

    picture = Image.open(XRAYS[0])  # an RGB JPEG, as every committed X-ray is
    rotated = []
    for value in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = value
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
        rotated.append(buffer.getvalue())
    for data in [path.read_bytes() for path in XRAYS] + rotated:
        for min_size in (128, None):
            gray, thumbnail = decode_with_colour(data, min_size=min_size)
            np.testing.assert_array_equal(gray, decode_gray(data, min_size=min_size))
            assert thumbnail is None or (thumbnail.ndim == 3 and max(thumbnail.shape) <= 64)
            verdict = screen(gray, thumbnail)
            assert verdict == screen(decode_gray(data), colour_thumbnail(data))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_a_colour_png_is_decoded_once_into_the_pipelines_gray_and_its_thumbnail(mode, monkeypatch):
    from pneumonia.images import decode
    from pneumonia.images.decode import decode_with_colour

    picture = Image.open(XRAYS[0]).convert("RGB")
    converted = picture.convert("I;16") if mode == "I;16" else picture.convert(mode)
    data = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the gray must follow EXIF as decode_gray does
    converted.save(data, format="PNG", exif=exif.tobytes())
    data = data.getvalue()
    expected = (decode_gray(data), colour_thumbnail(data))
    opened = []
    real = decode._open_checked
    monkeypatch.setattr(decode, "_open_checked", lambda raw: opened.append(1) or real(raw))
    gray, thumbnail = decode_with_colour(data, min_size=128)
    np.testing.assert_array_equal(gray, expected[0])
    if expected[1] is None:
        assert thumbnail is None
    else:
        np.testing.assert_array_equal(thumbnail, expected[1])
        assert len(opened) == 1  # one open, one decode


def test_a_strip_is_refused_from_its_header_before_its_pixels_are_decoded(monkeypatch):
    from pneumonia.images import screening
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.screening import NotAChestXray, screen_and_prepare
    from tests.hostile import rgba_png_at_the_cap

    def never(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(screening, "decode_with_colour", never)
    config = PreprocessConfig(
        image_size=128, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    data = rgba_png_at_the_cap()  # 8192 x 3051 RGBA: 100 MB decoded
    with pytest.raises(NotAChestXray) as refused:
        screen_and_prepare(data, config)
    assert "aspect ratio is 2.69" in str(refused.value)
