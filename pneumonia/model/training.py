"""Training the Keras CNN: the tf.data pipelines and augmentation, the optimiser, the
distribution strategy (one machine, several GPUs, or several workers), and the fit."""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia import machine, tracking
from pneumonia.config import AugmentParams, TrainParams

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger("train")

IntensityStep = Callable[[np.ndarray], np.ndarray]  # (S, S) uint8 -> (S, S) uint8


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """'balanced': n / (2 * n_class), so each class carries half the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2)
    return {cls: float(len(labels) / (2 * count)) for cls, count in enumerate(counts) if count}


def describe_device() -> str:
    """The accelerator TensorFlow will use: 'cuda:<name>', 'metal', or 'cpu'."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    if sys.platform == "darwin":
        return f"metal ({len(gpus)} GPU)"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"cuda:{details.get('device_name', 'GPU')} x{len(gpus)}"


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """tf.distribute strategy by params; 'auto' mirrors over several local GPUs.

    'multi_worker_mirrored' reads the cluster from TF_CONFIG and must be created before any
    other TensorFlow op: `main` creates it first.
    """
    import tensorflow as tf

    if name == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":  # reads TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the model and the records: always, except on a worker of a
    multi-worker cluster other than the chief (the `chief` task, else worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and ("chief" not in resolver.cluster_spec().as_dict())
    )


def prepare_multi_worker(
    model: keras.Model, strategy: tf.distribute.Strategy, train_ds: tf.data.Dataset
) -> None:
    """Two workarounds for Keras 3's TensorFlow trainer under a multi-worker strategy
    (keras-team/keras#20585, open for Keras 3.15): its first-batch symbolic build reduces the
    whole (images, labels) structure, and its "mean" reduction of per-replica scalars (loss,
    metrics) asks for axis 0; with more than one worker, both raise. The model is built here
    on one batch instead, and scalars are averaged over the replicas (axis=None), so every
    worker logs the same values and early stopping stops them at the same epoch."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    with strategy.scope():
        images, labels = next(iter(train_ds))
        model._symbolic_build(data_batch=(images[:1], labels[:1]))
    model._maybe_symbolic_build = lambda *args, **kwargs: None  # type: ignore[method-assign]
    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return keras_reduce(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def average_statistics(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Average the non-trainable weights (batch normalisation's moving mean and variance)
    over the workers. The trainable ones are equal on every worker (their gradients are
    all-reduced), but each worker's moving statistics saw only its own shard of the
    batches; their mean is the estimate over all of them, and the workers end equal."""
    import tensorflow as tf

    for variable in model.non_trainable_weights:
        local = strategy.run(lambda variable=variable: tf.identity(variable.value))
        variable.assign(strategy.reduce("MEAN", local, axis=None))


def weights_digest(model: keras.Model) -> str:
    """sha256 of the model's weights, in order: equal on every worker of one run."""
    import hashlib

    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def _intensity_after(images: tf.Tensor, intensity: IntensityStep) -> tf.Tensor:
    """`intensity` on each (S, S) image of a (B, S, S, 1) float32 batch, rounded to uint8
    first as `prepare_image` rounds before its intensity step."""
    import tensorflow as tf

    def run(batch: np.ndarray) -> np.ndarray:
        pixels = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        return np.stack([intensity(image[..., 0])[..., np.newaxis] for image in pixels]).astype(
            np.float32
        )

    result = tf.numpy_function(run, [images], tf.float32, stateful=False)
    result.set_shape(images.shape)
    return result


SHARPNESS_SIGMA = 0.01  # of the image side: the unsharp mask's Gaussian (1.6 px at 160 px)


def _unsharp(images: tf.Tensor, amount: tf.Tensor, side: int) -> tf.Tensor:
    """images + amount * (images - blurred), per image, clipped to [0, 255]: above 0 it
    sharpens, below 0 it blurs (-1: the Gaussian-blurred image itself). `side`: the
    images' side in px (a static int: a graph's resized batch has no static shape)."""
    import tensorflow as tf

    sigma = max(0.5, SHARPNESS_SIGMA * side)
    radius = math.ceil(3 * sigma)
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma) ** 2)
    taps /= tf.reduce_sum(taps)
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    blurred = tf.nn.conv2d(padded, tf.reshape(taps, [-1, 1, 1, 1]), 1, "VALID")
    blurred = tf.nn.conv2d(blurred, tf.reshape(taps, [1, -1, 1, 1]), 1, "VALID")
    sharpened = images + amount[:, None, None, None] * (images - blurred)
    return tf.clip_by_value(sharpened, 0.0, 255.0)


