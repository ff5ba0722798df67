"""Stage 5: convert the Keras model to ONNX with tf2onnx and prove they agree.

Writes models/model.onnx, models/model.json (the metadata serving reads) and
metrics/export_onnx.json. The parity check runs on the whole test split; the
stage fails when max |p_keras - p_onnx| exceeds export_onnx.parity_tolerance or
any label differs at the chosen threshold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import numpy as np

from pneumonia import paths, registry, tracking
from pneumonia.config import load_params
from pneumonia.imaging import PreprocessConfig
from pneumonia.metadata import ModelMetadata, model_version
from pneumonia.prepared import load_split, preprocessing

log = logging.getLogger("export_onnx")


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


def onnx_predict(session, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """(N,) P(PNEUMONIA) from an onnxruntime session for (N, S, S, 1) uint8 images."""
    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: images[i : i + batch_size].astype(np.float32)})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).reshape(-1).astype(np.float64)


def parity(keras_p: np.ndarray, onnx_p: np.ndarray, threshold: float) -> dict:
    return {
        "images": len(keras_p),
        "max_abs_diff": float(np.max(np.abs(keras_p - onnx_p))),
        "labels_differing": int(np.sum((keras_p >= threshold) != (onnx_p >= threshold))),
    }


def model_card(metadata: ModelMetadata, evaluation: dict, report: dict, train_info: dict) -> str:
    """MODEL_CARD.md, written from the pipeline's own outputs."""
    test, low, high = (evaluation[k] for k in ("test", "test_ci95_low", "test_ci95_high"))

    def interval(name: str) -> str:
        return f"{test[name]:.3f} [{low[name]:.3f}, {high[name]:.3f}]"

    split_rows = "\n".join(
        f"| {split} | {counts.get('NORMAL', 0):,} | {counts.get('PNEUMONIA', 0):,} | "
        f"{report['patients_per_split'].get(split, 0):,} |"
        for split, counts in sorted(report["per_split"].items())
    )
    held_out = [split for split in paths.HELD_OUT if split in evaluation]
    held_out_rows = "\n".join(
        f"| {split} | {evaluation[split]['images']} | {evaluation[split]['prevalence']:.3f} | "
        + " | ".join(
            f"{evaluation[split][name]:.3f} [{evaluation[f'{split}_ci95_low'][name]:.3f}, "
            f"{evaluation[f'{split}_ci95_high'][name]:.3f}]"
            for name in ("roc_auc", "accuracy", "sensitivity", "specificity")
        )
        + " |"
        for split in held_out
    )
    shifts = {"clean": test, **evaluation.get("robustness", {})}
    robustness_rows = "\n".join(
        f"| {name} | {values['roc_auc']:.3f} | {values['accuracy']:.3f} | "
        f"{values['sensitivity']:.3f} | {values['specificity']:.3f} |"
        for name, values in shifts.items()
    )
    cpu = train_info.get("cpu", {})
    return f"""# Model card: pneumonia classifier {metadata.model_version}

Generated by the `export_onnx` stage from this run's outputs; do not edit by hand.

## Intended use
Flags pediatric (ages 1-5) anterior-posterior chest X-rays as NORMAL or PNEUMONIA, to
prioritise reading. **Not a diagnostic device**: every result needs a clinician's read.
Out of scope: adults, lateral or PA views, CT, other findings than pneumonia.

## Data
- Source: `{report["source"]}`; {report["files_found"]:,} files found,
  {report["images_accepted"]:,} images used from {report["patients"]:,} patients;
  {report["quarantined"]} quarantined, {report["duplicates_removed"]} duplicate files removed.
- Population: Guangzhou Women and Children's Medical Center pediatric patients (Kermany et
  al., Cell 2018); a single centre and one acquisition chain. Performance elsewhere (other
  scanners, hospitals, ages) is unknown until measured there.
- Splits by patient (no patient in two splits), training data hash
  `{metadata.training_data_sha256[:16]}`:

| split | NORMAL | PNEUMONIA | patients |
|---|---:|---:|---:|
{split_rows}

## Model
Keras CNN trained from scratch on {train_info.get("device", "?")}
({cpu.get("model", "?")}, {cpu.get("isa", "?")}), best validation AUC
{train_info.get("best_val_auc", float("nan")):.4f} at epoch {train_info.get("best_epoch", "?")};
exported to ONNX (opset {metadata.versions.get("opset")}), input
{metadata.preprocessing.image_size}x{metadata.preprocessing.image_size} grayscale,
intensity `{metadata.preprocessing.intensity}`.

## Threshold
{metadata.threshold:.4f}, chosen on the validation split by the
`{evaluation.get("threshold_policy", "?")}` policy; never tuned on the test split.

## Metrics on the held-out test split (95% bootstrap intervals)
| metric | value |
|---|---|
| ROC AUC | {interval("roc_auc")} |
| accuracy | {interval("accuracy")} |
| sensitivity (PNEUMONIA recall) | {interval("sensitivity")} |
| specificity | {interval("specificity")} |
| precision | {interval("precision")} |
| F1 | {interval("f1")} |
| Brier score | {test["brier"]:.4f} |
| expected calibration error | {test["ece"]:.4f} |

Test prevalence {test["prevalence"]:.3f} over {test["images"]} images.

## Metrics on every held-out split (same threshold, 95% bootstrap intervals)
`test` is a random carve of patients; `early` and `late` are the lowest and highest
patient ids of each id series, other periods of the hospital that training never saw.

| split | images | prevalence | ROC AUC | accuracy | sensitivity | specificity |
|---|---:|---:|---|---|---|---|
{held_out_rows}

## Robustness (same test images, shifted, same threshold)
| shift | AUC | accuracy | sensitivity | specificity |
|---|---:|---:|---:|---:|
{robustness_rows}

## Limits
- Pediatric AP chest X-rays from one centre only; pneumonia prevalence in training is about
  74%, higher than in most screening settings, which moves precision.
- The test split is carved from the same release as training: it measures generalisation to
  new patients, not to new hospitals or scanners.
- Bacterial and viral pneumonia are one class; no localisation is given.
"""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from pneumonia.model import predict_probabilities  # also registers the custom layer

    params = load_params().export_onnx
    prepared = preprocessing()
    labels = tuple(prepared.pop("labels"))
    config = PreprocessConfig(**prepared)
    evaluation = json.loads((paths.EVALUATE_LIVE / "metrics.json").read_text())
    threshold = float(evaluation["threshold"])

    model = keras.models.load_model(paths.KERAS_MODEL)
    onnx_bytes = convert(model, config.image_size, params.opset)
    paths.ONNX_MODEL.write_bytes(onnx_bytes)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    test_images, _ = load_split("test")
    check = parity(
        predict_probabilities(model, test_images), onnx_predict(session, test_images), threshold
    )
    check["tolerance"] = params.parity_tolerance
    check["passed"] = (
        check["max_abs_diff"] <= params.parity_tolerance and check["labels_differing"] == 0
    )
    check["onnx_bytes"] = len(onnx_bytes)
    paths.EXPORT_METRICS.write_text(json.dumps({"parity": check}, indent=2) + "\n")
    log.info(
        "parity on %d test images: max |diff| %.2e, %d labels differ",
        check["images"],
        check["max_abs_diff"],
        check["labels_differing"],
    )

    metadata = ModelMetadata(
        model_version=model_version(onnx_bytes),
        threshold=threshold,
        labels=(labels[0], labels[1]),
        input_name=session.get_inputs()[0].name,
        output_name=session.get_outputs()[0].name,
        preprocessing=config,
        training_data_sha256=hashlib.sha256(paths.MANIFEST.read_bytes()).hexdigest(),
        metrics={
            "test": evaluation["test"],
            "test_ci95_low": evaluation["test_ci95_low"],
            "test_ci95_high": evaluation["test_ci95_high"],
        },
        versions={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": params.opset,
        },
    )
    paths.MODEL_METADATA.write_text(metadata.to_json())
    train_info = json.loads(paths.TRAIN_INFO.read_text())
    paths.MODEL_CARD.write_text(
        model_card(metadata, evaluation, json.loads(paths.INGEST_SUMMARY.read_text()), train_info)
    )
    tracking.configure()
    with tracking.start_run("export_onnx", run_id=train_info.get("mlflow_run_id")):
        tracking.log_metrics(
            {
                "onnx_parity_max_abs_diff": check["max_abs_diff"],
                "onnx_parity_labels_differing": check["labels_differing"],
            }
        )
        if check["passed"]:
            registered = registry.register(paths.ONNX_MODEL, paths.MODEL_METADATA, metadata)
            log.info("registered %s version %s", registry.REGISTERED_MODEL, registered)
    log.info(
        "%s written (%d bytes), version %s",
        paths.ONNX_MODEL,
        len(onnx_bytes),
        metadata.model_version,
    )
    if not check["passed"]:
        log.error("ONNX and Keras disagree beyond the tolerance %.1e", params.parity_tolerance)
        sys.exit(1)


if __name__ == "__main__":
    main()
