"""Keras -> ONNX: the tf2onnx conversion and the canonical form that makes its bytes stable.

Needs TensorFlow, tf2onnx and onnx: the export stage, the network-size benchmark and the
tests use it; serving never imports it (see pneumonia.serving.inference).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pneumonia.serving.inference import SERVED_PROBABILITY

if TYPE_CHECKING:
    import keras
    import numpy as np
    import onnx

    from pneumonia.config import ExportParams
    from pneumonia.decision.calibration import Calibration
    from pneumonia.decision.gate import FeatureGate
    from pneumonia.decision.use import UseHead


def convert(model: keras.Model, image_size: int, opset: int) -> bytes:
    """The Keras model as a serialized ONNX graph with a dynamic batch axis."""
    return canonical(_from_keras(model, image_size, opset)).SerializeToString(deterministic=True)


def _from_keras(model: keras.Model, image_size: int, opset: int) -> onnx.ModelProto:
    """tf2onnx's conversion, input "image" (N, S, S, 1) float32."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return proto


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


# The graph's outputs after `add_decision_outputs`, by role. The served probability is the
# calibrated one; the raw sigmoid output stays for the Keras parity check.
OUTPUTS = {
    "probability": SERVED_PROBABILITY,  # (N,) calibrated P(PNEUMONIA)
    "ood_distance": "ood_distance",  # (N,) Mahalanobis distance from the training features
    "cam": "cam",  # (N, h, w) class activation map of the pneumonia logit
    "features": "features",  # (N, F) the features the gate measures; drift monitoring reads them
    "raw_probability": "probability_pneumonia",  # (N, 1) the Keras model's own output
    "use": "use_logits",  # (N, K) the intended-use head's logits (pneumonia.decision.use)
}
SERVED = ("probability", "ood_distance", "cam", "features", "use")  # the roles model.json names


def _residual_nodes(centred: str, whitened: str, squared: str, output: str) -> list[onnx.NodeProto]:
    """`output` = `squared` + gate_residual * max(|centred|^2 - |whitened * gate_spread|^2, 0):
    the gate's distance (squared) with the part of the features outside its components.

    The two sums of squares are nearly equal (the components hold most of the variance), so
    they are summed and subtracted in float64: in float32 the difference kept only about
    three digits."""
    from onnx import TensorProto, helper

    def square_sum(name: str, out: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Cast", [name], [f"{out}_input"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceSumSquare", [f"{out}_input"], [out], axes=[1], keepdims=0),
        ]

    return [
        helper.make_node("Mul", [whitened, "gate_spread"], ["gate_projected"]),
        *square_sum("gate_projected", "gate_inside"),
        *square_sum(centred, "gate_total"),
        helper.make_node("Sub", ["gate_total", "gate_inside"], ["gate_outside_double"]),
        helper.make_node(
            "Cast", ["gate_outside_double"], ["gate_outside_raw"], to=TensorProto.FLOAT
        ),
        helper.make_node("Relu", ["gate_outside_raw"], ["gate_outside"]),
        helper.make_node("Mul", ["gate_outside", "gate_residual"], ["gate_outside_weighted"]),
        helper.make_node("Add", [squared, "gate_outside_weighted"], [output]),
    ]


