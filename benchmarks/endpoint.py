"""The endpoint's speed and footprint against the same model served through TensorFlow/Keras.

Needs the pipeline's outputs (models/model.onnx, model.json, model.keras: `make repro`).
On real 224x224 JPEGs of the default data, single thread, in fresh processes:

- warm latency p50 / p99 of one request: decode + preprocess + inference, through
  the real handler on API Gateway events in both paths (TF: the Keras model under
  tf.function answers the handler's session.run(); that process also imports
  onnxruntime, as app.py does), and the same requests split into their parts;
- cold start: process spawn to the first response (median of --cold-runs);
- decode + preprocess by input size, with and without libjpeg's DCT scaling;
- peak RSS; the installed size of each path's Python dependencies;
- a bounded load run against the local endpoint (pneumonia.serving.local) on loopback.

The served network is in int8 when `export_onnx.quantize` says so (the pipeline quantizes it;
`python -m benchmarks.answers --baseline DIR` times it against a float model).

    python benchmarks/endpoint.py [--requests 300] [--cold-runs 5] [--load-requests 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np

from pneumonia.machine import describe

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "source" / "chest-xray-pneumonia" / "train"  # `make data`
EVENT = ROOT / "tests" / "events" / "predict_binary.json"


def child(path: str, model_dir: str, count: int, image_paths: list[str]) -> None:
    """In a fresh interpreter: cold start, then warm requests, then the peak RSS."""
    import base64
    import resource

    import cv2

    cv2.setNumThreads(1)  # one thread throughout, as in a 1-vCPU Lambda
    images = [Path(p).read_bytes() for p in image_paths]
    if path == "tf":
        # The same handler, with the Keras model answering onnxruntime's run() call.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        os.environ["MODEL_DIR"] = tempfile.mkdtemp()  # so the app loads no ONNX model
        import keras
        import tensorflow as tf

        import pneumonia.model.network  # noqa: F401  (registers the custom layer)
        from pneumonia.decision.contract import ModelMetadata
        from pneumonia.serving import app
        from pneumonia.serving.classifier import Classifier

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from pneumonia.decision.calibration import sigmoid
        from pneumonia.decision.gate import FeatureGate
        from pneumonia.decision.use import UseHead
        from pneumonia.model.network import with_explanations

        model = with_explanations(keras.models.load_model(f"{model_dir}/model.keras"))
        call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        metadata = ModelMetadata.load(Path(model_dir) / "model.json")
        with np.load(Path(model_dir) / "gate.npz") as arrays:
            gate = FeatureGate.from_arrays(arrays, math.inf, 0.0)
            use = UseHead.from_arrays(arrays, prefix="use_")

        class KerasSession:
            """The served graph's outputs, from Keras and numpy."""

            def run(self, output_names, feeds):
                (batch,) = feeds.values()
                _, features, cams = (t.numpy() for t in call(batch))
                c = metadata.calibration
                outputs = {
                    metadata.outputs.probability: sigmoid(c.scale * cams.mean((1, 2)) + c.shift),
                    metadata.outputs.ood_distance: gate.distance(features),
                    metadata.outputs.cam: cams,
                    metadata.outputs.features: features,
                }
                if use is not None and metadata.outputs.use:
                    outputs[metadata.outputs.use] = use.logits(features)
                return [outputs[name] for name in output_names]

        app.MODEL = Classifier(KerasSession(), metadata)  # type: ignore[arg-type]
    else:
        from pneumonia.serving import app
    from pneumonia.serving.local import LocalContext

    assert app.MODEL is not None, "the model did not load"
    session, meta = app.MODEL.session, app.MODEL.metadata
    event = json.loads(EVENT.read_text())
    context = LocalContext(memory_limit_in_mb=1769)

    def predict(data: bytes) -> None:
        event["body"] = base64.b64encode(data).decode()
        response = app.lambda_handler(event, context)
        # 422: a refusal after inference (the gate or the intended-use check), as costly.
        assert response["statusCode"] in (200, 422), response

    predict(images[0])
    print("READY", flush=True)
    timings = []
    for index in range(count):
        started = time.perf_counter()
        predict(images[index % len(images)])
        timings.append((time.perf_counter() - started) * 1000)
    print("TIMINGS " + json.dumps(timings))
    print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    print("PARTS " + json.dumps(time_parts(images, count, session, meta)), flush=True)


