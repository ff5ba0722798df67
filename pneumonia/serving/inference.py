"""The one place an onnxruntime session is built, and batched inference on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

SERVED_PROBABILITY = "probability_calibrated"  # the exported graph's served output


def session(model: bytes | Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU session for serialized ONNX bytes or a file; `threads` intra-op threads (0: all)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(
    session: onnxruntime.InferenceSession,
    images: np.ndarray,
    outputs: list[str],
    batch_size: int = 128,
) -> list[np.ndarray]:
    """The named outputs for (N, S, S, 1) images (uint8 or float32 levels 0..255), in batches."""
    input_name = session.get_inputs()[0].name
    parts = [
        session.run(outputs, {input_name: images[i : i + batch_size].astype(np.float32)})
        for i in range(0, len(images), batch_size)
    ]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]