def add_decision_outputs(
    model: onnx.ModelProto,
    scale: float,
    shift: float,
    gate: FeatureGate,
    use_head: UseHead | None = None,
) -> onnx.ModelProto:
    """The exported graph plus the calibrated probability, the gate's distance and, with a
    head, the intended-use logits.

    From the `cam` and `features` outputs of `pneumonia.model.with_explanations`:
    probability_calibrated = sigmoid(scale * mean(cam) + shift) (the map's mean is the
    logit), ood_distance = `gate.distance(features)` (FeatureGate: the whitened sum of squares,
    plus the residual outside its components when it has one),
    use_logits = ((inputs - use_mean) / use_scale) @ use_weights + use_bias, the inputs being
    the features and, for a head with `layout_asymmetry`, their layout's. In the graph,
    so the version hash covers them and serving needs no second file.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    names = {output.name for output in graph.output}
    missing = {"cam", "features", OUTPUTS["raw_probability"]} - names
    if missing:
        raise ValueError(f"the graph lacks the outputs {sorted(missing)}")
    constants = {
        "decision_scale": np.array(scale, dtype=np.float32),
        "decision_shift": np.array(shift, dtype=np.float32),
        "gate_mean": np.asarray(gate.mean, dtype=np.float32),
        "gate_whitening": np.asarray(gate.whitening, dtype=np.float32),
    }
    nodes = [
        helper.make_node("ReduceMean", ["cam"], ["logit"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["logit", "decision_scale"], ["scaled_logit"]),
        helper.make_node("Add", ["scaled_logit", "decision_shift"], ["calibrated_logit"]),
        helper.make_node("Sigmoid", ["calibrated_logit"], [OUTPUTS["probability"]]),
        helper.make_node("Sub", ["features", "gate_mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "gate_whitening"], ["whitened"]),
        helper.make_node("ReduceSumSquare", ["whitened"], ["squared"], axes=[1], keepdims=0),
    ]
    if gate.reduced:
        constants |= {
            "gate_spread": np.asarray(gate.spread, dtype=np.float32),
            "gate_residual": np.array(gate.residual, dtype=np.float32),
        }
        nodes += _residual_nodes("centred", "whitened", "squared", "gate_squared")
        squared = "gate_squared"
    else:
        squared = "squared"
    nodes.append(helper.make_node("Sqrt", [squared], [OUTPUTS["ood_distance"]]))
    integers: dict[str, np.ndarray] = {}
    if use_head is not None:
        constants |= {
            f"use_{name}": np.asarray(getattr(use_head, name), dtype=np.float32)
            for name in ("mean", "scale", "weights", "bias")
        }
        inputs = "features"
        if use_head.layout_asymmetry:
            integers, layout_nodes = _layout_asymmetry_nodes(len(use_head.mean))
            nodes += layout_nodes
            inputs = "use_inputs"
        nodes += [
            helper.make_node("Sub", [inputs, "use_mean"], ["use_centred"]),
            helper.make_node("Div", ["use_centred", "use_scale"], ["use_standard"]),
            helper.make_node("MatMul", ["use_standard", "use_weights"], ["use_product"]),
            helper.make_node("Add", ["use_product", "use_bias"], [OUTPUTS["use"]]),
        ]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(
        numpy_helper.from_array(value, name) for name, value in (constants | integers).items()
    )
    kept = [
        o for o in result.graph.output if o.name in (OUTPUTS["raw_probability"], "cam", "features")
    ]
    del result.graph.output[:]
    result.graph.output.extend(kept)
    result.graph.output.extend(
        helper.make_tensor_value_info(OUTPUTS[name], TensorProto.FLOAT, ["batch"])
        for name in ("probability", "ood_distance")
    )
    if use_head is not None:
        kinds = use_head.weights.shape[1]
        result.graph.output.append(
            helper.make_tensor_value_info(OUTPUTS["use"], TensorProto.FLOAT, ["batch", kinds])
        )
    onnx.checker.check_model(result)
    return result


def _layout_asymmetry_nodes(inputs: int) -> tuple[dict[str, np.ndarray], list]:
    """The int64 constants and nodes that turn `features` (N, F) into `use_inputs`, the
    head's `inputs` columns: the features, then `pneumonia.decision.use.layout_asymmetry`
    (|cell - mirror cell| over the layout grid's left half, row by row)."""
    import numpy as np
    from onnx import helper

    from pneumonia.images.layout import LAYOUT_GRID

    grid, half = LAYOUT_GRID, LAYOUT_GRID // 2
    features = inputs - grid * half  # the head's inputs: the features and one value per pair
    integers = {
        name: np.array(value, dtype=np.int64)
        for name, value in {
            "layout_start": [features - grid * grid],
            "layout_end": [features],
            "layout_axis": [1],
            "layout_grid": [-1, grid, grid],
            "layout_left_start": [0],
            "layout_half": [half],
            "layout_mirror_start": [grid - 1],
            "layout_mirror_end": [half - 1],
            "layout_columns": [2],
            "layout_backwards": [-1],
            "layout_pairs": [-1, grid * half],
        }.items()
    }
    nodes = [
        helper.make_node(
            "Slice", ["features", "layout_start", "layout_end", "layout_axis"], ["layout_flat"]
        ),
        helper.make_node("Reshape", ["layout_flat", "layout_grid"], ["layout_cells"]),
        helper.make_node(
            "Slice",
            ["layout_cells", "layout_left_start", "layout_half", "layout_columns"],
            ["layout_left"],
        ),
        helper.make_node(
            "Slice",
            [
                "layout_cells",
                "layout_mirror_start",
                "layout_mirror_end",
                "layout_columns",
                "layout_backwards",
            ],
            ["layout_mirrored"],
        ),
        helper.make_node("Sub", ["layout_left", "layout_mirrored"], ["layout_difference"]),
        helper.make_node("Abs", ["layout_difference"], ["layout_distance"]),
        helper.make_node("Reshape", ["layout_distance", "layout_pairs"], ["layout_asymmetry"]),
        helper.make_node("Concat", ["features", "layout_asymmetry"], ["use_inputs"], axis=1),
    ]
    return integers, nodes


def served_network(
    model: keras.Model,
    image_size: int,
    opset: int,
    quantize: str = "none",
    images: np.ndarray | None = None,
) -> bytes:
    """The network as it is served, before the decision layer: tf2onnx's graph of
    `with_explanations(model)` (its probability, map and features), in int8 with activation
    ranges from `images` when `quantize` is "int8" (pneumonia.release.quantize); canonical
    bytes."""
    # Keras (TensorFlow) only here: canonical() and the graph edits stay light to import.
    from pneumonia.model.network import with_explanations
    from pneumonia.release.quantize import quantize_network

    if quantize not in ("int8", "none"):  # export_onnx.quantize (pneumonia.config.ExportParams)
        raise ValueError(f"quantize is int8 or none, not {quantize!r}")
    proto = _from_keras(with_explanations(model), image_size, opset)
    if quantize == "int8":
        if images is None:
            raise ValueError("int8 needs calibration images")
        proto = quantize_network(canonical(proto), images)
    return canonical(proto).SerializeToString(deterministic=True)


def network_to_serve(model: keras.Model, image_size: int, params: ExportParams) -> bytes:
    """`served_network` as `export_onnx`'s params set it, its int8 ranges from the training
    split (read only when quantizing): what evaluate scores and export serves."""
    from pneumonia.data.prepared import load_split
    from pneumonia.release.quantize import calibration_images

    images = None
    if params.quantize == "int8":
        images = calibration_images(load_split("train")[0], params.quantize_images)
    return served_network(model, image_size, params.opset, params.quantize, images)


def export_for_serving(
    network: bytes,
    calibration: Calibration,
    gate: FeatureGate,
    use_head: UseHead | None = None,
) -> bytes:
    """The served graph: `network` (`served_network`) with the calibrated probability, the
    gate's distance and the intended-use logits; canonical bytes."""
    import onnx

    served = add_decision_outputs(
        onnx.load_from_string(network), calibration.scale, calibration.shift, gate, use_head
    )
    return canonical(served).SerializeToString(deterministic=True)
