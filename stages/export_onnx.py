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
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths, registry, tracking
from pneumonia.config import load_params
from pneumonia.imaging import PreprocessConfig
from pneumonia.metadata import ModelMetadata, model_version
from pneumonia.onnx_export import convert
from pneumonia.prepared import load_split, preprocessing
from pneumonia.serving import inference

if TYPE_CHECKING:
    import keras
    import onnxruntime

log = logging.getLogger("export_onnx")
MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")  # string.Template, ${name}
INTERVALS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")


def parity(keras_p: np.ndarray, onnx_p: np.ndarray, threshold: float) -> dict:
    """How far two (N,) probability vectors differ, and in how many labels at `threshold`."""
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
    template = string.Template(MODEL_CARD_TEMPLATE.read_text())
    return template.substitute(
        model_version=metadata.model_version,
        source=report["source"],
        files_found=f"{report['files_found']:,}",
        images_accepted=f"{report['images_accepted']:,}",
        patients=f"{report['patients']:,}",
        quarantined=report["quarantined"],
        duplicates_removed=report["duplicates_removed"],
        data_hash=metadata.training_data_sha256[:16],
        split_rows=split_rows,
        device=train_info.get("device", "?"),
        cpu_model=cpu.get("model", "?"),
        cpu_isa=cpu.get("isa", "?"),
        best_val_auc=f"{train_info.get('best_val_auc', float('nan')):.4f}",
        best_epoch=train_info.get("best_epoch", "?"),
        opset=metadata.versions.get("opset"),
        image_size=metadata.preprocessing.image_size,
        intensity=metadata.preprocessing.intensity,
        threshold=f"{metadata.threshold:.4f}",
        threshold_policy=evaluation.get("threshold_policy", "?"),
        **{name: interval(name) for name in INTERVALS},
        brier=f"{test['brier']:.4f}",
        ece=f"{test['ece']:.4f}",
        prevalence=f"{test['prevalence']:.3f}",
        images=test["images"],
        held_out_rows=held_out_rows,
        robustness_rows=robustness_rows,
    )


def check_parity(
    model: keras.Model,
    session: onnxruntime.InferenceSession,
    threshold: float,
    tolerance: float,
    onnx_bytes: int,
) -> dict:
    """Keras against ONNX on the whole test split; written to metrics/export_onnx.json."""
    from pneumonia.model import predict_probabilities

    test_images, _ = load_split("test")
    keras_p = predict_probabilities(model, test_images)
    check = parity(keras_p, inference.predict(session, test_images), threshold)
    check["tolerance"] = tolerance
    check["passed"] = check["max_abs_diff"] <= tolerance and check["labels_differing"] == 0
    check["onnx_bytes"] = onnx_bytes
    paths.EXPORT_METRICS.write_text(json.dumps({"parity": check}, indent=2) + "\n")
    log.info(
        "parity on %d test images: max |diff| %.2e, %d labels differ",
        check["images"],
        check["max_abs_diff"],
        check["labels_differing"],
    )
    return check


def describe(
    onnx_bytes: bytes,
    session: onnxruntime.InferenceSession,
    config: PreprocessConfig,
    labels: tuple,
    evaluation: dict,
    opset: int,
) -> ModelMetadata:
    """model.json: what serving needs beside the graph, and where it came from."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return ModelMetadata(
        model_version=model_version(onnx_bytes),
        threshold=float(evaluation["threshold"]),
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
            "opset": opset,
        },
    )


def track_and_register(metadata: ModelMetadata, check: dict, train_info: dict) -> None:
    """Parity into the training run in MLflow; the exact ONNX bytes registered if it passed."""
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


def main() -> None:
    """Run the stage: convert, check parity, write model.json and the model card, register."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import pneumonia.model  # noqa: F401  (registers the custom layer)

    params = load_params().export_onnx
    prepared = preprocessing()
    labels = tuple(prepared.pop("labels"))
    config = PreprocessConfig(**prepared)
    evaluation = json.loads((paths.EVALUATE_LIVE / "metrics.json").read_text())
    train_info = json.loads(paths.TRAIN_INFO.read_text())

    model = keras.models.load_model(paths.KERAS_MODEL)
    onnx_bytes = convert(model, config.image_size, params.opset)
    paths.ONNX_MODEL.write_bytes(onnx_bytes)
    session = inference.session(onnx_bytes, threads=0)  # all cores, as before
    threshold = float(evaluation["threshold"])
    check = check_parity(model, session, threshold, params.parity_tolerance, len(onnx_bytes))

    metadata = describe(onnx_bytes, session, config, labels, evaluation, params.opset)
    paths.MODEL_METADATA.write_text(metadata.to_json())
    summary = json.loads(paths.INGEST_SUMMARY.read_text())
    paths.MODEL_CARD.write_text(model_card(metadata, evaluation, summary, train_info))
    track_and_register(metadata, check, train_info)
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
