"""A release of the model: what evaluate chose (calibration, threshold, band, gate), the
model.json that describes the served graph, and its registration in MLflow."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pneumonia import paths, tracking
from pneumonia.decision.calibration import Calibration
from pneumonia.decision.contract import ModelMetadata
from pneumonia.decision.gate import FeatureGate
from pneumonia.decision.use import UseHead
from pneumonia.decision.view import ViewCheck
from pneumonia.images.config import PreprocessConfig
from pneumonia.release import registry
from pneumonia.release.export import OUTPUTS, SERVED

if TYPE_CHECKING:
    from pneumonia.decision.gate import FeatureGate

log = logging.getLogger("export_onnx")


@dataclass(frozen=True)
class Decision:
    """What evaluate chose on validation: calibration, threshold, band and gate."""

    calibration: Calibration
    threshold: float
    band: dict
    gate: FeatureGate
    use_head: UseHead | None = None  # the intended-use check, when evaluate fitted one
    view: ViewCheck | None = None  # the view check, when evaluate fitted one


def load_decision(evaluation: dict) -> Decision:
    """The evaluate stage's choices, from its metrics.json and models/gate.npz (the gate's
    arrays, and the intended-use head's under `use_*`)."""
    calibration = evaluation["calibration"]
    with np.load(paths.GATE) as arrays:
        gate = FeatureGate.from_arrays(
            arrays,
            evaluation["ood_gate"]["threshold"],
            evaluation["ood_gate"]["false_rejection_rate"],
        )
        use_head = UseHead.from_arrays(arrays, prefix="use_")
        view = ViewCheck.from_arrays(arrays, prefix="view_")
    return Decision(
        calibration=Calibration(calibration["scale"], calibration["shift"]),
        threshold=float(evaluation["threshold"]),
        band={k: evaluation["decision"][k] for k in ("low", "high", "error_rate")},
        gate=gate,
        use_head=use_head,
        view=view,
    )


def view_check_fields(view: ViewCheck | None, evaluation: dict) -> dict | None:
    """model.json's `view_check`: the check's weights, bias and threshold, and the rate it
    was set at (evaluate's `intended_use.view_check`)."""
    if view is None:
        return None
    fields: dict = {  # the arrays it is saved as: vectors as tuples, the rest as floats
        name: tuple(map(float, value)) if value.ndim else float(value)
        for name, value in view.arrays().items()
    }
    rate = evaluation["intended_use"]["view_check"]["false_rejection_rate"]
    return fields | {"false_rejection_rate": rate}


def reason_fields() -> dict:
    """model.json's `reason`: reason.onnx's SHA-256 and input size. Evaluate writes the file
    beside the view check it fits; export refuses to ship a model without it."""
    from pneumonia.decision.reason import REASON_SIZE
    from pneumonia.release.reason import REASON_MODEL as MODEL

    if not MODEL.exists():
        raise FileNotFoundError(f"{MODEL} is missing: dvc repro evaluate writes it")
    return {"sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(), "image_size": REASON_SIZE}


def describe_model(
    onnx_bytes: bytes,
    config: PreprocessConfig,
    labels: tuple,
    evaluation: dict,
    decision: Decision,
    opset: int,
    max_patient_age_years: float | None = None,
) -> ModelMetadata:
    """model.json: what serving needs beside the graph, and where it came from."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return ModelMetadata.for_graph(
        onnx_bytes,
        dict(
            threshold=decision.threshold,
            labels=(labels[0], labels[1]),
            input_name="image",
            outputs={k: OUTPUTS[k] for k in SERVED if k != "use" or decision.use_head is not None},
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
            max_patient_age_years=max_patient_age_years,
            view_check=view_check_fields(decision.view, evaluation),
            reason=reason_fields(),
            operating_point={
                "policy": evaluation["threshold_policy"],
                "target_sensitivity": evaluation["target_sensitivity"],
            },
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
        ),
    )


def track_and_register(metadata: ModelMetadata, check: dict, train_info: dict) -> None:
    """Parity into the training run in MLflow; the exact ONNX bytes registered if it passed."""
    tracking.configure()
    with tracking.start_run("export_onnx", run_id=train_info.get("mlflow_run_id")):
        tracking.log_metrics(
            {
                "onnx_parity_max_abs_diff": check["max_abs_diff"],
                "onnx_parity_labels_differing": check["labels_differing"],
                "onnx_keras_max_abs_diff": check["keras"]["max_abs_diff"],
                "onnx_keras_labels_differing": check["keras"]["labels_differing"],
            }
        )
        if check["passed"]:
            registered = registry.register(paths.ONNX_MODEL, paths.MODEL_METADATA, metadata)
            log.info("registered %s version %s", registry.REGISTERED_MODEL, registered)
