"""What the gate, DICOM decoding and explanations cost per request, single thread.

Needs the pipeline's outputs (models/model.onnx, model.json: `make repro`) and the data
(`make data`). On real 224x224 JPEGs of the test split, through the served Classifier:

- "label only": decode, preprocess, the network's probability: the request before the
  "not a chest X-ray" gate, the calibration and the decision existed;
- "plain request": the same plus the cheap checks, the calibrated probability, the gate's
  distance and the decision (what POST /predict does now);
- "DICOM request": the same pictures as uncompressed DICOM (8-bit, window 128/256);
- "explained request": a plain request with ?explain=true (map, heatmap and overlay PNGs);
- "decode_dicom 2048x2048 16-bit": a windowed 12-bit-in-16 MONOCHROME2 image, uncompressed.

With --baseline DIR (a model directory with model.onnx and model.json, e.g. an earlier
model's, fetched with `dvc get --rev`), a second table: the plain request of that model and
of the model measured, interleaved round by round on the same images, and the ratio of their
medians. --model DIR measures another model directory than models/ (an experiment's).

    python -m benchmarks.answers [--requests 300] [--baseline DIR] [--model DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np

from pneumonia.machine import describe

ROOT = Path(__file__).resolve().parents[1]


def dicom_of(pixels: np.ndarray, bits: int = 8) -> bytes:
    """An explicit VR little endian DICOM file of grayscale pixels (uint8 or uint16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = (128, 256) if bits == 8 else (2048, 4096)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def timed(function, inputs: list, count: int) -> list[float]:
    """Milliseconds of `function(input)` for `count` calls cycling through `inputs`."""
    function(inputs[0])  # warm
    timings = []
    for index in range(count):
        started = time.perf_counter()
        function(inputs[index % len(inputs)])
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline", type=Path, help="a model directory to compare with")
    parser.add_argument("--model", type=Path, default=ROOT / "models", help="the model measured")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    from pneumonia.data.prepared import load_files
    from pneumonia.images.decode import decode_gray
    from pneumonia.images.dicom import decode_dicom
    from pneumonia.images.prepare import prepare_image
    from pneumonia.release.export import OUTPUTS
    from pneumonia.serving.classifier import Classifier

    model = Classifier.load(args.model, threads=1)
    meta = model.metadata
    jpegs = [(ROOT / "data" / "raw" / name).read_bytes() for name in load_files("test")[:100]]
    dicoms = [dicom_of(decode_gray(data)) for data in jpegs]

    def label_only(data: bytes) -> None:
        batch = prepare_image(data, meta.preprocessing)[np.newaxis].astype(np.float32)
        model.session.run([OUTPUTS["raw_probability"]], {meta.input_name: batch})

    rng = np.random.default_rng(0)
    big = (rng.random((2048, 2048)) * 4095).astype(np.uint16)
    rows = {
        "label only (before the gate)": timed(label_only, jpegs, args.requests),
        "plain request": timed(refused_or_answered(model.classify), jpegs, args.requests),
        "DICOM request": timed(refused_or_answered(model.classify), dicoms, args.requests),
        "explained request": timed(
            refused_or_answered(lambda d: model.classify(d, explain=True)), jpegs, args.requests
        ),
        "decode_dicom 2048x2048 16-bit": timed(decode_dicom, [dicom_of(big, bits=12)], 30),
    }
    base = float(np.median(rows["label only (before the gate)"]))
    print(f"machine: {describe()}; one thread; {args.requests} requests of 224x224 test images")
    print(f"| {'path':<32} | p50 ms | p99 ms | p50 vs label only |")
    print(f"|{'-' * 34}|-------:|-------:|------------------:|")
    for name, values in rows.items():
        p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
        ratio = f"{p50 / base:.2f}x" if "decode_dicom" not in name else "-"
        print(f"| {name:<32} | {p50:6.2f} | {p99:6.2f} | {ratio:>17} |")
    plain = float(np.median(rows["plain request"]))
    explained = float(np.median(rows["explained request"]))
    print(f"explained / plain: {explained / plain:.2f}x")
    if args.baseline:
        compare(Classifier.load(args.baseline, threads=1), model, jpegs, args.requests)


def compare(baseline, model, jpegs: list[bytes], count: int) -> None:
    """The plain request of two models, interleaved in rounds of the same images."""
    classifiers = {"baseline": baseline, "measured": model}
    timings: dict[str, list[float]] = {name: [] for name in classifiers}
    for _ in range(max(1, count // len(jpegs))):
        for name, classifier in classifiers.items():
            timings[name] += timed(refused_or_answered(classifier.classify), jpegs, len(jpegs))
    base = float(np.median(timings["baseline"]))
    print(f"\n| {'plain request':<32} | p50 ms | p99 ms | p50 vs baseline |")
    print(f"|{'-' * 34}|-------:|-------:|----------------:|")
    for name, values in timings.items():
        p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
        label = f"{name} ({classifiers[name].metadata.model_version})"
        print(f"| {label:<32} | {p50:6.2f} | {p99:6.2f} | {p50 / base:14.2f}x |")


def refused_or_answered(function):
    """`function` timed whether it answers or refuses (a refused image still costs its time)."""

    def run(data: bytes) -> None:
        try:
            function(data)
        except Exception as error:
            if type(error).__name__ != "ClientError":
                raise

    return run


if __name__ == "__main__":
    main()
