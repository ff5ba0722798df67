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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths, registry, tracking
from pneumonia.config import load_params
from pneumonia.imaging import PreprocessConfig
from pneumonia.metadata import ModelMetadata, model_version
from pneumonia.onnx_export import export_for_serving
from pneumonia.prepared import load_split, preprocessing
from pneumonia.serving import inference

if TYPE_CHECKING:
    import keras
    import onnxruntime

    from pneumonia.decision import Calibration, Gate

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
        **decision_fields(evaluation),
    )


def decision_fields(evaluation: dict) -> dict[str, str]:
    """The model card's calibration, band, gate and explanation figures."""
    decision, gate = evaluation["decision"], evaluation["ood_gate"]
    explanations = evaluation["explanations"]
    calibration = evaluation["calibration"]
    splits = [s for s in paths.HELD_OUT if s in decision]
    return {
        "calibration_scale": f"{calibration['scale']:.3f}",
        "calibration_shift": f"{calibration['shift']:.3f}",
        "ece_uncalibrated": f"{evaluation['test_uncalibrated']['ece']:.4f}",
        "band_low": f"{decision['low']:.4f}",
        "band_high": f"{decision['high']:.4f}",
        "band_error_rate": f"{decision['error_rate']:.3f}",
        "decision_rows": "\n".join(
            f"| {s} | {decision[s]['share_indeterminate']:.1%} | "
            f"{decision[s]['accuracy_decided']:.3f} | {decision[s]['sensitivity_decided']:.3f} | "
            f"{decision[s]['specificity_decided']:.3f} |"
            for s in splits
        ),
        "gate_threshold": f"{gate['threshold']:.2f}",
        "gate_frr": f"{gate['false_rejection_rate']:.1%}",
        "gate_rejection_rows": "\n".join(
            f"| {name} | {share:.1%} |" for name, share in gate["false_rejections"].items()
        ),
        "gate_detection_rows": "\n".join(
            f"| {kind} | {share:.1%} |" for kind, share in gate["ood_detection"].items()
        ),
        "deletion_share": f"{explanations['deletion']['share_hot_beats_control']:.0%}",
        "deletion_images": str(explanations["deletion"]["images"]),
        "deletion_gap": f"{explanations['deletion']['median_gap']:.2f}",
        "randomisation": f"{explanations['randomisation']['median_rank_correlation']:.2f}",
    }


def check_parity(
    model: keras.Model,
    session: onnxruntime.InferenceSession,
    decision: Decision,
    tolerance: float,
    onnx_bytes: int,
) -> dict:
    """Keras (and numpy for the calibration and the gate) against ONNX on the whole test
    split, and the ONNX map against TensorFlow Grad-CAM on 20 test images; written to
    metrics/export_onnx.json."""
    from pneumonia.faithfulness import gradcam
    from pneumonia.model import predict_probabilities, with_explanations
    from pneumonia.onnx_export import OUTPUTS

    test_images, _ = load_split("test")
    _, features, cams = with_explanations(model).predict(
        test_images.astype(np.float32), batch_size=128, verbose=0
    )
    keras_p = decision.calibration.apply(cams.mean(axis=(1, 2)))
    names = [OUTPUTS[k] for k in ("raw_probability", "probability", "ood_distance", "cam")]
    raw, onnx_p, distance, onnx_cams, onnx_features = inference.run(
        session, test_images, [*names, OUTPUTS["features"]]
    )
    check = parity(keras_p, onnx_p.astype(np.float64), decision.threshold)
    check["max_abs_diff_uncalibrated"] = float(
        np.max(np.abs(predict_probabilities(model, test_images) - raw.reshape(-1)))
    )
    check["max_rel_diff_features"] = float(
        np.max(np.abs(features - onnx_features)) / max(float(np.abs(features).max()), 1e-6)
    )
    keras_distance = decision.gate.distance(features)
    check["max_rel_diff_distance"] = float(
        np.max(np.abs(keras_distance - distance) / np.maximum(keras_distance, 1e-6))
    )
    # Grad-CAM's weighted sum before its ReLU against the graph's map (the served heatmap is
    # the ReLU of both): equal up to the factor h * w when the export is right.
    count = min(20, len(test_images))
    reference = gradcam(model, test_images[:count], rectify=False).reshape(count, -1)
    check["gradcam_min_pearson"] = float(
        min(
            np.corrcoef(a, b)[0, 1]
            for a, b in zip(reference, onnx_cams[:count].reshape(count, -1), strict=True)
        )
    )
    check["tolerance"] = tolerance
    check["passed"] = (
        check["max_abs_diff"] <= tolerance
        and check["max_abs_diff_uncalibrated"] <= tolerance
        and check["labels_differing"] == 0
        and check["max_rel_diff_distance"] <= 1e-3
        and check["max_rel_diff_features"] <= tolerance
        and check["gradcam_min_pearson"] >= 0.99
    )
    check["onnx_bytes"] = onnx_bytes
    paths.EXPORT_METRICS.write_text(json.dumps({"parity": check}, indent=2) + "\n")
    log.info(
        "parity on %d test images: max |diff| %.2e, %d labels differ, distance %.1e, "
        "Grad-CAM Pearson >= %.4f",
        check["images"],
        check["max_abs_diff"],
        check["labels_differing"],
        check["max_rel_diff_distance"],
        check["gradcam_min_pearson"],
    )
    return check


