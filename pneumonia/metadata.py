"""The model's metadata file (models/model.json): what serving needs beside the ONNX graph."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

from pneumonia.imaging import Intensity, PreprocessConfig

VERSION_PATTERN = re.compile(r"sha256-[0-9a-f]{12}")


class MetadataError(ValueError):
    """model.json is malformed, or does not describe the model.onnx beside it."""


@dataclass(frozen=True)
class ModelMetadata:
    """The contents of model.json: version, threshold, labels, tensor names, preprocessing."""

    model_version: str  # content hash of the ONNX file, "sha256-<12 hex>"
    threshold: float  # P(PNEUMONIA) at or above which the label is PNEUMONIA
    labels: tuple[str, str]
    input_name: str
    output_name: str
    preprocessing: PreprocessConfig
    training_data_sha256: str  # of data/manifest.csv: which images, labels and splits
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check types and ranges: a bad file fails at load, not on every request."""
        problems = []
        if not (
            isinstance(self.model_version, str) and VERSION_PATTERN.fullmatch(self.model_version)
        ):
            problems.append(f"model_version {self.model_version!r} is not 'sha256-<12 hex>'")
        if not _is_real(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold {self.threshold!r} is not a number in [0, 1]")
        labels = self.labels
        if (
            len(labels) != 2
            or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != 2
        ):
            problems.append(f"labels {labels!r} are not two distinct names")
        for name in ("input_name", "output_name"):
            if not (isinstance(getattr(self, name), str) and getattr(self, name)):
                problems.append(f"{name} is not a non-empty string")
        problems += preprocessing_problems(self.preprocessing)
        if problems:
            raise MetadataError("model.json: " + "; ".join(problems))

    def label_for(self, probability_pneumonia: float) -> str:
        """The predicted label: the positive one at or above the threshold."""
        return self.labels[1] if probability_pneumonia >= self.threshold else self.labels[0]

    def to_json(self) -> str:
        """The file's text: indented JSON with a trailing newline."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict) -> ModelMetadata:
        """Build from parsed JSON; any missing, unknown or mistyped field is a MetadataError."""
        if not isinstance(raw.get("labels"), list):
            raise MetadataError("model.json: labels is not a list of two names")
        if not isinstance(raw.get("preprocessing"), dict):
            raise MetadataError("model.json: preprocessing is not an object")
        try:
            return cls(
                **{
                    **raw,
                    "labels": tuple(raw["labels"]),
                    "preprocessing": PreprocessConfig(**raw["preprocessing"]),
                }
            )
        except (KeyError, TypeError) as exc:  # a missing, unknown or mistyped field
            raise MetadataError(f"model.json: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        """Read and check a model.json file."""
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise MetadataError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw)

    def check_describes(self, onnx_bytes: bytes) -> None:
        """Refuse a model.onnx that is not the one this metadata was written for."""
        actual = model_version(onnx_bytes)
        if actual != self.model_version:
            raise MetadataError(
                f"model.json describes {self.model_version}, but model.onnx is {actual}: "
                "the two files come from different exports"
            )


def preprocessing_problems(config: PreprocessConfig) -> list[str]:
    """What is wrong with a preprocessing block, one message each; empty when valid."""
    problems = []
    if type(config.image_size) is not int or not 16 <= config.image_size <= 1024:
        problems.append(f"preprocessing.image_size {config.image_size!r} is not an int in 16..1024")
    if config.intensity not in get_args(Intensity):
        problems.append(
            f"preprocessing.intensity {config.intensity!r} is not one of {get_args(Intensity)}"
        )
    if not _is_real(config.clahe_clip_limit) or config.clahe_clip_limit <= 0:
        problems.append(f"preprocessing.clahe_clip_limit {config.clahe_clip_limit!r} is not > 0")
    if type(config.clahe_tile_grid) is not int or not 1 <= config.clahe_tile_grid <= 64:
        problems.append(f"preprocessing.clahe_tile_grid {config.clahe_tile_grid!r} is not in 1..64")
    return problems


def _is_real(value: object) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def model_version(onnx_bytes: bytes) -> str:
    """A version that changes exactly when the served graph changes."""
    return "sha256-" + hashlib.sha256(onnx_bytes).hexdigest()[:12]
