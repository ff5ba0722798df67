"""The Keras CNN: architecture chosen by train params. Imports TensorFlow; serving never does."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from pneumonia.config import TrainParams
from pneumonia.images.layout import LAYOUT_GRID


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
    """Input (N, S, S, 1) float32 pixel values in [0, 255]; output (N, 1) P(PNEUMONIA).

    `efficientnet_lite0` and `efficientnet_lite0_stride16` start from the pinned ImageNet
    weights (their architecture is read from them); `width` and `depth` apply to the others.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = PerImageStandardization(name="standardize")(inputs)
    if params.architecture.startswith("efficientnet_lite0"):
        return _pretrained_model(inputs, x, params)
    x = _conv_bn_relu(x, params.width, kernel=5, strides=2)  # stem: S/2
    for stage in range(params.depth):
        filters = params.width * 2 ** min(stage, 3)
        if params.architecture == "resnet":
            x = _residual_block(x, filters, strides=1 if stage == 0 else 2)
        else:
            x = _conv_bn_relu(x, filters)
            x = layers.MaxPooling2D()(x) if stage > 0 else x
    return keras.Model(inputs, _head(x, params), name=f"pneumonia_{params.architecture}")


def _head(x: keras.KerasTensor, params: TrainParams) -> keras.KerasTensor:
    """The pooled head every network ends with: global average pooling, dropout, and the
    `probability_pneumonia` sigmoid unit that `with_explanations` reads the map from."""
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(params.dropout)(x)
    return layers.Dense(1, activation="sigmoid", name="probability_pneumonia")(x)


def _pretrained_model(
    inputs: keras.KerasTensor, x: keras.KerasTensor, params: TrainParams
) -> keras.Model:
    """EfficientNet-Lite0, whole or cut at stride 16, on the standardised image, then the
    same pooled head."""
    from pneumonia.model.pretrained import (
        BLOCK_STRIDES,
        STRIDE16_BLOCKS,
        efficientnet_lite0,
        imagenet_state,
        set_weights,
    )

    cut = params.architecture == "efficientnet_lite0_stride16"
    blocks = STRIDE16_BLOCKS if cut else len(BLOCK_STRIDES)
    x, weights = efficientnet_lite0(x, imagenet_state(), blocks)
    model = keras.Model(inputs, _head(x, params), name=f"pneumonia_{params.architecture}")
    set_weights(model, weights)
    return model


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """(N,) P(PNEUMONIA) for (N, S, S, 1) uint8 images."""
    probabilities = model.predict(images.astype(np.float32), batch_size=128, verbose=0)
    return probabilities.reshape(-1).astype(np.float64)


def with_explanations(model: keras.Model) -> keras.Model:
    """The same network with three outputs, for evaluation, the gate and export.

    - `probability_pneumonia` (N, 1): the model's own output, unchanged;
    - `features` (N, F): the spatial means of the last three stages' feature maps (the last
      one is what the dense layer reads), then the input's layout: its mean intensity in
      each cell of a LAYOUT_GRID x LAYOUT_GRID grid, in [0, 1]. The gate's and the
      intended-use head's input. Several depths see more than the class evidence: texture,
      where other pictures differ from radiographs. The means over the whole map cannot
      see where things are, which is what tells a knee or a shoulder from a thorax (two
      dark lung fields either side of a bright mediastinum): the grid can;
    - `cam` (N, h, w): the class activation map of the pneumonia logit, the dense layer
      applied at each position of the last feature map. Global average pooling is linear,
      so the map's mean is the logit, and the map equals Grad-CAM of the logit before its
      ReLU (times h*w).
    """
    dense = model.get_layer("probability_pneumonia")
    kernel, bias = dense.get_weights()
    stages = _stage_outputs(model)
    feature_map = stages[-1]
    cam_layer = layers.Dense(1, name="cam_logit")
    cam = cam_layer(feature_map)
    cam_layer.set_weights([kernel, bias])
    pooled = [
        layers.GlobalAveragePooling2D(name=f"features_{i}")(stage)
        for i, stage in enumerate(stages[-3:])
    ]
    size = int(model.inputs[0].shape[1])
    cell = max(size // LAYOUT_GRID, 1)
    # Pooled first, scaled after: the same values, but scaling the whole input first cost
    # onnxruntime 0.1-0.4 ms a request (a full-size Mul ahead of the convolutions).
    grid = layers.AveragePooling2D(pool_size=cell, strides=cell, name="layout_grid")(
        model.inputs[0]
    )
    scaled = layers.Rescaling(1 / 255, name="layout_scale")(grid)
    layout = layers.Flatten(name="layout")(scaled)
    features = layers.Concatenate(name="features")([*pooled, layout])
    cam = layers.Reshape(tuple(feature_map.shape[1:3]), name="cam")(cam)
    return keras.Model(model.inputs, [model.output, features, cam], name=f"{model.name}_explained")


def _stage_outputs(model: keras.Model) -> list[keras.KerasTensor]:
    """Each resolution's last activation, coarsest last: the output of every stage."""
    last_at: dict[tuple, keras.KerasTensor] = {}
    for layer in model.layers:
        if isinstance(layer, layers.ReLU):
            last_at[tuple(layer.output.shape[1:3])] = layer.output
    return list(last_at.values())
