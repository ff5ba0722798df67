"""heatmap / png / overlay: the serving side's class activation map images (no TensorFlow)."""

import cv2
import numpy as np
import pytest

from pneumonia.images.heatmap import heatmap, heatmap_size, overlay, png


def peaked_cam(row: int, col: int, size: int = 8) -> np.ndarray:
    cam = np.full((size, size), -1.0, dtype=np.float32)
    cam[row, col] = 3.0
    return cam


@pytest.mark.parametrize(
    ("width", "height", "max_side", "expected"),
    [
        (1000, 500, 512, (512, 256)),  # landscape, capped
        (500, 1000, 512, (256, 512)),  # portrait, capped
        (300, 200, 512, (300, 200)),  # small image keeps its size
        (128, 128, 512, (128, 128)),
        (2000, 3, 512, (512, 1)),  # the short side never rounds to 0
        (1001, 333, 100, (100, 33)),
    ],
)
def test_size_keeps_the_aspect_ratio(width, height, max_side, expected):
    assert heatmap_size(width, height, max_side) == expected
    out_width, out_height = expected
    assert heatmap(peaked_cam(2, 5), width, height, max_side).shape == (out_height, out_width)


def test_map_is_uint8_and_brightest_where_the_cam_peaks():
    for row, col in [(0, 0), (2, 5), (7, 3), (4, 4)]:
        heat = heatmap(peaked_cam(row, col), 1000, 500)
        assert heat.dtype == np.uint8
        # bilinear sampling at pixel centres never lands exactly on a cell centre
        assert heat.max() >= 240
        peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
        # the (row, col) cell of the 8x8 map covers this block of the 512x256 output
        assert row * 32 <= peak_row < (row + 1) * 32
        assert col * 64 <= peak_col < (col + 1) * 64


def test_negative_evidence_is_black():
    cam = peaked_cam(3, 3)
    heat = heatmap(cam, 256, 256)
    assert (heat == 0).mean() > 0.5  # the ReLU removes the -1 background
    assert heat[0, 0] == 0 and heat[-1, -1] == 0


@pytest.mark.parametrize(
    "cam",
    [
        -np.abs(np.random.default_rng(0).normal(size=(8, 8))) - 0.1,
        np.zeros((8, 8)),
        np.full((8, 8), np.nan),
    ],
)
def test_no_positive_evidence_gives_all_zeros(cam):
    heat = heatmap(cam, 640, 480)
    assert heat.shape == (384, 512)
    assert heat.dtype == np.uint8
    assert not heat.any()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        heatmap(np.zeros((2, 2, 2)), 10, 10)
    with pytest.raises(ValueError):
        heatmap(np.zeros((2, 2)), 0, 10)
    with pytest.raises(ValueError):
        png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        overlay(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4, 3), dtype=np.uint8))


def test_png_decodes_to_the_same_8_bit_single_channel_image():
    heat = heatmap(peaked_cam(1, 6), 1000, 500)
    encoded = png(heat)
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint8
    assert decoded.shape == (256, 512)
    np.testing.assert_array_equal(decoded, heat)


@pytest.mark.parametrize("channel_axis", [False, True])
def test_overlay_is_rgb_of_the_heat_shape_and_cold_pixels_are_the_image(channel_axis):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(500, 1000), dtype=np.uint8)
    heat = heatmap(peaked_cam(2, 2), 1000, 500)
    shown = overlay(image[..., None] if channel_axis else image, heat)
    assert shown.shape == (256, 512, 3)
    assert shown.dtype == np.uint8
    resized = cv2.resize(image, (512, 256), interpolation=cv2.INTER_AREA)
    cold = heat == 0
    assert cold.any() and (~cold).any()
    for channel in range(3):
        np.testing.assert_array_equal(shown[..., channel][cold], resized[cold])
    # warm pixels are tinted: their channels differ from one another
    warm = shown[heat >= 200]
    assert (warm.max(axis=1).astype(int) - warm.min(axis=1)).min() > 20


def test_overlay_at_the_same_size_does_not_resize():
    image = np.full((64, 32), 100, dtype=np.uint8)
    heat = np.zeros((64, 32), dtype=np.uint8)
    heat[10, 10] = 200
    shown = overlay(image, heat)
    assert shown.shape == (64, 32, 3)
    assert (shown[heat == 0] == 100).all()
    assert not (shown[10, 10] == 100).all()


def test_a_region_puts_the_map_where_the_model_looked_and_zero_elsewhere():
    # A thorax-framed model saw rows 100-300 and columns 200-800 of a 1000x500 image: its
    # peak at the map's top-left corner lands at the region's top-left, nothing outside.
    heat = heatmap(peaked_cam(0, 0), 1000, 500, region=(100, 200, 300, 800))
    assert heat.shape == (256, 512)
    rows, cols = np.nonzero(heat)
    scale = 512 / 1000
    assert rows.min() >= round(100 * scale) and rows.max() < round(300 * scale)
    assert cols.min() >= round(200 * scale) and cols.max() < round(800 * scale)
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert (peak_row, peak_col) == (round(100 * scale), round(200 * scale))
    whole = heatmap(peaked_cam(0, 0), 1000, 500)
    assert whole[0, 0] == 255 and heat[0, 0] == 0


@pytest.mark.parametrize("region", [(0, 0, 0, 10), (0, 0, 10, 11), (-1, 0, 5, 5), (5, 5, 4, 9)])
def test_a_region_outside_the_image_is_refused(region):
    with pytest.raises(ValueError):
        heatmap(peaked_cam(0, 0), 10, 10, region=region)