def _photometric(
    images: tf.Tensor, generator: tf.random.Generator, config: AugmentParams
) -> tf.Tensor:
    """Gamma, contrast, brightness, noise and JPEG re-compression, in that order."""
    import tensorflow as tf

    pixels = images / 255.0
    batch = tf.shape(images)[0]
    shape = [batch, 1, 1, 1]
    if config.gamma > 0:
        log_gamma = generator.uniform(shape, -math.log1p(config.gamma), math.log1p(config.gamma))
        pixels = tf.pow(tf.clip_by_value(pixels, 1e-6, 1.0), tf.exp(log_gamma))
    if config.contrast > 0:
        factor = generator.uniform(shape, 1 - config.contrast, 1 + config.contrast)
        mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
        pixels = mean + (pixels - mean) * factor
    if config.brightness > 0:
        pixels += generator.uniform(shape, -config.brightness, config.brightness)
    if config.noise_std > 0:
        pixels += generator.normal(tf.shape(pixels)) * config.noise_std
    pixels = tf.clip_by_value(pixels, 0.0, 1.0)

    if config.jpeg_quality_min < 100:
        quality = generator.uniform([batch], config.jpeg_quality_min, 101, dtype=tf.int32)
        pixels = tf.map_fn(
            lambda item: tf.image.adjust_jpeg_quality(item[0], item[1]),
            (pixels, quality),
            fn_output_signature=tf.float32,
        )
    return pixels * 255.0


