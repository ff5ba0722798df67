"""Keras -> ONNX: the tf2onnx conversion and the canonical form that makes its bytes stable.

Needs TensorFlow, tf2onnx and onnx: the export stage, the network-size benchmark and the
tests use it; serving never imports it (see pneumonia.serving.inference).
"""

from __future__ import annotations

import hashlib


def convert(model, image_size: int, opset: int) -> bytes:
    """The Keras model as a serialized ONNX graph with a dynamic batch axis."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return canonical(proto).SerializeToString(deterministic=True)


def canonical(model):
    """The same ONNX graph with its nodes ordered, and its tensors named, by structure alone.

    tf2onnx's optimisers walk Python sets, so two conversions of one Keras model
    order nodes and name merged tensors differently (a few bytes apart). Renaming
    constants by content and intermediates by position in a structure-keyed
    topological order makes equal graphs equal bytes, so the model version only
    changes when the served graph does. Graph inputs and outputs keep their names.
    """
    import heapq

    import onnx

    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    ):
        raise ValueError("graphs with subgraphs (If, Loop, Scan) are not canonicalised")
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}
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

    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    waiting = [sum(1 for name in node.input if name in producer) for node in graph.node]
    consumers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in producer:
                consumers.setdefault(producer[name], []).append(index)

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

    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    del result.graph.initializer[:]
    result.graph.initializer.extend(constants[name] for name in sorted(constants))
    del result.graph.value_info[:]  # intermediate shapes: onnxruntime infers them
    symbols: dict[str, str] = {}  # tf2onnx numbers unknown dims ("unk__190") per process
    for value in [*result.graph.input, *result.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                fallback = f"dim_{len(symbols)}"
                dim.dim_param = symbols.setdefault(
                    dim.dim_param, "batch" if axis == 0 else fallback
                )
    return result
