"""The served network in int8: a real onnxruntime static quantization of the tf2onnx graph."""

from __future__ import annotations

import os
import platform
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import IMAGE_SIZE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pixels(sample_data) -> np.ndarray:
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.prepare import prepare_image

    config = PreprocessConfig(
        image_size=IMAGE_SIZE, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    files = sorted(sample_data.rglob("*.jpeg"))
    return np.stack([prepare_image(path.read_bytes(), config) for path in files]).astype(np.float32)


def test_the_int8_network_runs_in_integers_and_answers_as_keras_does(keras_model, pixels):
    # GIVEN the sample's images, half of them to calibrate the activation ranges
    import onnx

    from pneumonia.release.export import served_network
    from pneumonia.release.quantize import calibration_images, network_sha256
    from pneumonia.serving import inference

    images = calibration_images(pixels[::2], 64)
    # WHEN the network is exported in int8, twice, and as tf2onnx writes it
    int8 = served_network(keras_model, IMAGE_SIZE, 17, "int8", images)
    again = served_network(keras_model, IMAGE_SIZE, 17, "int8", images)
    full = served_network(keras_model, IMAGE_SIZE, 17)
    # THEN the same images give the same bytes (export checks evaluate's hash against its own)
    assert network_sha256(int8) == network_sha256(again)
    # AND its convolutions read int8 weights through QuantizeLinear / DequantizeLinear
    graph = onnx.load_from_string(int8).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(full).graph.node)
    # AND on every image, the ones it was not calibrated on too, its probability, map and
    # features stay near the float graph's
    outputs = ["probability_pneumonia", "cam", "features"]
    p8, cam8, f8 = inference.run(inference.session(int8), pixels, outputs)
    p32, cam32, f32 = inference.run(inference.session(full), pixels, outputs)
    assert np.max(np.abs(p8 - p32)) < 0.1
    for a, b in zip(cam8.reshape(len(pixels), -1), cam32.reshape(len(pixels), -1), strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.9
    assert np.max(np.abs(f8 - f32)) < 0.1 * np.abs(f32).max()


def test_calibration_images_are_spread_over_the_split_and_refuse_none():
    from pneumonia.release.quantize import calibration_images

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    assert calibration_images(images, 4).ravel().tolist() == [0, 3, 6, 9]
    assert calibration_images(images, 50).ravel().tolist() == list(range(10))
    assert calibration_images(images, 4).dtype == np.float32
    with pytest.raises(ValueError, match="calibration images"):
        calibration_images(images, 0)


# The network's outputs for images.npy, written to outputs.npz: run by an emulated CPU.
_OUTPUTS_SCRIPT = """
import sys
import numpy as np
import onnxruntime
network, folder = sys.argv[1], sys.argv[2]
session = onnxruntime.InferenceSession(network, providers=["CPUExecutionProvider"])
names = [output.name for output in session.get_outputs()]
outputs = session.run(names, {"image": np.load(folder + "/images.npy")})
np.savez(folder + "/outputs.npz", **dict(zip(names, outputs)))
"""
# qemu-user's x86 CPUs: onnxruntime multiplies uint8 by int8 with VPMADDUBSW where there is
# AVX2 and no VNNI (Haswell), which adds two products into int16 and saturates; with AVX alone
# (Sandy Bridge) it widens to 16 bits first and cannot saturate, as VNNI cannot.
SATURATING, WIDENING = "Haswell-noTSX", "SandyBridge"


def outputs_on(cpu: str, network: bytes, pixels: np.ndarray, folder: Path) -> dict:
    """The network's outputs on `cpu`: this Python under qemu-user (qemu-user-static, which
    .ci/run installs)."""
    qemu = shutil.which("qemu-x86_64-static")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.fail("needs an x86_64 host with qemu-x86_64-static (Debian's qemu-user-static)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "network.onnx").write_bytes(network)
    np.save(folder / "images.npy", pixels)
    (folder / "outputs.py").write_text(_OUTPUTS_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    python = str(Path(sys.executable).resolve())  # the interpreter, not the venv's link to it
    command = [qemu, "-cpu", cpu, python, str(folder / "outputs.py")]
    command += [str(folder / "network.onnx"), str(folder)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "outputs.npz") as outputs:
        return dict(outputs)


def test_the_int8_network_gives_the_same_answers_on_x86_without_vnni(
    keras_model, pixels, tmp_path, monkeypatch
):
    # GIVEN the int8 network as the pipeline builds it: its matrix-product convolutions on
    # int8 weights no larger than 64 (7 bits), its depthwise ones on 8 bits
    import pneumonia.release.quantize as quantize
    from pneumonia.release.export import served_network
    from pneumonia.serving import inference

    images = quantize.calibration_images(pixels[::2], 64)
    int8 = served_network(keras_model, IMAGE_SIZE, 17, "int8", images)
    sizes = conv_weight_sizes(int8)
    assert {size for (_, group), size in sizes.items() if group == 1} == {64}
    assert {size for (_, group), size in sizes.items() if group > 1} == {127}
    # WHEN it runs on a CPU whose kernel saturates, one whose kernel cannot, and this one
    names = ["probability_pneumonia", "features", "cam"]
    here = dict(zip(names, inference.run(inference.session(int8), pixels, names), strict=True))
    saturating = outputs_on(SATURATING, int8, pixels, tmp_path / "seven-saturating")
    widening = outputs_on(WIDENING, int8, pixels, tmp_path / "seven-widening")
    # THEN the outputs agree (measured: to 2e-7; Sandy Bridge has no FMA for the float parts)
    for name in names:
        scale = np.abs(here[name]).max()
        np.testing.assert_allclose(saturating[name], here[name], atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(widening[name], here[name], atol=1e-5 * scale, err_msg=name)
    # AND with 8-bit weights in the matrix-product convolutions the saturating CPU's features
    # move away from the other's (this check can see the saturation)
    monkeypatch.setattr(quantize, "seven_bit_weights", lambda network: {})
    eight_bit = served_network(keras_model, IMAGE_SIZE, 17, "int8", images)
    moved = outputs_on(SATURATING, eight_bit, pixels, tmp_path / "eight-saturating")
    kept = outputs_on(WIDENING, eight_bit, pixels, tmp_path / "eight-widening")
    scale = np.abs(kept["features"]).max()
    assert np.max(np.abs(moved["features"] - kept["features"])) > 0.02 * scale


def conv_weight_sizes(network: bytes) -> dict[tuple[str, int], int]:
    """Each convolution's largest int8 weight, by (name, group)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(network).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    sizes = {}
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in dequantized:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = weights[dequantized[node.input[1]]].astype(int)
            sizes[(node.name, group)] = int(np.abs(weight).max())
    return sizes


def test_seven_bit_weights_go_to_the_matrix_product_convolutions_only():
    # GIVEN a graph with a 1 x 1 convolution and a depthwise one
    import onnx
    from onnx import TensorProto, helper

    from pneumonia.release.quantize import seven_bit_weights

    def conv(name: str, weight: str, group: int) -> onnx.NodeProto:
        return helper.make_node("Conv", ["x", weight], [name], name=name, group=group)

    graph = helper.make_graph(
        [conv("pointwise", "w1", 1), conv("depthwise", "w2", 8), conv("plain", "w3", 1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("pointwise",)],
    )
    # WHEN the overrides are written
    overrides = seven_bit_weights(helper.make_model(graph))
    # THEN the group-1 weights are 7-bit, per output channel (axis 0), and the depthwise not
    assert overrides == {
        "w1": [{"axis": 0, "reduce_range": True}],
        "w3": [{"axis": 0, "reduce_range": True}],
    }
