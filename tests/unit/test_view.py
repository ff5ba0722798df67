"""The view check: its classical features, its fit and threshold, how serving combines it with
the intended-use head, and the statistics kept from radiographs that may not be copied."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.decision.use import as_such
from pneumonia.decision.view import (
    LATERAL,
    VIEW_FEATURES,
    VIEW_FEATURES_VERSION,
    VIEW_GRID,
    WHOLE_COPY_PIXELS,
    ViewCheck,
    cell_means,
    decide_kind,
    fit_view_check,
    refused_by_view,
    shrink,
    view_features,
    view_grid,
    with_view_threshold,
)
from pneumonia.evaluation.view import (
    KEPT_STATISTICS,
    VIEW_SHIFTS,
    VIEWED,
    combined,
    load_kept,
    save_kept,
    view_grids,
    view_rows,
)


def frontal(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A synthetic frontal film: two dark lung fields either side of a bright spine, mirrored."""
    x = np.linspace(-1, 1, size)
    lungs = np.exp(-((np.abs(x) - 0.45) ** 2) / 0.04)[np.newaxis, :] * np.ones((size, 1))
    image = 200 - 120 * lungs + rng.normal(0, 4, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def limb(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A synthetic limb radiograph: a narrow bright bone down the middle of a dark field."""
    x = np.linspace(-1, 1, size)
    profile = 20 + 200 * np.exp(-(x**2) / 0.01)
    image = profile[np.newaxis, :] * np.ones((size, 1)) + rng.normal(0, 4, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def lateral(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A synthetic lateral: one lung field, a bright spine at the right edge."""
    x = np.linspace(-1, 1, size)
    profile = 200 - 120 * np.exp(-((x + 0.1) ** 2) / 0.15) + 50 * (x > 0.7)
    image = profile[np.newaxis, :] * np.ones((size, 1)) + rng.normal(0, 4, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_the_grid_is_standardised_and_blind_to_bit_depth_and_exposure():
    rng = np.random.default_rng(0)
    image = frontal(rng)
    grid = view_grid(image)
    assert grid.shape == (VIEW_GRID, VIEW_GRID)
    assert abs(float(grid.mean())) < 1e-5 and abs(float(grid.std()) - 1) < 1e-4
    sixteen = image.astype(np.uint16) * 257 + 1000  # the same picture, 16-bit, offset
    np.testing.assert_allclose(view_grid(sixteen), grid, atol=1e-3)
    assert not view_grid(np.full((50, 40), 7, dtype=np.uint8)).any()  # uniform: zeros


def test_a_mirror_symmetric_image_has_no_asymmetry_and_a_lateral_has_some():
    symmetric = np.tile(np.concatenate([np.arange(48), np.arange(48)[::-1]]), (96, 1))
    features = view_features(view_grid(symmetric.astype(np.uint8))[np.newaxis])
    assert features.shape == (1, VIEW_FEATURES)
    np.testing.assert_allclose(features[0, VIEW_GRID**2 :], 0, atol=1e-5)
    side = view_features(view_grid(lateral(np.random.default_rng(1)))[np.newaxis])
    assert side[0, VIEW_GRID**2 :].max() > 0.5


def test_the_fit_separates_laterals_and_its_threshold_holds_each_blocks_rate():
    rng = np.random.default_rng(2)
    fronts = view_features(np.stack([view_grid(frontal(rng)) for _ in range(120)]))
    sides = view_features(np.stack([view_grid(lateral(rng)) for _ in range(40)]))
    check = fit_view_check(fronts[:80], sides[:30])
    assert check.threshold == 0.0
    held_fronts, held_sides = fronts[80:], sides[30:]
    blocks = [held_fronts[:20], held_fronts[20:]]
    set_check = with_view_threshold(check, blocks, 0.05)
    assert set_check.threshold >= 0.0
    for block in blocks:  # at most 5% of each block, i.e. none of 20
        assert set_check.lateral(block).mean() <= 0.05
    assert set_check.lateral(held_sides).all()
    # Blocks that score high raise the threshold until each holds the rate: laterals
    # passed as validation are then nearly all let through.
    raised = with_view_threshold(check, [*blocks, sides[:20]], 0.05)
    assert raised.threshold > set_check.threshold
    assert raised.lateral(sides[:20]).mean() <= 0.05


def test_serving_refuses_by_the_view_check_a_lateral_the_head_does_not_name_a_body_part():
    rng = np.random.default_rng(4)
    fronts = view_features(np.stack([view_grid(frontal(rng)) for _ in range(60)]))
    sides = view_features(np.stack([view_grid(lateral(rng)) for _ in range(30)]))
    limbs = view_features(np.stack([view_grid(limb(rng)) for _ in range(20)]))
    check = with_view_threshold(fit_view_check(fronts, sides[:20], limbs), [fronts], 0.05)
    assert check.lateral(sides[20:]).all()
    kinds = ["pediatric_chest"] * 10
    assert refused_by_view(check, sides[20:], kinds).all()
    assert not refused_by_view(check, sides[20:], ["other_body_part"] * 10).any()
    mixed = ["other_body_part", "adult_chest"] * 5
    np.testing.assert_array_equal(refused_by_view(check, sides[20:], mixed), [False, True] * 5)
    assert not refused_by_view(check, fronts[:10], kinds).any()
    assert not refused_by_view(None, sides[20:], kinds).any()  # a model without the check


def test_the_check_round_trips_through_its_arrays():
    check = ViewCheck(np.arange(VIEW_FEATURES, dtype=np.float64), -2.5, 1.25)
    arrays = check.arrays(prefix="view_")
    assert set(arrays) == {"view_weights", "view_bias", "view_threshold"}
    again = ViewCheck.from_arrays(arrays, prefix="view_")
    assert again is not None
    np.testing.assert_array_equal(again.weights, check.weights)
    assert (again.bias, again.threshold) == (-2.5, 1.25)
    assert ViewCheck.from_arrays({}, prefix="view_") is None


@pytest.mark.parametrize(
    ("head_kind", "called_lateral", "expected"),
    [
        ("pediatric_chest", True, LATERAL),
        ("adult_chest", True, LATERAL),
        ("lateral_chest", True, LATERAL),
        ("other_body_part", True, "other_body_part"),  # the head's body part stands
        (None, True, LATERAL),  # a graph without a head
        ("pediatric_chest", False, "pediatric_chest"),
        ("adult_chest", False, "adult_chest"),
        (None, False, None),
    ],
)
def test_a_lateral_call_refuses_as_a_lateral_unless_the_head_names_a_body_part(
    head_kind, called_lateral, expected
):
    assert decide_kind(head_kind, called_lateral) == expected


@pytest.mark.parametrize(
    ("head_outcome", "called_lateral", "expected"),
    [
        ("answered", True, VIEWED),
        ("refused by the gate as other_body_part", True, VIEWED),
        ("refused as adult_chest", True, VIEWED),
        ("refused as other_body_part", True, "refused as other_body_part"),
        (
            "refused before the model (not_a_chest_xray)",
            True,
            "refused before the model (not_a_chest_xray)",
        ),
        ("answered", False, "answered"),
    ],
)
def test_a_committed_images_outcome_combines_as_serving_decides(
    head_outcome, called_lateral, expected
):
    assert combined(head_outcome, called_lateral) == expected


def test_a_view_check_refusal_is_a_laterals_own_reason_only():
    assert as_such("lateral_chest", VIEWED)
    assert not as_such("adult_chest", VIEWED)
    assert not as_such("other_body_part", VIEWED)


def test_each_image_has_a_row_as_it_is_and_under_each_framing():
    image = frontal(np.random.default_rng(3), size=224)
    grids = view_grids(image)
    assert grids.shape == (len(VIEW_SHIFTS), VIEW_GRID, VIEW_GRID)
    np.testing.assert_array_equal(grids[0], view_grid(image))
    assert view_rows(image).shape == (len(VIEW_SHIFTS), VIEW_FEATURES)
    assert not np.allclose(grids[0], grids[VIEW_SHIFTS.index("border 20%")])


def test_the_committed_statistics_load_with_their_source_and_licence():
    kept = load_kept()
    assert len(kept) == 1
    (chexpert,) = kept
    assert chexpert.kinds.count("lateral_chest") == 32
    assert chexpert.kinds.count("adult_chest") == 202
    assert all(rows.shape == (len(VIEW_SHIFTS), VIEW_FEATURES) for rows in chexpert.rows)
    assert chexpert.source == "rishabhbhardwaj/ChestXRay-Classification@cb6db7ea"
    with np.load(next(KEPT_STATISTICS.glob("*.npz"))) as stored:
        assert "Research Use Agreement" in str(stored["licence"])
        assert "grids" in stored and "image" not in stored.files  # statistics, no pixels
        assert stored["grids"].shape[2:] == (VIEW_GRID, VIEW_GRID)


def test_statistics_of_another_version_are_refused(tmp_path):
    grids = np.zeros((2, len(VIEW_SHIFTS), VIEW_GRID, VIEW_GRID))
    source = {"repository": "a/b", "commit": "0" * 40, "licence": "none"}
    save_kept(tmp_path / "ok.npz", grids, ["lateral_chest", "adult_chest"], ["x", "y"], source)
    assert load_kept(tmp_path)[0].kinds == ["lateral_chest", "adult_chest"]
    with np.load(tmp_path / "ok.npz") as stored:
        older = {name: stored[name] for name in stored.files}
    older["version"] = np.array(VIEW_FEATURES_VERSION - 1)
    np.savez(tmp_path / "ok.npz", **older)
    with pytest.raises(ValueError, match="recompute them"):
        load_kept(tmp_path)
    with pytest.raises(ValueError, match="kinds"):
        save_kept(tmp_path / "bad.npz", grids, ["knee", "adult_chest"], ["x", "y"], source)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((224, 224), np.uint8),
        ((307, 222), np.uint8),
        ((130, 517), np.uint8),
        ((2016, 1701), np.uint16),
        ((1031, 1100), np.uint8),
    ],
)
def test_the_cell_means_are_cv2s_area_resize_of_a_float_copy_to_rounding(shape, dtype):
    """What the kept statistics were computed with; large images by `shrink`, a cell's rows
    at a time, never copied whole to float."""
    import cv2

    rng = np.random.default_rng(5)
    top = 255 if dtype == np.uint8 else 4095
    image = cv2.GaussianBlur(rng.integers(0, top, shape).astype(dtype), (0, 0), 5)
    copy = image.astype(np.float32)
    reference = cv2.resize(copy, (VIEW_GRID, VIEW_GRID), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(cell_means(image), reference, rtol=2e-6, atol=1e-3)
    banded = shrink(shrink(image, VIEW_GRID).T, VIEW_GRID).T
    np.testing.assert_allclose(banded, reference, rtol=2e-6, atol=1e-3)
    assert (image.size > WHOLE_COPY_PIXELS) == (shape[0] * shape[1] > 1 << 20)


def test_a_large_image_is_not_copied_whole_to_float():
    import tracemalloc

    image = np.random.default_rng(6).integers(0, 4095, (3000, 2000)).astype(np.uint16)
    assert image.size > WHOLE_COPY_PIXELS
    tracemalloc.start()
    view_grid(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < image.size * 4 / 2  # half of one float32 copy of it (24 MB): a cell's rows


def test_a_span_within_one_row_takes_that_row():
    image = np.arange(8 * 20, dtype=np.uint8).reshape(8, 20)
    means = shrink(image, VIEW_GRID)  # 8 rows into 16 spans: each row twice
    np.testing.assert_allclose(means[0::2], image)
    np.testing.assert_allclose(means[1::2], image)
