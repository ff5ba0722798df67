"""The served network in int8: a real onnxruntime static quantization of the tf2onnx graph."""

from __future__ import annotations

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
