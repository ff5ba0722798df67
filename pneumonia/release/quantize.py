"""The served network in 8-bit integers: onnxruntime's static quantization of the tf2onnx graph.

EfficientNet-Lite was designed for it (ReLU6, no squeeze-excitation). Every Conv, Clip (ReLU6),
Add and Mul of the network's graph is quantized: the convolutions run on int8 weights (one
scale per output channel), and the activations between them, and those of the per-image
standardisation's arithmetic, the 8 x 8 layout features and the map's bias, pass through
uint8 with ranges measured on training images (min-max calibration). On the 2-core AMD EPYC
(AVX-512 VNNI) the network runs in less than half the time
(docs/benchmarks.md#the-network-in-int8). The decision layer added after the network (the
calibration, the gate's distance, the intended-use head) stays float32.

The same integers with and without VNNI. Without it (AVX2 or AVX-512 alone), onnxruntime computes a
uint8 x int8 matrix product with VPMADDUBSW, which adds two products into int16 and saturates
at 32,767: with 8-bit weights two products reach 2 x 255 x 127. Under qemu's emulated Haswell,
8-bit weights moved the network's probability by up to 0.94 from the VNNI machine's (60 test
images, docs/serving.md#int8). So every convolution that runs as a matrix
product (the stem, the 1 x 1 expansions and projections, the head: `group` 1) takes 7-bit
weights (onnxruntime's `reduce_range`), whose pair sums fit int16; the depthwise convolutions,
whose kernel widens to 16 bits before it multiplies, keep 8-bit weights. The results are the
same with or without VNNI (`tests/integration/test_quantize.py` runs a saturating and a
widening emulated CPU), at the same speed; AVX-512 without VNNI is not measured.

Evaluate scores this graph and fits the threshold, band and gate on its outputs; export_onnx
serves it. Both build it with `pneumonia.release.export.served_network`, and export checks that
its bytes are the ones evaluate scored (`network_sha256`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

QUANTIZED_OPS = ["Conv", "Add", "Mul", "Clip"]  # the network's; the decision layer is added later
CALIBRATION_BATCH = 16

log = logging.getLogger(__name__)


def calibration_images(images: np.ndarray, count: int) -> np.ndarray:
    """`count` of the (training) images, evenly spaced in their order: the same ones for the
    same split, so evaluate and export calibrate alike."""
    if count < 1:
        raise ValueError(f"quantization needs calibration images, not {count}")
    chosen = np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int)
    return np.asarray(images[chosen], dtype=np.float32)


def quantize_network(network: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """`network` with its convolutions, activations and additions in int8 (QDQ format, weights
    per channel), activation ranges from `images` (N, S, S, 1)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {"image": images[i : i + CALIBRATION_BATCH]}
                    for i in range(0, len(images), CALIBRATION_BATCH)
                ]
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    raised = _Raised()
    logging.getLogger().addFilter(raised)  # onnxruntime's quantizer logs to the root logger
    try:
        with tempfile.TemporaryDirectory() as folder:
            return _quantized(network, Batches(), Path(folder))
    finally:
        logging.getLogger().removeFilter(raised)
        if raised.count:
            log.info(
                "int8: %d weight channels' scales raised so that their int32 biases fit",
                raised.count,
            )


class _Raised(logging.Filter):
    """Counts, and keeps out of the log, the quantizer's line per weight channel whose scale
    it raised so that its bias fits int32 (near-zero depthwise channels: hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Increased scale"):
            self.count += 1
            return False
        return True


def _quantized(
    network: onnx.ModelProto, batches: CalibrationDataReader, folder: Path
) -> onnx.ModelProto:
    """quantize_static on files in `folder`: what onnxruntime's quantizer reads and writes."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, output = (folder / name for name in ("in.onnx", "pre.onnx", "q.onnx"))
    onnx.save(network, source)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(output),
        batches,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": seven_bit_weights(onnx.load(prepared))},
    )
    return onnx.load(output)


def seven_bit_weights(network: onnx.ModelProto) -> dict[str, list[dict]]:
    """quantize_static's overrides that give 7-bit weights to each convolution computed as a
    matrix product (`group` 1), so that no VPMADDUBSW pair sum saturates on x86 without VNNI;
    the depthwise convolutions keep 8 bits."""
    overrides = {}
    for node in network.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group == 1:
            overrides[node.input[1]] = [{"axis": 0, "reduce_range": True}]
    return overrides


def network_sha256(network: bytes) -> str:
    """The content hash evaluate records and export checks."""
    return hashlib.sha256(network).hexdigest()
