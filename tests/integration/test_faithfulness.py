"""Faithfulness checks of the class activation maps, on a small network trained on blobs.

One resnet (64 px, width 16, depth 3) is trained once per module on synthetic images whose
only evidence is a bright blob (~15-30 s on 2 CPU cores); every test reuses it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.model import faithfulness
from pneumonia.model.faithfulness import (
    blob_images,
    blob_peak_share,
    control_mask,
    deletion_test,
    gradcam,
    keras_cams,
    keras_logits,
    randomisation_test,
    randomised_copy,
    synthetic_blob_check,
    train_blob_model,
)

pytestmark = pytest.mark.integration

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def blob_model():
    return train_blob_model(IMAGE_SIZE, n=600, epochs=8, seed=0)


@pytest.fixture(scope="module")
def positives():
    images, labels, centres = blob_images(40, IMAGE_SIZE, np.random.default_rng(7), 1.0)
    assert labels.all()
    return images, centres


def test_synthetic_blob_check_puts_the_peak_on_the_blob(blob_model, monkeypatch):
    # synthetic_blob_check = train_blob_model + blob_peak_share; reuse the module's training
    monkeypatch.setattr(faithfulness, "train_blob_model", lambda *args, **kwargs: blob_model)
    result = synthetic_blob_check(IMAGE_SIZE, n=600, epochs=8, seed=0)
    assert set(result) == {"val_accuracy", "peak_on_blob"}
    assert result["val_accuracy"] >= 0.9
    assert result["peak_on_blob"] >= 0.9


def test_blob_images_are_what_the_check_assumes():
    images, labels, centres = blob_images(50, IMAGE_SIZE, np.random.default_rng(0))
    assert images.shape == (50, IMAGE_SIZE, IMAGE_SIZE, 1) and images.dtype == np.uint8
    assert 0 < labels.sum() < 50
    assert np.isnan(centres[labels == 0]).all() and np.isfinite(centres[labels == 1]).all()
    for image, centre in zip(images[labels == 1], centres[labels == 1], strict=True):
        row, col = np.rint(centre).astype(int)
        assert image[row, col, 0] > np.median(image) + 40  # the blob is bright


def test_gradcam_equals_the_rectified_explanation_map(blob_model, positives):
    model, _ = blob_model
    images, _ = positives
    reference = gradcam(model, images)
    cams = keras_cams(model, images)
    assert reference.shape == cams.shape == (len(images), 8, 8)
    assert reference.dtype == np.float32
    assert (reference >= 0).all()
    rectified = np.maximum(cams, 0)
    checked = 0
    for ours, theirs in zip(reference, rectified, strict=True):
        if np.ptp(theirs) == 0:
            continue
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99
        checked += 1
    assert checked >= 0.9 * len(images)
    # the explanation map's mean is the logit
    np.testing.assert_allclose(cams.mean(axis=(1, 2)), keras_logits(model, images), atol=1e-4)
    assert gradcam(model, images[:0]).shape == (0, 8, 8)


def test_deletion_hot_region_beats_the_control(blob_model, positives):
    model, _ = blob_model
    images, _ = positives
    cams = keras_cams(model, images)

    def logit_fn(batch):
        return keras_logits(model, batch)

    result = deletion_test(images, cams, logit_fn, share=0.1)
    assert set(result) == {
        "images",
        "share_hot_beats_control",
        "median_gap",
        "median_drop_hot",
        "median_drop_control",
    }
    assert result["images"] == len(images)
    assert all(np.isfinite(value) for value in result.values())
    assert 0.0 <= result["share_hot_beats_control"] <= 1.0
    assert result["share_hot_beats_control"] >= 0.8
    assert result["median_gap"] > 0
    assert result["median_drop_hot"] > result["median_drop_control"]
    # an inverted map blurs the coldest pixels: the test must not reward it
    inverted = deletion_test(images, -cams, logit_fn, share=0.1)
    assert inverted["median_gap"] < result["median_gap"]
    assert inverted["share_hot_beats_control"] < 0.5


def test_randomised_copy_has_new_weights_and_unrelated_maps(blob_model, positives):
    model, _ = blob_model
    images, _ = positives
    copy = randomised_copy(model, seed=0)
    assert [w.shape for w in copy.get_weights()] == [w.shape for w in model.get_weights()]
    assert copy.count_params() == model.count_params()
    result = randomisation_test(keras_cams(model, images), keras_cams(copy, images))
    assert result["images"] == len(images)
    assert -1.0 <= result["median_rank_correlation"] <= result["max_rank_correlation"] <= 1.0
    assert abs(result["median_rank_correlation"]) < 0.5
    # the same maps correlate perfectly
    same = randomisation_test(keras_cams(model, images[:5]), keras_cams(model, images[:5]))
    assert same["median_rank_correlation"] == pytest.approx(1.0)


def test_peak_share_of_an_untrained_network_is_low(blob_model):
    model, _ = blob_model
    untrained = randomised_copy(model, seed=3)
    # a random network's peak lands on the blob about as often as chance (~0.1 of the area)
    assert blob_peak_share(untrained, IMAGE_SIZE, n=50) < blob_peak_share(model, IMAGE_SIZE, n=50)


# ------------------------------------------------- the deletion test's geometry, no network


def test_control_mask_moves_the_region_where_it_overlaps_least():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:8] = True  # a full-width band: shifting in x overlaps it entirely
    control = control_mask(mask)
    assert control.sum() == mask.sum()
    assert not (control & mask).any()
    np.testing.assert_array_equal(control, np.roll(mask, 4, axis=0))
    square = np.zeros((8, 8), dtype=bool)
    square[1:3, 1:3] = True  # every shift avoids it: the first (x) wins
    np.testing.assert_array_equal(control_mask(square), np.roll(square, 4, axis=1))


def test_deletion_geometry_with_a_pixel_counting_logit():
    # logit = brightness of a fixed bright square; the map points at it
    images = np.full((3, 32, 32, 1), 100, dtype=np.uint8)
    images[:, 4:10, 4:10] = 250
    cams = np.zeros((3, 4, 4), dtype=np.float32)
    cams[:, 0:2, 0:2] = 1.0

    def logit_fn(batch):
        return batch[:, 4:10, 4:10, 0].astype(float).mean(axis=(1, 2))

    result = deletion_test(images, cams, logit_fn, share=0.1, sigma=4.0)
    assert result["images"] == 3
    assert result["share_hot_beats_control"] == 1.0
    assert result["median_drop_control"] == 0.0
    assert result["median_drop_hot"] > 50
    with pytest.raises(ValueError):
        deletion_test(images, cams[:2], logit_fn)
    with pytest.raises(ValueError):
        deletion_test(images, cams, logit_fn, share=1.0)