def augment_batch(
    images: tf.Tensor,
    generator: tf.random.Generator,
    config: AugmentParams,
    intensity: IntensityStep | None = None,
) -> tf.Tensor:
    """Random resized box (crop or pad), flip, rotation, sharpness, gamma, contrast,
    brightness, noise, JPEG.

    images: (B, S, S, 1) float32 in [0, 255]. Randomness comes from one seeded
    tf.random.Generator, called in order, so runs are reproducible. `intensity`: the
    preprocessing's intensity step, applied after the box, flip and rotation (the images
    then come before it), as serving computes it on the field of view an image has.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    side = images.shape[2]  # static here; the resized batch below has none

    def uniform(low: float, high: float) -> tf.Tensor:
        return generator.uniform([batch], low, high)

    # Random resized box: side `scale` of the image's (< 1 crops in, > 1 pads with black, as a
    # detector with another collimation or field of view frames the chest), its aspect ratio
    # stretched by up to `aspect`, placed anywhere the image still fills it on a crop.
    scale = uniform(config.crop_scale_min, 1.0 + config.pad_max)
    stretch = tf.exp(uniform(-math.log1p(config.aspect), math.log1p(config.aspect)) / 2)
    height, width = scale * stretch, scale / stretch
    top, left = uniform(0.0, 1.0) * (1 - height), uniform(0.0, 1.0) * (1 - width)
    boxes = tf.stack([top, left, top + height, left + width], axis=1)
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch), size)
    if config.horizontal_flip:
        flip = uniform(0.0, 1.0) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)

    if config.rotation_degrees > 0:
        angle = uniform(-1.0, 1.0) * (config.rotation_degrees * math.pi / 180)
        cos, sin = tf.cos(angle), tf.sin(angle)
        height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
        # Rotation about the centre, as keras.layers.RandomRotation builds it.
        x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2
        y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=size,
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )

    if config.sharpness > 0:
        images = _unsharp(images, uniform(-config.sharpness, config.sharpness), int(side))

    if intensity is not None:
        images = _intensity_after(images, intensity)

    return _photometric(images, generator, config)


def uses_mixup(params: TrainParams) -> bool:
    """Whether training blends batches (mixup), so that the batches carry the class weights."""
    return params.augment.enabled and params.augment.mixup_alpha > 0


def mixup_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    generator: tf.random.Generator,
    alpha: float,
    weights: dict[int, float] | None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018): each image blended with its batch's reversed order.

    lambda ~ Beta(alpha, alpha) per image, folded to [0.5, 1] so each image keeps the larger
    share; the labels and the class weights (`weights`, by class id; None: 1) are blended by
    the same lambda. Returns (images, labels, sample weights) for `model.fit`.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    seeds = generator.make_seeds(2)
    first = tf.random.stateless_gamma([batch], seed=seeds[:, 0], alpha=alpha)
    second = tf.random.stateless_gamma([batch], seed=seeds[:, 1], alpha=alpha)
    lam = first / tf.maximum(first + second, 1e-12)
    lam = tf.maximum(lam, 1.0 - lam)
    per_class = tf.constant(
        [weights.get(0, 1.0), weights.get(1, 1.0)] if weights else [1.0, 1.0], tf.float32
    )
    sample_weights = tf.gather(per_class, tf.cast(tf.round(labels[:, 0]), tf.int32))
    partner = tf.reverse(tf.range(batch), axis=[0])
    mix = lam[:, None, None, None]
    images = mix * images + (1 - mix) * tf.gather(images, partner)
    labels = lam[:, None] * labels + (1 - lam[:, None]) * tf.gather(labels, partner)
    sample_weights = lam * sample_weights + (1 - lam) * tf.gather(sample_weights, partner)
    return images, labels, sample_weights


def make_datasets(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    params: TrainParams,
    seed: int,
    intensity: IntensityStep | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """tf.data pipelines: shuffled, augmented, batched and prefetched. With `intensity`,
    the train images come before the intensity step and augmentation applies it. With
    mixup, the train batches carry their sample weights (the class weights, blended)."""
    import tensorflow as tf

    (train_images, train_labels), (val_images, val_labels) = train, val
    generator = tf.random.Generator.from_seed(seed)

    def to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)[:, tf.newaxis]

    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_images, train_labels))
        .shuffle(len(train_labels), seed=seed, reshuffle_each_iteration=True)
        .batch(params.batch_size)
        .map(to_float)
    )
    if params.augment.enabled:
        # Sequential map: the generator is called in the same order every run.
        train_ds = train_ds.map(
            lambda images, labels: (
                augment_batch(images, generator, params.augment, intensity),
                labels,
            )
        )
        if uses_mixup(params):
            weights = class_weights(train_labels, params.class_weight)
            train_ds = train_ds.map(
                lambda images, labels: mixup_batch(
                    images, labels, generator, params.augment.mixup_alpha, weights
                )
            )
    val_ds = (
        tf.data.Dataset.from_tensor_slices((val_images, val_labels))
        .batch(params.batch_size)
        .map(to_float)
        .cache()
    )
    return train_ds.prefetch(tf.data.AUTOTUNE), val_ds.prefetch(tf.data.AUTOTUNE)


def layer_lr_multipliers(paths: list[str], decay: float) -> list[float]:
    """Each variable's learning-rate multiplier, by its Keras path ("lite_block3_expand/kernel"):
    decay**k for an ImageNet layer k levels below the new head, which sits one level above the
    deepest ImageNet layer (`pretrained.layer_level`); 1 for every layer outside the backbone.
    Without ImageNet layers, or with decay 1, every multiplier is 1."""
    from pneumonia.model.pretrained import layer_level

    levels = [layer_level(path.split("/")[0]) for path in paths]
    top = max((level for level in levels if level is not None), default=-1) + 1
    return [1.0 if level is None else decay ** (top - level) for level in levels]


def _layer_decayed(optimizer_class: type, decay: float) -> type:
    """`optimizer_class` whose step for each variable runs at the schedule's rate times its
    `layer_lr_multipliers` factor (weight decay keeps the schedule's rate: at 1e-4 it moves a
    weight by about 2e-7 a step)."""

    class LayerDecayed(optimizer_class):  # type: ignore[misc, valid-type]
        def build(self, variables: list) -> None:
            super().build(variables)
            self._multipliers = layer_lr_multipliers([v.path for v in variables], decay)

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            factor = self._multipliers[self._get_variable_index(variable)]
            super().update_step(gradient, variable, learning_rate * factor)

    LayerDecayed.__name__ = f"LayerDecayed{optimizer_class.__name__}"
    return LayerDecayed


def compile_model(model: keras.Model, params: TrainParams, steps_per_epoch: int) -> None:
    """AdamW, warm-up then cosine decay; binary cross-entropy; AUC, accuracy and recall.
    With `layer_lr_decay` under 1, the ImageNet layers learn at a rate that falls with depth
    below the head (the saved model's optimizer then loads only with `compile=False`, as
    evaluate and export load it)."""
    import keras

    total_steps = max(1, params.epochs * steps_per_epoch)
    warmup_steps = min(params.warmup_epochs * steps_per_epoch, total_steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate / 10,
        decay_steps=total_steps - warmup_steps,
        warmup_target=params.learning_rate,
        warmup_steps=warmup_steps,
        alpha=0.01,
    )
    optimizer_class = keras.optimizers.AdamW
    if params.layer_lr_decay < 1:
        optimizer_class = _layer_decayed(optimizer_class, params.layer_lr_decay)
    model.compile(
        optimizer=optimizer_class(
            schedule,
            weight_decay=params.weight_decay,
            use_ema=params.ema_momentum is not None,
            ema_momentum=params.ema_momentum or 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing),
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Recall(name="sensitivity"),
        ],
    )


def flat_params(params: TrainParams) -> dict[str, Any]:
    """Train params as one flat mapping for MLflow, nested keys dotted ("augment.gamma")."""
    flat = {}
    for key, value in params.model_dump().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def set_up(seed: int) -> tuple[str, dict]:
    """Seed every generator, make kernels deterministic; (device, CPU facts) for the record."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    device, cpu = describe_device(), machine.cpu()
    log.info(
        "device: %s (%s %s, %s, %s)",
        device,
        platform.system(),
        platform.machine(),
        cpu["model"],
        cpu["isa"],
    )
    return device, cpu


