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

from pneumonia import paths
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
    return proto.SerializeToString()


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
