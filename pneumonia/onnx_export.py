"""Keras -> ONNX: the tf2onnx conversion and the canonical form that makes its bytes stable.

Needs TensorFlow, tf2onnx and onnx: the export stage, the network-size benchmark and the
tests use it; serving never imports it (see pneumonia.serving.inference).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras
    import onnx


def convert(model: keras.Model, image_size: int, opset: int) -> bytes:
    """The Keras model as a serialized ONNX graph with a dynamic batch axis."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return canonical(proto).SerializeToString(deterministic=True)


def canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same ONNX graph with its nodes ordered, and its tensors named, by structure alone.

    tf2onnx's optimisers walk Python sets, so two conversions of one Keras model
    order nodes and name merged tensors differently (a few bytes apart). Renaming
    constants by content and intermediates by position in a structure-keyed
    topological order makes equal graphs equal bytes, so the model version only
    changes when the served graph does. Graph inputs and outputs keep their names.
    """
    import onnx

    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    ):
        raise ValueError("graphs with subgraphs (If, Loop, Scan) are not canonicalised")
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}
    rename, constants = _constants_by_content(graph, kept)
    nodes = _nodes_in_structural_order(graph, kept, rename)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    del result.graph.initializer[:]
    result.graph.initializer.extend(constants[name] for name in sorted(constants))
    del result.graph.value_info[:]  # intermediate shapes: onnxruntime infers them
    _name_symbolic_dims(result)
    return result


def _constants_by_content(graph: onnx.GraphProto, kept: set[str]) -> tuple[dict[str, str], dict]:
    """(old name -> "const_<hash of content>", the constants by new name); equal ones collapse."""
    import onnx

    rename: dict[str, str] = {}
    constants: dict[str, onnx.TensorProto] = {}
    for tensor in graph.initializer:
        if tensor.name in kept:
            constants[tensor.name] = tensor
            continue
        content = onnx.TensorProto()
        content.CopyFrom(tensor)
        content.name = ""
        name = (
            "const_"
            + hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()[:16]
        )
        rename[tensor.name] = name
        content.name = name
        constants[name] = content  # identical constants collapse into one
    return rename, constants


def _nodes_in_structural_order(
    graph: onnx.GraphProto, kept: set[str], rename: dict[str, str]
) -> list:
    """The nodes in a topological order keyed by structure, outputs named by position.

    Extends `rename` with each intermediate tensor's new name.
    """
    import heapq

    import onnx

    waiting, consumers = _dependencies(graph)

    def key(index: int) -> tuple:
        node = graph.node[index]
        attributes = b"".join(
            a.SerializeToString(deterministic=True)
            for a in sorted(node.attribute, key=lambda a: a.name)
        )
        inputs = tuple(rename.get(name, name) for name in node.input)
        return (node.domain, node.op_type, attributes, inputs, index)

    ready = [key(index) for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    nodes: list = []
    while ready:
        index = heapq.heappop(ready)[-1]
        node = graph.node[index]
        position = len(nodes)
        for slot, name in enumerate(node.output):
            if name and name not in kept:
                rename[name] = f"{node.op_type}_{position}:{slot}"
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.op_type}_{position}"
        copy.ClearField("doc_string")
        copy.input[:] = [rename.get(name, name) for name in node.input]
        copy.output[:] = [rename.get(name, name) for name in node.output]
        nodes.append(copy)
        for consumer in consumers.get(index, []):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, key(consumer))
    if len(nodes) != len(graph.node):
        raise ValueError("the ONNX graph has a cycle")
    return nodes


def _dependencies(graph: onnx.GraphProto) -> tuple[list[int], dict[int, list[int]]]:
    """(inputs each node still waits for, the nodes consuming each node's outputs)."""
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    waiting = [sum(1 for name in node.input if name in producer) for node in graph.node]
    consumers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in producer:
                consumers.setdefault(producer[name], []).append(index)
    return waiting, consumers


def _name_symbolic_dims(model: onnx.ModelProto) -> None:
    """tf2onnx numbers unknown dims ("unk__190") per process: name them by position instead."""
    symbols: dict[str, str] = {}
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                fallback = f"dim_{len(symbols)}"
                dim.dim_param = symbols.setdefault(
                    dim.dim_param, "batch" if axis == 0 else fallback
                )
