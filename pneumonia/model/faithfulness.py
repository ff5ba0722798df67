"""Do the class activation maps show what the model uses? Checks for evaluate and export.

- `gradcam`: TensorFlow Grad-CAM of the pneumonia logit, the reference an exported
  (ONNX) map is compared against;
- `deletion_test`: blurring the hottest pixels must lower the logit more than blurring
  the same-shaped region elsewhere;
- `randomisation_test` / `randomised_copy`: the maps of a network with random weights
  must not rank the pixels as the trained network's maps do;
- `synthetic_blob_check`: a small network trained on images whose only evidence is one
  bright blob must put its map's peak on the blob.

TensorFlow and Keras are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pneumonia.config import TrainParams
from pneumonia.model.network import build_model, with_explanations

if TYPE_CHECKING:
    import keras

LogitFn = Callable[[np.ndarray], np.ndarray]

CONTROL_SHIFTS = ((0, 1), (1, 0), (1, 1))  # (y, x) in half sides: right, down, both


# --------------------------------------------------------------------------- logits, maps


def _feature_head(model: keras.Model) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """(sub-model to the last feature map, dense kernel (C, 1), dense bias (1,))."""
    import keras

    pooling = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    )
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = dense.get_weights()
    features = keras.Model(model.inputs, pooling.input, name=f"{model.name}_features")
    return features, kernel.astype(np.float32), bias.astype(np.float32)


def keras_logits(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N,) float64 pneumonia logits (the input of the final sigmoid) of (N, S, S, 1) images."""
    features, kernel, bias = _feature_head(model)
    feature_map = features.predict(
        np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0
    )
    pooled = feature_map.astype(np.float64).mean(axis=(1, 2))
    return (pooled @ kernel.astype(np.float64) + bias).reshape(-1)