def fit(
    model: keras.Model,
    datasets: tuple[tf.data.Dataset, tf.data.Dataset],
    params: TrainParams,
    train_labels: np.ndarray,
    live: Any,
) -> dict[str, Any]:
    """Train with early stopping on val AUC (best weights restored); the run's summary.

    With `ema_momentum`, validation, early stopping and the restored weights are the
    moving average's (SwapEMAWeights swaps them in before EarlyStopping reads them).

    `live` is the dvclive run, None on a worker that is not the chief (it records nothing).
    """
    import keras
    from dvclive.keras import DVCLiveCallback

    train_ds, val_ds = datasets
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_auc",
        mode="max",
        patience=params.early_stopping_patience,
        restore_best_weights=True,
        verbose=1,
    )
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if params.ema_momentum else []
    # with mixup the batches carry blended class weights
    weights = None if uses_mixup(params) else class_weights(train_labels, params.class_weight)
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=params.epochs,
        class_weight=weights,
        callbacks=[*swap, early_stopping]
        + ([DVCLiveCallback(live=live), tracking.keras_epoch_logger()] if live else []),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    val_auc = history.history["val_auc"]
    best_epoch = int(np.argmax(val_auc))
    return {
        "best_epoch": best_epoch + 1,
        "epochs_run": len(val_auc),
        "best_val_auc": float(val_auc[best_epoch]),
        "best_val_accuracy": float(history.history["val_accuracy"][best_epoch]),
        "best_val_sensitivity": float(history.history["val_sensitivity"][best_epoch]),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def train_headline(summary: dict[str, Any]) -> dict[str, float | int]:
    """The train stage's few numbers for `dvc metrics` (the keys evaluate's views use):
    validation figures at the best epoch, whose weights are kept. The training time is in
    metrics/train/metrics.json: `dvc metrics show` has one column per key, and a
    terminal's width holds few."""
    return {
        "auc": round(summary["best_val_auc"], 4),
        "acc": round(summary["best_val_accuracy"], 4),
        "sens": round(summary["best_val_sensitivity"], 4),
    }
