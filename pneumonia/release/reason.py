"""reason.onnx: the reason head's fixed network (`pneumonia.decision.reason`), built from the
pinned ImageNet weights, and the head folded into it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths
from pneumonia.decision.reason import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REASON_FEATURES,
    REASON_INPUTS,
    REASON_OUTPUT,
    REASON_SIZE,
    fold_head,
)
from pneumonia.decision.use import USE_KINDS, UseHead
from pneumonia.release.export import canonical

REASON_MODEL = paths.MODELS / "reason.onnx"  # evaluate writes it, export names its SHA-256

if TYPE_CHECKING:  # TensorFlow is imported only where the network is built
    import keras


def network_model() -> keras.Model:
    """The fixed network in Keras: (N, S, S, 1) in [0, 1] -> (N, REASON_FEATURES)."""
    import keras

    from pneumonia.model.pretrained import efficientnet_lite0, imagenet_state, set_weights

    image = keras.Input((REASON_SIZE, REASON_SIZE, 1), name=REASON_INPUTS[0])
    standard = keras.layers.Rescaling(1 / IMAGENET_STD, offset=-IMAGENET_MEAN / IMAGENET_STD)
    maps, weights = efficientnet_lite0(standard(image), imagenet_state())
    pooled = keras.layers.GlobalAveragePooling2D(name="reason_features")(maps)
    model = keras.Model(image, pooled, name="reason_network")
    set_weights(model, weights)
    return model


def network_onnx(opset: int) -> bytes:
    """The fixed network as canonical ONNX bytes (float32): input `image`, output
    `reason_features`."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, REASON_SIZE, REASON_SIZE, 1), tf.float32, name=REASON_INPUTS[0]),)
    graph, _ = tf2onnx.convert.from_keras(network_model(), input_signature=spec, opset=opset)
    return canonical(graph).SerializeToString(deterministic=True)


def with_head(network: bytes, head: UseHead) -> bytes:
    """`network` (`network_onnx`) with the head folded in: inputs `image` and `layout`,
    output `reason_logits` = concat(features, layout) @ weights + bias; canonical bytes."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(network)
    graph = model.graph
    features = graph.output[0].name
    weights, bias = fold_head(head)
    layout = weights.shape[0] - REASON_FEATURES
    graph.input.append(
        helper.make_tensor_value_info(REASON_INPUTS[1], onnx.TensorProto.FLOAT, ["batch", layout])
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights.astype(np.float32), "reason_weights"),
            numpy_helper.from_array(bias.astype(np.float32), "reason_bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Concat", [features, REASON_INPUTS[1]], ["reason_inputs"], axis=1),
            helper.make_node("MatMul", ["reason_inputs", "reason_weights"], ["reason_product"]),
            helper.make_node("Add", ["reason_product", "reason_bias"], [REASON_OUTPUT]),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            REASON_OUTPUT, onnx.TensorProto.FLOAT, ["batch", len(USE_KINDS)]
        )
    )
    onnx.checker.check_model(model)
    return canonical(model).SerializeToString(deterministic=True)
