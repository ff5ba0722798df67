"""The model's metadata file (models/model.json): what serving needs beside the ONNX graph.

A strict pydantic model: a missing, unknown, mistyped or out-of-range field fails at
load (MetadataError), so a bad file gives /health 503 instead of a fault per request.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumonia.decision.band import Band
from pneumonia.decision.calibration import Calibration, logit
from pneumonia.decision.view import VIEW_FEATURES, ViewCheck
from pneumonia.images.config import PreprocessConfig

VERSION_PATTERN = r"^sha256-[0-9a-f]{12}$"
SITE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # an MLflow tag value and a file-name-safe word


class MetadataError(ValueError):
    """model.json is malformed, or does not describe the model.onnx beside it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OutputNames(_Strict):
    """The graph's output names by role (see pneumonia.onnx_export.OUTPUTS)."""

    probability: str = Field(min_length=1)  # (N,) calibrated P(PNEUMONIA)
    ood_distance: str = Field(min_length=1)  # (N,) distance from the training features
    cam: str = Field(min_length=1)  # (N, h, w) class activation map of the logit
    features: str = Field(min_length=1)  # (N, F) the features the gate's distance measures
    use: str | None = Field(default=None, min_length=1)  # (N, K) intended-use logits


class CalibrationSpec(_Strict):
    """How the served probability was calibrated (already in the graph; recorded here)."""

    method: Literal["platt"]
    scale: float = Field(gt=0, allow_inf_nan=False)
    shift: float = Field(allow_inf_nan=False)


class ThresholdRule(_Strict):
    """How the threshold was chosen (pneumonia.decision.rates.choose_threshold): the rule a
    site's recalibration applies again on its own sample."""

    policy: Literal["youden", "youden_shifted", "target_sensitivity", "fixed"]
    target_sensitivity: float = Field(gt=0, le=1)


class DecisionBand(_Strict):
    """Below `low`: NORMAL; at or above `high`: PNEUMONIA; between: INDETERMINATE."""

    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)
    error_rate: float = Field(gt=0, lt=0.5)  # the conformal target of each class


class OodGate(_Strict):
    """The learned "is this a chest X-ray?" check: refuse when the distance is above."""

    threshold: float = Field(gt=0, allow_inf_nan=False)
    false_rejection_rate: float = Field(gt=0, lt=0.5)  # targeted on validation


class ViewCheckSpec(_Strict):
    """The view check (pneumonia.decision.view): lateral when the view features' score,
    features @ weights + bias, is above `threshold`."""

    weights: tuple[float, ...] = Field(min_length=VIEW_FEATURES, max_length=VIEW_FEATURES)
    bias: float = Field(allow_inf_nan=False)
    threshold: float = Field(allow_inf_nan=False)
    false_rejection_rate: float = Field(gt=0, lt=0.5)  # targeted on validation, per framing

    @model_validator(mode="after")
    def _finite(self) -> ViewCheckSpec:
        if not all(math.isfinite(weight) for weight in self.weights):
            raise ValueError("view_check.weights must be finite")
        return self

    def check(self) -> ViewCheck:
        """The check serving runs."""
        return ViewCheck(np.array(self.weights), self.bias, self.threshold)


class ReasonSpec(_Strict):
    """The refusal's reason head (pneumonia.decision.reason): reason.onnx beside model.onnx,
    named by its SHA-256 so the model version covers it."""

    file: Literal["reason.onnx"] = "reason.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    image_size: int = Field(ge=32, le=1024)  # the whole image's side it is fed