def keras_cams(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, h, w) float32 raw class activation maps (`with_explanations`' `cam` output)."""
    explained = with_explanations(model)
    outputs = explained.predict(
        np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0
    )
    return np.asarray(outputs[2], dtype=np.float32)


def gradcam(
    model: keras.Model, images: np.ndarray, batch_size: int = 32, rectify: bool = True
) -> np.ndarray:
    """(N, h, w) float32 Grad-CAM of the pneumonia logit w.r.t. the last feature map.

    The feature map A is the input of the model's GlobalAveragePooling2D layer; the logit
    is the dense layer applied to its average (the input of the sigmoid). With
    tf.GradientTape: weights_k = mean over (h, w) of d logit / d A_k, and the map is
    ReLU(sum_k weights_k * A_k) (the sum alone with `rectify=False`: on a map that is
    negative almost everywhere, the ReLU leaves only rounding noise to compare).
    Inference mode (batch norm statistics, no dropout).
    """
    import tensorflow as tf

    features, kernel, bias = _feature_head(model)
    pixels = np.asarray(images, dtype=np.float32)
    maps = []
    for start in range(0, len(pixels), batch_size):
        batch = tf.convert_to_tensor(pixels[start : start + batch_size])
        with tf.GradientTape() as tape:
            feature_map = features(batch, training=False)
            tape.watch(feature_map)
            logit = tf.matmul(tf.reduce_mean(feature_map, axis=(1, 2)), kernel) + bias
        gradients = tape.gradient(logit, feature_map)
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        combined = tf.einsum("bhwc,bc->bhw", feature_map, weights)
        maps.append((tf.nn.relu(combined) if rectify else combined).numpy())
    if not maps:
        shape = tuple(int(size) for size in features.output.shape[1:3])
        return np.zeros((0, *shape), dtype=np.float32)
    return np.concatenate(maps).astype(np.float32)


# --------------------------------------------------------------------------- deletion test


def _hot_mask(cam: np.ndarray, shape: tuple[int, int], share: float, rng: Any) -> np.ndarray:
    """(H, W) bool: the hottest `share` of the map upsampled bilinearly to `shape`.

    Exactly round(share * H * W) pixels (at least 1); ties are broken at random.
    """
    height, width = shape
    upsampled = cv2.resize(
        np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    ).reshape(-1)
    count = min(height * width, max(1, round(share * height * width)))
    order = np.lexsort((rng.random(upsampled.size), -upsampled))
    mask = np.zeros(upsampled.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(height, width)


def control_mask(mask: np.ndarray) -> np.ndarray:
    """The same-shaped mask moved elsewhere: a circular shift by half the side in x, y or both.

    The shift that overlaps the original mask least is kept (on ties, the first of x, y, both).
    """
    height, width = mask.shape
    candidates = [
        np.roll(mask, (dy * (height // 2), dx * (width // 2)), axis=(0, 1))
        for dy, dx in CONTROL_SHIFTS
    ]
    overlaps = [int(np.logical_and(mask, candidate).sum()) for candidate in candidates]
    return candidates[int(np.argmin(overlaps))]


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) uint8: a strong Gaussian blur of an (H, W) uint8 image (reflected borders)."""
    blurred = cv2.GaussianBlur(
        image.astype(np.float32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT
    )
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def _check_deletion_inputs(images: np.ndarray, cams: np.ndarray, share: float) -> None:
    """Raise ValueError unless images are (N, H, W, 1), cams (N, h, w) and 0 < share < 1."""
    if images.ndim != 4 or images.shape[-1] != 1 or len(images) == 0:
        raise ValueError(f"expected (N, H, W, 1) images with N >= 1, got {images.shape}")
    if cams.ndim != 3 or len(cams) != len(images):
        raise ValueError(f"expected ({len(images)}, h, w) maps, got {cams.shape}")
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")


def deletion_test(
    images: np.ndarray,
    cams: np.ndarray,
    logit_fn: LogitFn,
    share: float = 0.1,
    sigma: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Blur the hottest `share` of each map and a same-shaped control region; compare drops.

    `images` (N, S, S, 1) uint8 (pass positive images), `cams` (N, h, w) their maps (raw or
    rectified: only the ranking matters). The masked pixels are replaced by a Gaussian blur
    of the image (sigma default: image side / 8). drop = logit(original) - logit(blurred),
    `logit_fn(images) -> (N,) logits` batches as it likes. A faithful map has
    drop_hot > drop_control for most images.
    """
    images = np.asarray(images)
    cams = np.asarray(cams)
    _check_deletion_inputs(images, cams, share)
    height, width = images.shape[1:3]
    sigma = max(height, width) / 8 if sigma is None else sigma
    rng = np.random.default_rng(seed)
    hot = images.copy()
    control = images.copy()
    for index, (image, cam) in enumerate(zip(images[..., 0], cams, strict=True)):
        blurred = _blurred(image, sigma)
        mask = _hot_mask(cam, (height, width), share, rng)
        hot[index, ..., 0] = np.where(mask, blurred, image)
        control[index, ..., 0] = np.where(control_mask(mask), blurred, image)
    original = np.asarray(logit_fn(images), dtype=np.float64).reshape(-1)
    drop_hot = original - np.asarray(logit_fn(hot), dtype=np.float64).reshape(-1)
    drop_control = original - np.asarray(logit_fn(control), dtype=np.float64).reshape(-1)
    return {
        "images": len(images),
        "share_hot_beats_control": float(np.mean(drop_hot > drop_control)),
        "median_gap": float(np.median(drop_hot - drop_control)),
        "median_drop_hot": float(np.median(drop_hot)),
        "median_drop_control": float(np.median(drop_control)),
    }


# ---------------------------------------------------------------------- randomisation test


def randomisation_test(trained_cams: np.ndarray, random_cams: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation per image between a trained and a randomised model's maps.

    Maps are flattened; a map that is constant has no ranking and is left out (NaN when
    every image is). Low values mean the maps depend on the learned weights.
    """
    from scipy.stats import spearmanr  # scipy is a dependency of scikit-learn

    trained = np.asarray(trained_cams, dtype=np.float64)
    randomised = np.asarray(random_cams, dtype=np.float64)
    if trained.shape != randomised.shape or trained.ndim < 2 or len(trained) == 0:
        raise ValueError(
            f"expected two equal (N, h, w) stacks, got {trained.shape}, {randomised.shape}"
        )
    correlations = np.array(
        [
            spearmanr(a.ravel(), b.ravel()).statistic if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan
            for a, b in zip(trained, randomised, strict=True)
        ],
        dtype=np.float64,
    )
    finite = correlations[np.isfinite(correlations)]
    return {
        "images": len(trained),
        "median_rank_correlation": float(np.median(finite)) if finite.size else float("nan"),
        "max_rank_correlation": float(np.max(finite)) if finite.size else float("nan"),
    }


def randomised_copy(model: keras.Model, seed: int = 0) -> keras.Model:
    """The same architecture with fresh random weights (keras.models.clone_model).

    Every layer is rebuilt from its config, so kernels get new draws of their initialisers
    and batch norm statistics are reset (mean 0, variance 1). Seeds Python, numpy and
    TensorFlow globally with `seed` (keras.utils.set_random_seed) for a repeatable copy.
    """
    import keras

    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    if any(
        np.array_equal(old, new)
        for old, new in zip(model.get_weights(), copy.get_weights(), strict=True)
        if old.size > 1 and np.ptp(old) > 0
    ):
        raise RuntimeError("clone_model kept some trained weights")
    return copy


# ------------------------------------------------------------------- synthetic blob check


def blob_images(
    n: int, image_size: int, rng: Any, positive_share: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic images: smooth random background at mid gray, positives with one blob.

    Returns (N, S, S, 1) uint8 images, (N,) uint8 labels (1 = blob) and (N, 2) float blob
    centres (row, col) in pixels (NaN for negatives). The blob is a bright Gaussian whose
    radius (2 sigma) is `blob_radius(image_size)`.
    """
    radius = blob_radius(image_size)
    noise = rng.normal(size=(n, image_size, image_size)).astype(np.float32)
    background = np.stack(
        [cv2.GaussianBlur(plane, (0, 0), sigmaX=image_size / 16) for plane in noise]
    )
    background /= background.std(axis=(1, 2), keepdims=True) + 1e-6
    pixels = 128.0 + 15.0 * background
    labels = (rng.random(n) < positive_share).astype(np.uint8)
    centres = np.full((n, 2), np.nan)
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    for index in np.flatnonzero(labels):
        centre = rng.uniform(radius, image_size - 1 - radius, size=2)
        distance2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
        pixels[index] += 90.0 * np.exp(-distance2 / (2 * (radius / 2) ** 2))
        centres[index] = centre
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)[..., None]
    return images, labels, centres


def blob_radius(image_size: int) -> float:
    """The blob's radius in pixels: a tenth of the image side."""
    return image_size / 10


def train_blob_model(
    image_size: int = 64, n: int = 600, epochs: int = 8, seed: int = 0, width: int = 16
) -> tuple[keras.Model, float]:
    """(model, validation accuracy): a small resnet fitted on `n` synthetic blob images.

    `build_model` with depth 3, no dropout, Adam; stops early once the validation
    accuracy (n // 4 fresh images) reaches 0.98.
    """
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    train_images, train_labels, _ = blob_images(n, image_size, rng)
    val_images, val_labels, _ = blob_images(max(1, n // 4), image_size, rng)
    params = TrainParams.model_validate({**_BLOB_TRAIN, "width": width, "epochs": epochs})
    model = build_model(image_size, params)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    accuracy = 0.0
    for _ in range(epochs):
        model.fit(
            train_images.astype(np.float32),
            train_labels,
            batch_size=params.batch_size,
            epochs=1,
            verbose=0,
        )
        probabilities = model.predict(val_images.astype(np.float32), verbose=0).reshape(-1)
        accuracy = float(np.mean((probabilities >= 0.5) == (val_labels == 1)))
        if accuracy >= 0.98:
            break
    return model, accuracy


def blob_peak_share(model: keras.Model, image_size: int, n: int = 100, seed: int = 1) -> float:
    """Share of `n` fresh positives whose map peak is within 1.5 blob radii of the blob centre.

    The peak is the argmax of the `with_explanations` map upsampled bilinearly to the image.
    """
    rng = np.random.default_rng(seed)
    images, _, centres = blob_images(n, image_size, rng, positive_share=1.0)
    cams = keras_cams(model, images)
    hits = 0
    for cam, centre in zip(cams, centres, strict=True):
        upsampled = cv2.resize(cam, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
        peak = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
        hits += bool(np.hypot(*(np.asarray(peak) - centre)) <= 1.5 * blob_radius(image_size))
    return hits / n


def synthetic_blob_check(
    image_size: int = 64, n: int = 600, epochs: int = 8, seed: int = 0
) -> dict[str, float]:
    """Train on blob images, then check the map's peak lies on the blob of 100 fresh positives.

    Returns {"val_accuracy": ..., "peak_on_blob": share}; a faithful map gives both near 1.
    """
    model, accuracy = train_blob_model(image_size, n, epochs, seed)
    return {
        "val_accuracy": accuracy,
        "peak_on_blob": blob_peak_share(model, image_size, seed=seed + 1),
    }


_BLOB_TRAIN: dict[str, Any] = {
    "architecture": "resnet",
    "depth": 3,
    "dropout": 0.0,
    "batch_size": 32,
    "learning_rate": 0.003,
    "weight_decay": 0.0,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "class_weight": "none",
    "early_stopping_patience": 1,
    "distribution": "default",
    "augment": {
        "enabled": False,
        "crop_scale_min": 1.0,
        "pad_max": 0.0,
        "aspect": 0.0,
        "horizontal_flip": False,
        "rotation_degrees": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "gamma": 0.0,
        "noise_std": 0.0,
        "jpeg_quality_min": 100,
    },
}
