"""One inference call, onnxruntime against tf.function, for a few sizes of the network.

Untrained weights (the time of a call does not depend on their values), single
thread, batch of one, in this process: how each runtime's cost scales with the
network, and where TensorFlow's per-call floor lies. The endpoint benchmark
(benchmarks/endpoint.py) measures the trained model inside the real handler.

    python benchmarks/network_sizes.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from pneumonia.machine import describe

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(24, 128), (16, 128), (24, 96), (16, 96), (16, 64)]  # (train.width, image_size)


def p50_ms(function, calls: int) -> float:
    for _ in range(50):
        function()
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()

    os.chdir(ROOT)  # params.yaml
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from pneumonia.config import load_params
    from pneumonia.model.network import build_model
    from pneumonia.release.export import convert
    from pneumonia.serving import inference

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    params = load_params().train
    rows = []
    for width, size in SIZES:
        model = build_model(
            size, params.model_copy(update={"architecture": "resnet", "width": width})
        )
        batch = np.random.default_rng(0).integers(0, 256, (1, size, size, 1)).astype(np.float32)
        call = tf.function(lambda x, model=model: model(x, training=False), reduce_retracing=True)
        tf_ms = p50_ms(lambda call=call, batch=batch: call(batch).numpy(), args.calls)
        session = inference.session(convert(model, size, opset=17), threads=1)
        feeds = {session.get_inputs()[0].name: batch}
        onnx_ms = p50_ms(lambda session=session, feeds=feeds: session.run(None, feeds), args.calls)
        rows.append((width, size, model.count_params(), onnx_ms, tf_ms))
        print(f"width {width}, {size} px done", flush=True)

    print(f"\nmachine: {describe()}")
    print(f"one call, batch of 1, single thread, p50 of {args.calls} calls, architecture resnet")
    print(f"{'width':>5} {'px':>4} {'parameters':>10} {'ONNX ms':>8} {'TF ms':>7} {'TF / ONNX':>9}")
    for width, size, count, onnx_ms, tf_ms in rows:
        ratio = tf_ms / onnx_ms
        print(f"{width:>5} {size:>4} {count:>10,} {onnx_ms:>8.2f} {tf_ms:>7.2f} {ratio:>8.1f}x")


if __name__ == "__main__":
    main()
