"""The thorax box the framing shifts are built from, on the committed sample of real X-rays,
and the framing shifts themselves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumonia.evaluation.shifts import FRAMING, MAX_ASPECT, _border, _thorax_crop
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.framing import Box, find_thorax
from pneumonia.images.prepare import apply_intensity, model_region, prepare_image
from tests.conftest import SAMPLE_DATA

FILES = sorted(SAMPLE_DATA.glob("train/*/*.jpeg"))


def gray(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def synthetic_chest(height: int = 240, width: int = 200) -> tuple[np.ndarray, Box]:
    """A bright body on black, with two dark lungs either side of a bright mediastinum; the
    box of the lungs is known."""
    image = np.zeros((height, width), np.uint8)
    image[20:230, 20:180] = 190  # the body, 20 px of black around it
    cv2.ellipse(image, (65, 110), (32, 70), 0, 0, 360, 70, -1)  # right lung (image left)
    cv2.ellipse(image, (135, 110), (32, 70), 0, 0, 360, 70, -1)  # left lung
    image[60:180, 96:104] = 230  # the spine
    return image, Box(top=40, left=33, bottom=180, right=167)


def test_the_box_of_a_drawn_chest_is_its_lungs_with_a_small_margin():
    image, lungs = synthetic_chest()
    box = find_thorax(image)
    for side in ("top", "left", "bottom", "right"):
        assert abs(getattr(box, side) - getattr(lungs, side)) <= 16, side


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_sample_x_ray_has_a_large_central_box_inside_it(path):
    image = gray(path)
    box = find_thorax(image)
    height, width = image.shape
    assert 0 <= box.top < box.bottom <= height and 0 <= box.left < box.right <= width
    assert box.width >= 0.5 * width and box.height >= 0.35 * height
    assert abs((box.left + box.right) / 2 - width / 2) <= 0.2 * width


@pytest.mark.parametrize("mode", ["constant", "edge"], ids=["black border", "edges repeated"])
def test_a_margin_moves_the_box_with_the_image_on_most_samples(mode):
    # A black border, and a margin that repeats the edge rows and columns (a zoomed-out copy:
    # flat bands), are cut off before the profiles are read: the box is the same box, offset.
    moved = []
    for path in FILES:
        image = gray(path)
        box, padded = find_thorax(image), find_thorax(np.pad(image, ((10, 40), (50, 5)), mode=mode))
        moved.append(
            max(
                abs(padded.top - 10 - box.top),
                abs(padded.bottom - 10 - box.bottom),
                abs(padded.left - 50 - box.left),
                abs(padded.right - 50 - box.right),
            )
        )
    assert np.median(moved) <= 2 and np.percentile(moved, 90) <= 12


def test_flat_bands_are_border_rows_that_repeat_the_row_inside_them():
    from pneumonia.images.framing import _flat_bands

    image = np.random.default_rng(0).random((50, 40)).astype(np.float32)
    assert _flat_bands(image, 0.01) == (0, 0)
    assert _flat_bands(np.pad(image, ((7, 3), (0, 0)), mode="edge"), 0.01) == (7, 3)
    assert _flat_bands(np.pad(image, ((2, 0), (0, 0)), mode="edge"), 0.01) == (0, 0)  # < 3 rows
    # a row that differs (a black border's last one, blended) may come first: cut with it
    blended = np.vstack(
        [np.full((1, 40), 0.9, np.float32), np.pad(image, ((6, 0), (0, 0)), "edge")]
    )
    assert _flat_bands(blended, 0.01) == (7, 0)
    # a smooth gradient: each row is close to the next one, but not to the row inside it
    ramp = np.vstack([np.full((1, 40), v, np.float32) for v in np.linspace(0.2, 0.3, 20)])
    assert _flat_bands(np.vstack([ramp, image]), 0.01) == (0, 0)
    assert _flat_bands(np.full((20, 20), 0.5, np.float32), 0.01) == (0, 0)  # nothing inside


def test_a_flat_band_is_cut_only_where_a_quarter_of_each_axis_is_left():
    from pneumonia.images.framing import _content

    image = np.random.default_rng(1).random((100, 100)).astype(np.float32)
    assert _content(np.pad(image, ((20, 20), (30, 10)), mode="edge")) == Box(20, 30, 120, 130)
    # rows: cutting would leave 30 of 130, under a quarter (32): kept whole; columns: cut
    tall = np.pad(image[:30], ((50, 50), (20, 10)), mode="edge")
    assert _content(tall) == Box(0, 20, 130, 120)
    taller = np.pad(image[:40], ((45, 45), (0, 0)), mode="edge")  # 40 of 130 rows: cut
    assert _content(taller) == Box(45, 0, 85, 100)


def test_an_upsampled_or_blurred_x_ray_has_no_flat_band(monkeypatch):
    # Their edge rows nearly repeat, one or two deep, and smooth rows follow one another
    # closely: not flat bands, so the box is the one found with no flat band cut at all.
    from pneumonia.images import framing

    changed = []
    for path in FILES:
        image = gray(path)
        small = cv2.resize(image, (image.shape[1] // 4, image.shape[0] // 4), cv2.INTER_AREA)
        changed += [
            cv2.resize(small, image.shape[::-1], interpolation=cv2.INTER_LINEAR),
            cv2.GaussianBlur(image, (0, 0), 2),
        ]
    boxes = [find_thorax(image) for image in changed]
    monkeypatch.setattr(framing, "FLAT", -1.0)  # every row differs from the next: no band
    same = [find_thorax(image) == box for image, box in zip(changed, boxes, strict=True)]
    assert np.mean(same) >= 0.98, np.mean(same)


def test_a_black_border_around_a_flat_band_is_cut_with_it_at_full_resolution():
    image = cv2.resize(gray(FILES[0]), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    box = find_thorax(image)
    framed = np.pad(np.pad(image, 100, mode="edge"), 120)  # zoomed out, then a black border
    other = find_thorax(framed)
    assert max(abs(getattr(other, s) - 220 - getattr(box, s)) for s in Box.__annotations__) <= 24


def test_a_uniform_image_still_gets_a_box_inside_it():
    box = find_thorax(np.full((100, 80), 128, np.uint8))
    assert 0 <= box.top < box.bottom <= 100 and 0 <= box.left < box.right <= 80


def test_the_thorax_crop_is_tighter_than_the_image_and_not_wider_than_collimation_allows():
    for path in FILES[::10]:
        image = gray(path).astype(np.float32) / 255
        crop = _thorax_crop(image)
        assert crop.size < image.size
        assert crop.shape[1] / crop.shape[0] <= MAX_ASPECT + 0.02


def test_borders_are_black_and_uneven_ones_put_the_same_area_on_two_sides():
    image = np.ones((100, 200), np.float32)
    even = FRAMING["border 10%"](image)
    assert even.shape == (120, 240) and even[:10].max() == 0 and even[:, :20].max() == 0
    uneven = _border(image, 0.10, (0.4, 1.6, 1.6, 0.4))
    assert uneven.shape == even.shape
    assert uneven[:4].max() == 0 and uneven[4:, 32:].min() == 0  # 4 px on top, 16 below...
    assert uneven[4:104, 32:232].min() == 1  # ...32 px on the left, 8 on the right


def test_a_zoom_out_repeats_the_edges_around_the_whole_image():
    image = np.arange(100 * 200, dtype=np.float32).reshape(100, 200) / (100 * 200)
    zoomed = FRAMING["zoom out 10%"](image)
    assert zoomed.shape == (120, 240)
    np.testing.assert_array_equal(zoomed[10:110, 20:220], image)
    np.testing.assert_array_equal(zoomed[:10, 20:220], np.repeat(image[:1], 10, axis=0))
    np.testing.assert_array_equal(zoomed[10:110, :20], np.repeat(image[:, :1], 20, axis=1))
    assert (zoomed[:10, :20] == image[0, 0]).all()
    assert FRAMING["zoom out 20%"](image).shape == (140, 280)


def test_the_rotation_leaves_black_corners_and_crops_cut_the_share_asked():
    image = np.ones((100, 100), np.float32)
    rotated = FRAMING["rotation 5 deg, black corners"](image)
    assert rotated.shape == image.shape and rotated[0, 0] == 0 and rotated[50, 50] == 1
    assert FRAMING["crop 15%"](image).shape == (70, 70)
    assert FRAMING["crop 8%"](image).shape == (84, 84)


def test_the_worst_framing_is_the_lowest_figure_or_the_highest_share_with_its_shift():
    from pneumonia.evaluation.framing import worst_framing

    def row(specificity: float, refused: float) -> dict[str, float]:
        figures = dict.fromkeys(("roc_auc", "accuracy", "sensitivity", "accuracy_decided"), 0.9)
        return {
            **figures,
            "specificity": specificity,
            "refused": refused,
            "share_indeterminate": 0.1,
        }

    worst = worst_framing({"crop 8%": row(0.56, 0.02), "border 10%": row(0.71, 0.40)})
    assert (worst["specificity"], worst["specificity_shift"]) == (0.56, "crop 8%")
    assert (worst["refused"], worst["refused_shift"]) == (0.40, "border 10%")


def test_a_full_resolution_image_gets_the_box_of_its_smaller_copy_scaled_up():
    # Searched on a copy shrunk to 256 px: the box is the small image's, in full-size px.
    image = gray(FILES[0])
    large = cv2.resize(image, (896, 1120), interpolation=cv2.INTER_CUBIC)
    box, small = find_thorax(large), find_thorax(cv2.resize(large, (205, 256)))
    assert abs(box.top - small.top * 4.375) <= 6 and abs(box.bottom - small.bottom * 4.375) <= 6
    assert abs(box.left - small.left * 4.37) <= 6 and abs(box.right - small.right * 4.37) <= 6


THORAX = PreprocessConfig(
    image_size=64, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8, framing="thorax"
)


def test_thorax_framing_feeds_the_model_the_box_resized_and_full_framing_the_whole_image():
    image = gray(FILES[0])
    box = find_thorax(image)
    expected = cv2.resize(
        image[box.top : box.bottom, box.left : box.right], (64, 64), interpolation=cv2.INTER_AREA
    )
    np.testing.assert_array_equal(prepare_image(image, THORAX)[..., 0], expected)
    full = THORAX.model_copy(update={"framing": "full"})
    assert model_region(image, full) == Box(0, 0, *image.shape)
    whole = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepare_image(image, full)[..., 0], whole)


def test_thorax_framing_gives_nearly_the_same_input_with_or_without_a_black_border():
    # What canonical framing is for: a scanned film's border (or a wider collimation) and
    # the plain image reach the model as nearly the same pixels; full framing does not.
    thorax, full = [], []
    for path in FILES:
        image = gray(path)
        bordered = _border(image, 0.10, (0.4, 1.6, 1.6, 0.4))
        for config, out in (
            (THORAX, thorax),
            (THORAX.model_copy(update={"framing": "full"}), full),
        ):
            plain = prepare_image(image, config).astype(np.float32)
            out.append(np.abs(plain - prepare_image(bordered, config)).mean())
    assert np.median(thorax) < 0.5 * np.median(full)
    assert np.median(thorax) <= 12  # gray levels out of 255


def test_params_without_framing_mean_the_whole_image():
    config = PreprocessConfig(
        image_size=64, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    assert config.framing == "full"
    with pytest.raises(ValueError):
        PreprocessConfig(**{**config.model_dump(), "framing": "lungs"})


def test_the_band_evidence_takes_each_rates_worst_over_the_shifts_not_the_unchanged_images():
    from pneumonia.evaluation.framing import worst_band

    def rates(indeterminate: float, accuracy: float) -> dict:
        return {"0.02": {"share_indeterminate": indeterminate, "accuracy_decided": accuracy}}

    bands = {
        "unchanged": rates(0.50, 0.10),  # the baseline, not a shift: never the worst
        "crop 8%": rates(0.12, 0.97),
        "crop 15%": rates(0.20, 0.96),
        "border 10%": rates(0.10, 0.94),
    }
    assert worst_band(bands) == {"0.02": {"share_indeterminate": 0.20, "accuracy_decided": 0.94}}


@pytest.mark.parametrize("intensity", ["none", "equalize", "clahe"])
def test_the_intensity_step_split_off_gives_the_model_input_back(intensity):
    # training stores the images before the intensity step and applies it after augmenting:
    # the two halves must be exactly prepare_image, or training sees another input than serving
    config = THORAX.model_copy(update={"intensity": intensity})
    for path in FILES[:5]:
        data = path.read_bytes()
        before = prepare_image(data, config, intensity=False)
        assert before.shape == (64, 64, 1) and before.dtype == np.uint8
        np.testing.assert_array_equal(
            apply_intensity(before[..., 0], config), prepare_image(data, config)[..., 0]
        )


def test_clahe_depends_on_the_field_of_view():
    # why training applies it after the random box: CLAHE of a zoomed view is not the zoomed
    # view of CLAHE (a tighter collimation reaches the model with other local contrast)
    config = THORAX.model_copy(update={"intensity": "clahe", "image_size": 128})
    before = prepare_image(gray(FILES[0]), config, intensity=False)[..., 0]
    centre = before[16:112, 16:112]
    zoom_first = apply_intensity(cv2.resize(centre, (128, 128)), config)
    clahe_first = cv2.resize(apply_intensity(before, config)[16:112, 16:112], (128, 128))
    assert np.abs(zoom_first.astype(int) - clahe_first.astype(int)).mean() > 3


def test_each_refusal_is_counted_under_the_name_the_endpoint_gives_it():
    """Without the reason head or the view check, the intended-use head's kind names a
    refusal; the cheap checks' refusals are `not_a_chest_xray`; every code is counted."""
    from pneumonia.evaluation.framing import REASON_CODES, refusal_names
    from pneumonia.serving.classifier import Namer

    kinds = [None, "adult_chest", "lateral_chest", "other_body_part", "adult_chest"]
    counts = refusal_names(FILES[:5], FRAMING["crop 8%"], Namer(), kinds, [False] * 4 + [True])
    assert counts == {"lateral_view": 1, "not_a_chest_xray": 2, "outside_training_population": 2}
    assert list(counts) == REASON_CODES
    assert refusal_names([], FRAMING["crop 8%"], Namer(), [], []) == dict.fromkeys(REASON_CODES, 0)