@dataclass(frozen=True)
class Decision:
    """What evaluate chose on validation: calibration, threshold, band and gate."""

    calibration: Calibration
    threshold: float
    band: dict
    gate: Gate


def load_decision(evaluation: dict) -> Decision:
    """The evaluate stage's choices, from its metrics.json and models/gate.npz."""
    from pneumonia.decision import Calibration, Gate

    calibration = evaluation["calibration"]
    with np.load(paths.GATE) as arrays:
        gate = Gate(
            mean=arrays["mean"],
            whitening=arrays["whitening"],
            threshold=evaluation["ood_gate"]["threshold"],
            false_rejection_rate=evaluation["ood_gate"]["false_rejection_rate"],
        )
    return Decision(
        calibration=Calibration(calibration["scale"], calibration["shift"]),
        threshold=float(evaluation["threshold"]),
        band={k: evaluation["decision"][k] for k in ("low", "high", "error_rate")},
        gate=gate,
    )


def describe(
    onnx_bytes: bytes,
    config: PreprocessConfig,
    labels: tuple,
    evaluation: dict,
    decision: Decision,
    opset: int,
) -> ModelMetadata:
    """model.json: what serving needs beside the graph, and where it came from."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from pneumonia.onnx_export import OUTPUTS, SERVED

    return ModelMetadata.model_validate(
        dict(
            model_version=model_version(onnx_bytes),
            threshold=decision.threshold,
            labels=(labels[0], labels[1]),
            input_name="image",
            outputs={k: OUTPUTS[k] for k in SERVED},
            preprocessing=config,
            calibration={
                "method": "platt",
                "scale": decision.calibration.scale,
                "shift": decision.calibration.shift,
            },
            decision_band=decision.band,
            ood_gate={
                "threshold": decision.gate.threshold,
                "false_rejection_rate": decision.gate.false_rejection_rate,
            },
            training_data_sha256=hashlib.sha256(paths.MANIFEST.read_bytes()).hexdigest(),
            metrics={
                "test": evaluation["test"],
                "test_ci95_low": evaluation["test_ci95_low"],
                "test_ci95_high": evaluation["test_ci95_high"],
                "decision_test": evaluation["decision"]["test"],
            },
            versions={
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "tf2onnx": tf2onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "opset": opset,
            },
        )
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
    config = PreprocessConfig.model_validate(prepared)
    evaluation = json.loads((paths.EVALUATE_LIVE / "metrics.json").read_text())
    train_info = json.loads(paths.TRAIN_INFO.read_text())

    decision = load_decision(evaluation)
    model = keras.models.load_model(paths.KERAS_MODEL)
    onnx_bytes = export_for_serving(
        model, config.image_size, params.opset, decision.calibration, decision.gate
    )
    paths.ONNX_MODEL.write_bytes(onnx_bytes)
    session = inference.session(onnx_bytes, threads=0)  # all cores, as before
    check = check_parity(model, session, decision, params.parity_tolerance, len(onnx_bytes))

    metadata = describe(onnx_bytes, config, labels, evaluation, decision, params.opset)
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
