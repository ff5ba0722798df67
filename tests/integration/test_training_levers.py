"""Mixup, the weights' moving average (EMA) and the layer-wise learning rates, on TensorFlow:
what each lever hands `model.fit`, that early stopping keeps the weights validation scored,
and the step each ImageNet layer takes. Integration tier:
importing TensorFlow alone costs seconds."""

import numpy as np
import pytest

from pneumonia.config import load_params
from pneumonia.model.training import (
    compile_model,
    fit,
    make_datasets,
    mixup_batch,
    set_up,
    uses_mixup,
)

pytestmark = pytest.mark.integration


def test_mixup_blends_each_image_with_its_partner_and_their_labels_and_weights():
    import tensorflow as tf

    # Image i is flat at value 10 * (i + 1): a blend tells its lambda exactly.
    values = 10.0 * np.arange(1, 9, dtype="float32")
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (8, 4, 4, 1)).copy())
    labels = tf.constant([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0], [0.0], [1.0]])
    weights = {0: 2.0, 1: 0.5}

    out, mixed, sample_weights = mixup_batch(
        images, labels, tf.random.Generator.from_seed(3), 0.4, weights
    )
    out, mixed, sample_weights = out.numpy(), mixed.numpy()[:, 0], sample_weights.numpy()
    partner = values[::-1]
    lam = (out[:, 0, 0, 0] - partner) / (values - partner)
    assert np.all(lam >= 0.5 - 1e-5) and np.all(lam <= 1 + 1e-5)  # each image keeps most
    assert np.any(lam < 0.95)  # and some are visibly blended
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 0, atol=1e-4)  # pixel by pixel
    y = labels.numpy()[:, 0]
    np.testing.assert_allclose(mixed, lam * y + (1 - lam) * y[::-1], atol=1e-5)
    w = np.where(y == 1, 0.5, 2.0)
    np.testing.assert_allclose(sample_weights, lam * w + (1 - lam) * w[::-1], atol=1e-5)

    again = mixup_batch(images, labels, tf.random.Generator.from_seed(3), 0.4, weights)
    np.testing.assert_array_equal(again[0].numpy(), out)
    other = mixup_batch(images, labels, tf.random.Generator.from_seed(4), 0.4, weights)
    assert not np.array_equal(other[0].numpy(), out)
    unweighted = mixup_batch(images, labels, tf.random.Generator.from_seed(3), 0.4, None)
    np.testing.assert_allclose(unweighted[2].numpy(), 1.0)


def _tiny_run(update: dict, augment: dict | None = None):
    """Three epochs of a 4-channel network on 32 px noise with a faint bright-square signal."""
    from pneumonia.model.network import build_model

    params = load_params().train
    params = params.model_copy(
        update={
            "architecture": "resnet",
            "width": 4,
            "depth": 1,
            "epochs": 3,
            "batch_size": 16,
            "early_stopping_patience": 3,
            "augment": params.augment.model_copy(update={"enabled": False, **(augment or {})}),
            **update,
        }
    )
    set_up(0)
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, n).astype("uint8")
        images = rng.normal(120, 40, (n, 32, 32, 1))
        images[labels == 1, 8:24, 8:24] += 15
        return np.clip(images, 0, 255).astype("uint8"), labels

    train, val = split(96), split(64)
    model = build_model(32, params)
    compile_model(model, params, steps_per_epoch=6)
    summary = fit(model, make_datasets(train, val, params, 0), params, train[1], live=None)
    scores = model.evaluate(val[0].astype("float32"), val[1][:, None], verbose=0, return_dict=True)
    return model, summary, scores


def test_ema_validates_stops_on_and_keeps_the_moving_average():
    plain_model, plain, plain_scores = _tiny_run({"ema_momentum": None})
    ema_model, ema, ema_scores = _tiny_run({"ema_momentum": 0.9})
    # The kept weights are the ones validation scored at the best epoch: with the average
    # swapped in after EarlyStopping read the weights, they would be the raw ones.
    assert ema_scores["auc"] == pytest.approx(ema["best_val_auc"], abs=1e-6)
    assert plain_scores["auc"] == pytest.approx(plain["best_val_auc"], abs=1e-6)
    # and the average is another set of weights than the same run without it
    kernel = next(w for w in plain_model.weights if "kernel" in w.path).path
    differs = [
        not np.allclose(a.numpy(), b.numpy())
        for a, b in zip(plain_model.weights, ema_model.weights, strict=True)
        if a.path == kernel
    ]
    assert differs == [True]


def test_mixup_trains_with_blended_sample_weights():
    _, summary, scores = _tiny_run({}, {"enabled": True, "mixup_alpha": 0.4})
    assert summary["epochs_run"] == 3
    assert scores["auc"] == pytest.approx(summary["best_val_auc"], abs=1e-6)


@pytest.mark.parametrize(
    ("enabled", "alpha", "expected"), [(True, 0.2, True), (False, 0.2, False), (True, 0.0, False)]
)
def test_mixup_is_on_only_with_augmentation_and_a_positive_alpha(enabled, alpha, expected):
    params = load_params().train
    params = params.model_copy(
        update={
            "augment": params.augment.model_copy(update={"enabled": enabled, "mixup_alpha": alpha})
        }
    )
    assert uses_mixup(params) is expected


@pytest.mark.parametrize("decay", [0.5, 1.0])
def test_layer_lr_decay_scales_each_imagenet_layers_first_step(decay):
    """Adam's first step moves each weight by about the rate (m / sqrt(v) is the gradient's
    sign): the median move of a layer is its rate, so the moves' ratios are the multipliers."""
    import keras

    from pneumonia.model.network import build_model

    params = load_params().train.model_copy(
        update={
            "architecture": "efficientnet_lite0_stride16",
            "layer_lr_decay": decay,
            "dropout": 0.0,
            "weight_decay": 0.0,
        }
    )
    set_up(0)
    model = build_model(32, params)
    compile_model(model, params, steps_per_epoch=10)
    before = {w.path: w.numpy().copy() for w in model.trainable_weights}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 1)).astype("float32")
    model.train_on_batch(images, rng.integers(0, 2, (16, 1)).astype("float32"))

    def move(path):
        weight = next(w for w in model.trainable_weights if w.path == path)
        return float(np.median(np.abs(weight.numpy() - before[path])))

    head = move("probability_pneumonia/kernel")
    assert head > 0
    # block 11's expansion is one level below the head, block 5's seven, the stem thirteen
    assert move("lite_block11_expand/kernel") / head == pytest.approx(decay, rel=0.05)
    assert move("lite_block5_expand/kernel") / head == pytest.approx(decay**7, rel=0.05)
    layered = type(model.optimizer) is not keras.optimizers.AdamW
    assert layered is (decay < 1)