def time_parts(images: list[bytes], count: int, session, meta) -> dict[str, list[float]]:
    """The same requests in parts: the shared preprocessing, then the network alone (ms)."""
    from pneumonia.images.prepare import prepare_image

    parts: dict[str, list[float]] = {"prepare": [], "inference": []}
    for index in range(count):
        started = time.perf_counter()
        batch = prepare_image(images[index % len(images)], meta.preprocessing)[np.newaxis]
        batch = batch.astype(np.float32)
        prepared = time.perf_counter()
        session.run([meta.outputs.probability], {meta.input_name: batch})
        parts["prepare"].append((prepared - started) * 1000)
        parts["inference"].append((time.perf_counter() - prepared) * 1000)
    return parts


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def spawn(path: str, images: list[Path], count: int, env: dict) -> dict:
    """One fresh process of a serving path: its cold start, `count` warm requests, its RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.endpoint", "--child", path, "models", str(count)]
        + [str(image) for image in images],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    result: dict = {"cold_s": None}
    for line in process.stdout:
        if line.startswith("READY") and result["cold_s"] is None:
            result["cold_s"] = time.perf_counter() - started
        elif line.startswith("TIMINGS "):
            result["timings"] = json.loads(line[8:])
        elif line.startswith("MAXRSS "):
            result["rss_mib"] = int(line.split()[1]) / 1024
        elif line.startswith("PARTS "):
            result["parts"] = json.loads(line[6:])
    if process.wait() != 0 or result["cold_s"] is None:
        sys.exit(f"the {path} path failed; run it by hand")
    return result


def run_path(path: str, images: list[Path], count: int, env: dict, cold_runs: int) -> dict:
    """Cold start (median of `cold_runs` fresh processes), warm p50/p99 and peak RSS."""
    colds = [spawn(path, images, 0, env)["cold_s"] for _ in range(cold_runs - 1)]
    main = spawn(path, images, count, env)
    colds.append(main["cold_s"])
    return {
        "cold_s": float(np.median(colds)),
        "cold_runs": colds,
        "p50_ms": percentile(main["timings"], 50),
        "p99_ms": percentile(main["timings"], 99),
        "rss_mib": main["rss_mib"],
        "prepare_p50_ms": percentile(main["parts"]["prepare"], 50),
        "inference_p50_ms": percentile(main["parts"]["inference"], 50),
    }


def distribution_closure(roots: list[str]) -> set[str]:
    """The installed distributions `roots` pull in (markers and extras ignored)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = re.split(r"[ ;\[<>=!~]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in requires if "extra ==" not in r)
    return seen


def installed_mib(distributions: set[str]) -> float:
    total = 0
    for name in distributions:
        for file in metadata.files(name) or []:
            located = Path(str(file.locate()))
            if located.is_file():
                total += located.stat().st_size
    return total / 2**20


def load_run(images: list[Path], total: int, clients: int, env: dict) -> dict:
    """`clients` threads sending `total` binary requests to the local endpoint on loopback."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pneumonia.serving.local", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    url = re.search(r"serving on (\S+)", server.stdout.readline()).group(1) + "/predict"
    # the server's access log goes on to stdout: drain it, or the pipe fills and the server
    # blocks mid-run on its log write (the load run then stalls)
    threading.Thread(target=server.stdout.read, daemon=True).start()
    bodies = [p.read_bytes() for p in images]
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(offset: int) -> None:
        nonlocal errors
        for index in range(offset, total, clients):
            request = urllib.request.Request(
                url, bodies[index % len(bodies)], {"Content-Type": "image/jpeg"}
            )
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    ok = response.status == 200
                    response.read()
            except urllib.error.HTTPError as refused:  # a 4xx is an answer (the image refused)
                ok = refused.code < 500
                refused.read()
            except OSError:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += 0 if ok else 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    server.terminate()
    server.wait(timeout=10)
    return {
        "requests": total,
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "per_s": total / seconds,
    }


def decode_report(images: list[Path], sides: tuple[int, ...] = (224, 1024, 2048)) -> None:
    """decode + preprocess p50 by input size, with libjpeg's DCT scaling and without it.

    Radiographs reach hospitals at 1-3k px a side; the dataset here is 224 px, so the
    larger inputs are its images upscaled (bicubic) and re-encoded as JPEG (quality 90).
    """
    import io

    import cv2
    from PIL import Image

    from pneumonia.decision.contract import ModelMetadata
    from pneumonia.images.decode import decode_gray
    from pneumonia.images.prepare import prepare_image

    cv2.setNumThreads(1)
    config = ModelMetadata.load(ROOT / "models" / "model.json").preprocessing

    def p50(function, blobs: list[bytes], repeats: int = 10) -> float:
        timings = []
        for _ in range(repeats):
            for blob in blobs:
                started = time.perf_counter()
                function(blob)
                timings.append((time.perf_counter() - started) * 1000)
        return percentile(timings, 50)

    print(f"\ndecode + preprocess to {config.image_size} px, single thread, p50 ms")
    print(f"{'JPEG side px':<14} {'DCT-scaled':>11} {'full decode':>12}")
    for side in sides:
        blobs = []
        for image_path in images:
            if side == 224:
                blobs.append(image_path.read_bytes())
                continue
            buffer = io.BytesIO()
            with Image.open(image_path) as image:
                image.convert("L").resize((side, side), Image.Resampling.BICUBIC).save(
                    buffer, "JPEG", quality=90
                )
            blobs.append(buffer.getvalue())
        scaled = p50(lambda blob: prepare_image(blob, config), blobs)
        full = p50(lambda blob: prepare_image(decode_gray(blob), config), blobs)
        print(f"{side:<14} {scaled:>11.2f} {full:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load-requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per path")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, model_dir, count, *image_paths = args.child
        child(path, model_dir, int(count), image_paths)
        return

    images = sorted((DATA / "NORMAL").iterdir())[:50] + sorted((DATA / "PNEUMONIA").iterdir())[:50]
    env = {
        **os.environ,
        "MODEL_DIR": str(ROOT / "models"),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "ONNX_THREADS": "1",
        # Set by the Lambda runtime. Without it the X-Ray SDK (under Powertools' Tracer)
        # builds a botocore client for its sampler at import, which it never does in Lambda.
        "LAMBDA_TASK_ROOT": str(ROOT / "lambda"),
        "OMP_NUM_THREADS": "1",
    }
    print("measuring the ONNX path ...", file=sys.stderr, flush=True)
    onnx_path = run_path("onnx", images, args.requests, env, args.cold_runs)
    print("measuring the TensorFlow path ...", file=sys.stderr, flush=True)
    tf_path = run_path("tf", images, args.requests, env, args.cold_runs)
    onnx_path["deps_mib"] = installed_mib(
        distribution_closure(
            [
                "aws-lambda-powertools",
                "onnxruntime",
                "numpy",
                "pillow",
                "opencv-python-headless",
                "pydantic",
            ]
        )
    )
    tf_path["deps_mib"] = installed_mib(
        distribution_closure(
            [
                "aws-lambda-powertools",
                "tensorflow",
                "keras",
                "numpy",
                "pillow",
                "opencv-python-headless",
                "pydantic",
            ]
        )
    )

    print(f"\nmachine: {describe()}")
    print(
        f"one request = decode + preprocess + inference of a 224x224 JPEG, single thread, "
        f"{args.requests} warm requests; cold start: median of {args.cold_runs} fresh processes"
    )
    print(f"{'':<22} {'ONNX':>15} {'TF/Keras':>10} {'TF / ONNX':>10}")
    for key, label in [
        ("p50_ms", "warm p50 ms"),
        ("p99_ms", "warm p99 ms"),
        ("cold_s", "cold start s"),
        ("rss_mib", "peak RSS MiB"),
        ("deps_mib", "dependencies MiB"),
        ("prepare_p50_ms", "  decode+prep p50 ms"),
        ("inference_p50_ms", "  inference p50 ms"),
    ]:
        ratio = tf_path[key] / onnx_path[key]
        print(f"{label:<22} {onnx_path[key]:>15.2f} {tf_path[key]:>10.2f} {ratio:>9.1f}x")
    print(
        "(both paths run the same Powertools handler on the same API Gateway events; "
        "decode+prep is the same function in both; the rest of a request is the handler)"
    )
    for name, result in (("ONNX", onnx_path), ("TF/Keras", tf_path)):
        runs = ", ".join(f"{cold:.2f}" for cold in result["cold_runs"])
        print(f"cold starts, {name}: {runs} s")
    decode_report(images[:20])

    print(f"\nload: {args.clients} clients -> local endpoint on 127.0.0.1 ...", file=sys.stderr)
    load = load_run(images, args.load_requests, args.clients, env)
    print(f"\nload run, {args.clients} concurrent clients, loopback, local endpoint")
    print(
        f"requests {load['requests']}, errors (5xx or none) {load['errors']}, "
        f"p50 {load['p50_ms']:.1f} ms, "
        f"p99 {load['p99_ms']:.1f} ms, {load['per_s']:.0f} requests/s"
    )


if __name__ == "__main__":
    main()
