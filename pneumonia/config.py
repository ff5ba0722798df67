"""params.yaml loaded into typed, frozen objects; an unknown or missing key fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pneumonia.images.config import PreprocessConfig

PARAMS_FILE = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    """The `base` section: the global seed and the two class names, negative first."""

    seed: int
    labels: tuple[str, str]


class IngestParams(_Section):
    """The `ingest` section: where the images come from and how they are split."""

    source: str
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$")
    require_sha256: bool  # refuse an archive, .npz or download without sha256
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    shift_fraction: float = Field(ge=0, lt=0.25)
    min_official_val_images: int = Field(ge=0)
    max_images: int | None = Field(gt=0)


class AugmentParams(_Section):
    """`train.augment`: the random training-time transforms and their strengths."""

    enabled: bool
    crop_scale_min: float = Field(gt=0, le=1)
    pad_max: float = Field(ge=0, le=1)
    aspect: float = Field(ge=0, le=1)
    horizontal_flip: bool
    rotation_degrees: float = Field(ge=0, le=45)
    brightness: float = Field(ge=0, le=1)
    contrast: float = Field(ge=0, le=1)
    gamma: float = Field(ge=0, le=2)
    noise_std: float = Field(ge=0, le=1)
    jpeg_quality_min: int = Field(ge=1, le=100)
    # Sharpness, as detectors and their post-processing differ: an unsharp mask of random
    # strength in [-s, s] (below 0 it blurs), before the intensity step. 0 turns it off.
    sharpness: float = Field(default=0.0, ge=0, le=1)
    # The preprocessing's intensity step (CLAHE) after the random box, flip and rotation, as
    # serving computes it on whatever field of view an image has; false: before them.
    intensity_last: bool = False
    # Mixup: each image blended with another of its batch, lambda ~ Beta(a, a) folded to
    # [0.5, 1] (the image keeps the larger share), its label and class weight blended alike.
    # 0 turns it off.
    mixup_alpha: float = Field(default=0.0, ge=0, le=1)


class TrainParams(_Section):
    """The `train` section: architecture, optimiser, schedule and distribution."""

    architecture: Literal["simple", "resnet", "efficientnet_lite0", "efficientnet_lite0_stride16"]
    width: int = Field(ge=4)
    depth: int = Field(ge=1, le=6)
    dropout: float = Field(ge=0, lt=1)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=0.5)
    class_weight: Literal["balanced", "none"]
    early_stopping_patience: int = Field(ge=1)
    # An exponential moving average of the weights (Keras's optimizer EMA), used for
    # validation, early stopping and the saved model; None turns it off.
    ema_momentum: float | None = Field(default=None, gt=0, lt=1)
    # Layer-wise learning-rate decay for the ImageNet backbone: a layer `k` levels below the
    # head learns at learning_rate * decay**k (the stem lowest); 1.0: one rate for all.
    layer_lr_decay: float = Field(default=1.0, gt=0, le=1)
    distribution: Literal["auto", "default", "mirrored", "multi_worker_mirrored"]
    augment: AugmentParams


class EvaluateParams(_Section):
    """The `evaluate` section: the threshold policy, bootstrap resamples and calibration bins."""

    threshold_policy: Literal["youden", "youden_shifted", "target_sensitivity", "fixed"]
    target_sensitivity: float = Field(gt=0, le=1)
    fixed_threshold: float = Field(ge=0, le=1)
    bootstrap_samples: int = Field(ge=100)
    calibration_bins: int = Field(ge=2)
    indeterminate_error_rate: float = Field(gt=0, lt=0.5)
    ood_false_rejection_rate: float = Field(gt=0, lt=0.5)
    # The gate's distance in this many leading principal components of the features, plus
    # the rest as one residual; null: all of them (pneumonia.decision.gate).
    gate_components: int | None = Field(default=None, ge=1)


class ExportParams(_Section):
    """The `export_onnx` section: ONNX opset, quantization, the parity tolerances and the age
    bound of the intended use that model.json carries."""

    opset: int = Field(ge=13)
    parity_tolerance: float = Field(gt=0)
    # The served network in int8 (onnxruntime static quantization, activation ranges from
    # `quantize_images` training images) or as tf2onnx writes it; evaluate scores this graph.
    quantize: Literal["int8", "none"] = "none"
    quantize_images: int = Field(default=256, ge=1)
    # int8: the largest |p_keras - p_served| on test the quantization may cause.
    quantization_tolerance: float = Field(default=0.25, gt=0)
    # Intended use, written to model.json: a DICOM of an older patient is refused.
    max_patient_age_years: float = Field(gt=0)


class GateParams(_Section):
    """The `gate` section: the floors and regression tolerance of the pull-request gate."""

    min_roc_auc: float = Field(ge=0, le=1)
    min_sensitivity: float = Field(ge=0, le=1)
    max_regression: float = Field(ge=0, le=1)


class Params(_Section):
    """All of params.yaml, one attribute per section."""

    base: BaseParams
    ingest: IngestParams
    preprocess: PreprocessConfig  # the one type: serving reads it from model.json
    train: TrainParams
    evaluate: EvaluateParams
    export_onnx: ExportParams
    gate: GateParams


class ParamsError(ValueError):
    """params.yaml does not match the contract; the message names the key."""


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; every problem is reported with its dotted key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif item["type"] == "missing":
                problems.append(f"missing key '{key}'")
            else:
                problems.append(f"'{key}': {item['msg']}")
        raise ParamsError("params.yaml: " + "; ".join(problems)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    with open(path) as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return parse_params(raw)
