"""The Keras CNN: architecture chosen by train params. Imports TensorFlow; serving never does."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from pneumonia.config import TrainParams


@keras.saving.register_keras_serializable(package="pneumonia")
class PerImageStandardization(layers.Layer):
    """(x - mean) / std per image, as tf.image.per_image_standardization.

    Inside the graph so that Keras, ONNX and serving cannot disagree, and so
    that a global brightness or contrast change of the input cancels out.
    """

    def call(self, inputs: Any) -> Any:
        """Standardise each image of an (N, H, W, C) batch; std floored at 1/sqrt(H*W*C)."""
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        std = ops.std(inputs, axis=(1, 2, 3), keepdims=True)
        pixels = ops.cast(ops.prod(ops.shape(inputs)[1:]), inputs.dtype)
        return (inputs - mean) / ops.maximum(std, ops.rsqrt(pixels))


def _conv_bn_relu(
    x: keras.KerasTensor,
    filters: int,
    kernel: int = 3,
    strides: int = 1,
    separable: bool = False,
) -> keras.KerasTensor:
    """Convolution (plain or depthwise-separable), batch norm, ReLU."""
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def _residual_block(x: keras.KerasTensor, filters: int, strides: int) -> keras.KerasTensor:
    """Pre-activation-free residual block with depthwise-separable convolutions."""
    shortcut = x
    y = _conv_bn_relu(x, filters, strides=strides, separable=True)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=0.9)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_model(image_size: int, params: TrainParams) -> keras.Model:
    """Input (N, S, S, 1) float32 pixel values in [0, 255]; output (N, 1) P(PNEUMONIA)."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = PerImageStandardization(name="standardize")(inputs)
    x = _conv_bn_relu(x, params.width, kernel=5, strides=2)  # stem: S/2
    for stage in range(params.depth):
        filters = params.width * 2 ** min(stage, 3)
        if params.architecture == "resnet":
            x = _residual_block(x, filters, strides=1 if stage == 0 else 2)
        else:
            x = _conv_bn_relu(x, filters)
            x = layers.MaxPooling2D()(x) if stage > 0 else x
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(params.dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="probability_pneumonia")(x)
    return keras.Model(inputs, outputs, name=f"pneumonia_{params.architecture}")


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """(N,) P(PNEUMONIA) for (N, S, S, 1) uint8 images."""
    probabilities = model.predict(images.astype(np.float32), batch_size=128, verbose=0)
    return probabilities.reshape(-1).astype(np.float64)
