"""A loaded model: model.onnx and the model.json that describes it, and one image classified."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import onnxruntime

from pneumonia.imaging import ImageError, prepare_image
from pneumonia.metadata import ModelMetadata
from pneumonia.serving import inference
from pneumonia.serving.requests import ClientError

STATUS_FOR_REASON = {
    "empty": HTTPStatus.BAD_REQUEST,
    "not_an_image": HTTPStatus.BAD_REQUEST,
    "corrupt": HTTPStatus.BAD_REQUEST,
    "unsupported_format": HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "too_complex": HTTPStatus.UNPROCESSABLE_ENTITY,
}


@dataclass(frozen=True)
class Classifier:
    """The ONNX session and the metadata that says how to feed and read it."""

    session: onnxruntime.InferenceSession
    metadata: ModelMetadata

    @classmethod
    def load(cls, model_dir: Path, threads: int = 1) -> Classifier:
        """The session and its metadata; refuses a model.json that is malformed or names
        other bytes than the model.onnx beside it."""
        metadata = ModelMetadata.load(model_dir / "model.json")  # types and ranges checked
        onnx_bytes = (model_dir / "model.onnx").read_bytes()
        metadata.check_describes(onnx_bytes)  # the served bytes are the ones hashed
        return cls(inference.session(onnx_bytes, threads), metadata)

    def classify(self, image_bytes: bytes) -> tuple[str, float]:
        """(predicted label, P(PNEUMONIA)) for one encoded image; ClientError for bad bytes."""
        try:
            # Format, structure and pixel caps are checked from the bytes before decoding.
            pixels = prepare_image(image_bytes, self.metadata.preprocessing)  # (S, S, 1) uint8
        except ImageError as error:
            status = STATUS_FOR_REASON.get(error.reason, HTTPStatus.BAD_REQUEST)
            raise ClientError(status, str(error)) from None
        batch = pixels[np.newaxis].astype(np.float32)  # (1, S, S, 1)
        metadata = self.metadata
        (output,) = self.session.run([metadata.output_name], {metadata.input_name: batch})
        probability = float(np.clip(output.reshape(-1)[0], 0.0, 1.0))
        return metadata.label_for(probability), probability