class ModelMetadata(_Strict):
    """The contents of model.json: version, thresholds, labels, tensor names, preprocessing."""

    model_version: str = Field(pattern=VERSION_PATTERN)  # model_version(): graph and ANSWERING
    threshold: float = Field(ge=0, le=1)  # calibrated P(PNEUMONIA) from which the label is
    labels: tuple[str, str]  # PNEUMONIA
    input_name: str = Field(min_length=1)
    outputs: OutputNames
    preprocessing: PreprocessConfig
    calibration: CalibrationSpec
    decision_band: DecisionBand
    ood_gate: OodGate
    training_data_sha256: str  # of data/manifest.csv: which images, labels and splits
    # A DICOM whose patient is older is refused (outside_training_population); None: no bound.
    max_patient_age_years: float | None = Field(default=None, gt=0)
    # A site's Platt map on the logit of the graph's calibrated probability, fitted by
    # `python -m pneumonia.recalibrate` on the site's labelled sample; None: served as is.
    recalibration: CalibrationSpec | None = None
    # Lateral views of plain images refused (lateral_view); None: a model from before it.
    view_check: ViewCheckSpec | None = None
    # What a refused image is named by (reason.onnx); None: the intended-use head's kind.
    reason: ReasonSpec | None = None
    site: str | None = Field(default=None, pattern=SITE_PATTERN)  # whose sample fitted it
    operating_point: ThresholdRule | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        if not all(self.labels) or len(set(self.labels)) != 2:
            raise ValueError(f"labels {self.labels!r} are not two distinct names")
        band = self.decision_band
        if not band.low <= self.threshold <= band.high:
            raise ValueError(
                f"the decision band [{band.low}, {band.high}) does not contain the "
                f"threshold {self.threshold}"
            )
        return self

    def served(self, graph_probabilities: np.ndarray) -> np.ndarray:
        """The probabilities the endpoint answers for the graph's calibrated ones: the same
        without a site's recalibration, else its Platt map on their logit."""
        if self.recalibration is None:
            return graph_probabilities
        site = Calibration(self.recalibration.scale, self.recalibration.shift)
        return site.apply(logit(graph_probabilities))

    def label_for(self, probability_pneumonia: float) -> str:
        """The predicted label: the positive one at or above the threshold."""
        return self.labels[1] if probability_pneumonia >= self.threshold else self.labels[0]

    def decision_for(self, probability_pneumonia: float) -> str:
        """NORMAL, PNEUMONIA or INDETERMINATE, by the decision band (the rule evaluate
        measured it with: pneumonia.decision.Band)."""
        band = Band(**self.decision_band.model_dump())
        return str(band.decide(np.array([probability_pneumonia]))[0])

    def to_json(self) -> str:
        """The file's text: indented JSON with a trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        """Parse and check model.json's text; any problem is one MetadataError naming it."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'model.json'}: {e['msg']}" for e in exc.errors()
            )
            raise MetadataError(f"model.json: {problems}") from None

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        """Read and check a model.json file."""
        return cls.from_json(Path(path).read_bytes())

    @classmethod
    def for_graph(cls, onnx_bytes: bytes, fields: dict[str, Any]) -> ModelMetadata:
        """model.json for a graph: `fields` checked, and the version they and the graph give."""
        draft = cls.model_validate({**fields, "model_version": "sha256-" + "0" * 12})
        return draft.model_copy(update={"model_version": draft.content_version(onnx_bytes)})

    def answering(self) -> dict[str, Any]:
        """The fields that turn the graph's outputs into an answer, as JSON values; unset
        ones (no age bound, no intended-use output) left out, so a model.json from before
        them keeps its version."""
        return self.model_dump(mode="json", include=set(ANSWERING), exclude_none=True)

    def content_version(self, onnx_bytes: bytes) -> str:
        """The version this metadata and these graph bytes give together."""
        return model_version(onnx_bytes, self.answering())

    def check_describes(self, onnx_bytes: bytes) -> None:
        """Refuse a model.onnx that is not the one this metadata was written for, and a
        model.json whose answering fields were edited after the export."""
        actual = self.content_version(onnx_bytes)
        if actual != self.model_version:
            raise MetadataError(
                f"model.json says {self.model_version}, but model.onnx with model.json's "
                f"answering fields gives {actual}: the files come from different exports, or "
                "model.json was edited after its export"
            )


# Every field of model.json that changes an answer: what the graph is fed (input name,
# preprocessing), what it outputs, and how an output becomes a label, a decision or a 422.
ANSWERING = (
    "labels",
    "input_name",
    "outputs",
    "preprocessing",
    "threshold",
    "calibration",
    "decision_band",
    "ood_gate",
    "max_patient_age_years",
    "recalibration",
    "view_check",
    "reason",
)


def model_version(onnx_bytes: bytes, answering: dict[str, Any]) -> str:
    """ "sha256-" and the first 12 hex digits of SHA-256 over the ONNX bytes, a newline, and
    the canonical JSON of the ANSWERING fields (keys sorted, no spaces, numbers as Python
    writes them: the shortest text that reads back to the same float). Any change to the
    graph or to what turns its outputs into an answer is a new version."""
    canonical = json.dumps(answering, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(onnx_bytes + b"\n" + canonical.encode())
    return "sha256-" + digest.hexdigest()[:12]
