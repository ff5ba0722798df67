"""The model's metadata file (models/model.json): what serving needs beside the ONNX graph."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pneumonia.imaging import PreprocessConfig


@dataclass(frozen=True)
class ModelMetadata:
    model_version: str  # content hash of the ONNX file, "sha256-<12 hex>"
    threshold: float  # P(PNEUMONIA) at or above which the label is PNEUMONIA
    labels: tuple[str, str]
    input_name: str
    output_name: str
    preprocessing: PreprocessConfig
    training_data_sha256: str  # of data/manifest.csv: which images, labels and splits
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def label_for(self, probability_pneumonia: float) -> str:
        return self.labels[1] if probability_pneumonia >= self.threshold else self.labels[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict) -> ModelMetadata:
        return cls(
            **{
                **raw,
                "labels": tuple(raw["labels"]),
                "preprocessing": PreprocessConfig(**raw["preprocessing"]),
            }
        )

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        return cls.from_dict(json.loads(Path(path).read_text()))


def model_version(onnx_bytes: bytes) -> str:
    """A version that changes exactly when the served graph changes."""
    return "sha256-" + hashlib.sha256(onnx_bytes).hexdigest()[:12]
