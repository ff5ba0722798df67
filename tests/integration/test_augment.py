"""Training augmentation: shape, range, determinism and geometry, on TensorFlow (a hard
dependency imported plainly: a broken install fails these tests, never skips them). In the
integration tier because importing TensorFlow alone costs seconds; imported in each test, so
that collecting the unit tier (`-m "not integration"` collects every file) never pays it."""

import numpy as np
import pytest

from pneumonia.config import AugmentParams
from pneumonia.model.training import augment_batch

pytestmark = pytest.mark.integration

AUGMENT = AugmentParams(
    enabled=True,
    crop_scale_min=0.7,
    pad_max=0.2,
    aspect=0.2,
    horizontal_flip=True,
    rotation_degrees=10,
    brightness=0.1,
    contrast=0.2,
    gamma=0.2,
    noise_std=0.02,
    jpeg_quality_min=40,
)
# The box (from the whole image up to 1.2x, no stretch) and the mirror alone.
ONLY_GEOMETRY = AUGMENT.model_copy(
    update={
        "rotation_degrees": 0,
        "brightness": 0,
        "contrast": 0,
        "gamma": 0,
        "noise_std": 0,
        "jpeg_quality_min": 100,
        "crop_scale_min": 1.0,
        "aspect": 0.0,
    }
)


def test_augmentation_keeps_shape_and_range_and_is_reproducible():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (4, 32, 32, 1)).astype("float32"))

    def run(seed):
        return augment_batch(images, tf.random.Generator.from_seed(seed), AUGMENT).numpy()

    first = run(1)
    assert first.shape == (4, 32, 32, 1)
    assert first.min() >= 0.0 and first.max() <= 255.0
    assert not np.allclose(first, images.numpy(), atol=1.0)  # it changed the images
    np.testing.assert_array_equal(first, run(1))
    assert not np.array_equal(first, run(2))


def test_geometric_augmentation_crops_pads_and_mirrors():
    import tensorflow as tf

    # A bright left half: a mirror moves it right, a padded box adds black borders.
    images = np.zeros((64, 32, 32, 1), dtype="float32")
    images[:, :, :16] = 200.0
    out = augment_batch(tf.constant(images), tf.random.Generator.from_seed(0), ONLY_GEOMETRY)
    out = out.numpy()
    mirrored = out[:, 16, 28, 0] > 100  # the right side is bright only in a mirrored image
    assert 10 < mirrored.sum() < 54
    # Padding (box up to 1.2x the image) blacks out some border of the bright half.
    corner = np.where(mirrored, out[:, 0, 31, 0], out[:, 0, 0, 0])
    assert (corner < 100).sum() > 5
    no_flip = ONLY_GEOMETRY.model_copy(update={"horizontal_flip": False, "pad_max": 0.0})
    same = augment_batch(tf.constant(images), tf.random.Generator.from_seed(0), no_flip)
    np.testing.assert_allclose(same.numpy(), images, atol=1e-3)


def test_the_intensity_step_comes_after_the_random_box():
    import tensorflow as tf

    # A step that marks what it saw: each image's mean after the box, written everywhere.
    # With the box at 1.0 (no crop, no pad) and nothing else, the output is that step's
    # result on the input; with crops, its result on the cropped view, so the intensity
    # step ran after the box and on the rounded uint8 image, as prepare_image runs it.
    seen: list[int] = []

    def mark(image: np.ndarray) -> np.ndarray:
        assert image.dtype == np.uint8 and image.ndim == 2
        seen.append(1)
        return np.full_like(image, int(image.mean()))

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 1)).astype("float32")
    images[:, :, :16] = 0.0  # a dark left half: a crop's mean differs from the whole's
    plain = ONLY_GEOMETRY.model_copy(update={"pad_max": 0.0, "horizontal_flip": False})
    out = augment_batch(tf.constant(images), tf.random.Generator.from_seed(0), plain, mark)
    expected = np.rint(images).astype(np.uint8).mean(axis=(1, 2, 3)).astype(int)
    np.testing.assert_allclose(out.numpy()[:, 0, 0, 0], expected, atol=1e-3)
    assert len(seen) == 8
    cropped = plain.model_copy(update={"crop_scale_min": 0.5})
    out = augment_batch(tf.constant(images), tf.random.Generator.from_seed(0), cropped, mark)
    assert not np.allclose(out.numpy()[:, 0, 0, 0], expected, atol=1.0)


def test_sharpness_sharpens_or_blurs_an_edge_and_is_off_at_zero():
    import tensorflow as tf

    from pneumonia.model.training import _unsharp

    # A vertical step edge, 60 -> 180, in a 64 px image (a Gaussian of 0.64 px).
    images = np.full((3, 64, 64, 1), 60.0, dtype="float32")
    images[:, :, 32:] = 180.0
    out = _unsharp(tf.constant(images), tf.constant([0.0, 1.0, -1.0]), 64).numpy()[:, 32, :, 0]
    np.testing.assert_allclose(out[0], images[0, 32, :, 0], atol=1e-4)  # amount 0: as is
    assert out[1].min() < 55 and out[1].max() > 185  # sharpened: it over- and undershoots
    assert 60 < out[2][31] < out[2][32] < 180  # blurred: a ramp across the edge
    assert np.all(np.diff(out[2]) >= -1e-4)
    np.testing.assert_allclose(out[:, :20], 60, atol=1e-3)  # flat regions are untouched

    # In augment_batch: off at 0 (the same stream of randomness as before the option),
    # reproducible and changing the images when on.
    rng = np.random.default_rng(0)
    batch = tf.constant(rng.integers(0, 256, (4, 32, 32, 1)).astype("float32"))
    off = augment_batch(batch, tf.random.Generator.from_seed(1), AUGMENT)
    zero = AUGMENT.model_copy(update={"sharpness": 0.0})
    np.testing.assert_array_equal(
        off.numpy(), augment_batch(batch, tf.random.Generator.from_seed(1), zero).numpy()
    )
    sharp = AUGMENT.model_copy(update={"sharpness": 0.8})
    first = augment_batch(batch, tf.random.Generator.from_seed(1), sharp).numpy()
    np.testing.assert_array_equal(
        first, augment_batch(batch, tf.random.Generator.from_seed(1), sharp).numpy()
    )
    assert not np.allclose(first, off.numpy(), atol=1.0)
    # and in a tf.data graph, as training runs it (the resized batch has no static shape)
    generator = tf.random.Generator.from_seed(1)
    graph = tf.data.Dataset.from_tensor_slices(batch).batch(4)
    graph = graph.map(lambda images: augment_batch(images, generator, sharp))
    assert next(iter(graph)).shape == (4, 32, 32, 1)
