"""The one place an onnxruntime session is built, and batched inference on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime


def session(model: bytes | Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU session for serialized ONNX bytes or a file; `threads` intra-op threads (0: all)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict(
    session: onnxruntime.InferenceSession, images: np.ndarray, batch_size: int = 128
) -> np.ndarray:
    """(N,) P(PNEUMONIA), float64, for (N, S, S, 1) images (uint8 or float32 levels 0..255)."""
    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: images[i : i + batch_size].astype(np.float32)})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).reshape(-1).astype(np.float64)
