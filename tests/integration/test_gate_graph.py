"""The gate's distance in the served graph: the one FeatureGate computes, full or reduced."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import IMAGE_SIZE

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("share", [None, 4], ids=["every component", "a quarter"])
def test_the_served_distance_is_the_gates_own(keras_model, sample_data, share):
    # GIVEN the sample's features and a gate fitted on half of them, in every principal
    # component or in a quarter of them plus the residual
    import onnx

    from pneumonia.decision.calibration import Calibration
    from pneumonia.decision.gate import fit_feature_model
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.prepare import prepare_image
    from pneumonia.model.network import with_explanations
    from pneumonia.release.export import OUTPUTS, export_for_serving, served_network
    from pneumonia.serving import inference

    config = PreprocessConfig(
        image_size=IMAGE_SIZE, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    files = sorted(sample_data.rglob("*.jpeg"))
    pixels = np.stack([prepare_image(path.read_bytes(), config) for path in files])
    pixels = pixels.astype(np.float32)
    features = with_explanations(keras_model).predict(pixels, verbose=0)[1]
    components = None if share is None else features.shape[1] // share
    gate = fit_feature_model(features[::2], components)
    # WHEN the network is exported with it and run by onnxruntime on every image
    network = served_network(keras_model, IMAGE_SIZE, 17)
    graph = export_for_serving(network, Calibration(1.0, 0.0), gate)
    session = inference.session(graph)
    (served,) = session.run([OUTPUTS["ood_distance"]], {"image": pixels})
    # THEN its distance is the gate's, for the images it was fitted on and the others
    np.testing.assert_allclose(served, gate.distance(features), rtol=1e-4)
    # AND the graph holds the gate's matrix of its components, and no square one when reduced
    shapes = [tuple(t.dims) for t in onnx.load_from_string(graph).graph.initializer]
    width = features.shape[1]
    assert gate.whitening.shape in shapes
    assert ((width, width) in shapes) == (share is None)


def test_the_served_residual_keeps_its_digits_when_the_components_hold_nearly_everything():
    # GIVEN 2,048 features whose 8 leading components hold nearly all the variance (the residual is
    # the small difference of two large sums of squares) and a gate in those 8
    import onnx
    from onnx import TensorProto, helper

    from pneumonia.decision.gate import fit_feature_model
    from pneumonia.release.export import OUTPUTS, add_decision_outputs
    from pneumonia.serving import inference

    rng = np.random.default_rng(0)
    width, rows = 2048, 400
    basis = np.linalg.qr(rng.normal(size=(width, width)))[0]
    scales = np.r_[np.full(8, 1000.0), np.full(width - 8, 0.3)]
    features = ((rng.normal(size=(rows, width)) * scales) @ basis.T + 50.0).astype(np.float32)
    gate = fit_feature_model(features[: rows // 2], components=8)
    # ... and a graph that passes its inputs through as the network's outputs
    nodes = [
        helper.make_node("Identity", ["features_in"], ["features"]),
        helper.make_node("Identity", ["cam_in"], ["cam"]),
        helper.make_node("ReduceMean", ["cam_in"], [OUTPUTS["raw_probability"]], axes=[1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "passthrough",
        [
            helper.make_tensor_value_info("features_in", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("cam_in", TensorProto.FLOAT, ["batch", 2, 2]),
        ],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["batch", 2, 2]),
            helper.make_tensor_value_info(
                OUTPUTS["raw_probability"], TensorProto.FLOAT, ["batch", 1]
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    served = add_decision_outputs(model, 1.0, 0.0, gate)
    # WHEN onnxruntime computes the distance of the held-out half
    session = inference.session(onnx.ModelProto.SerializeToString(served))
    held_out = features[rows // 2 :]
    cams = np.zeros((len(held_out), 2, 2), np.float32)
    (distance,) = session.run([OUTPUTS["ood_distance"]], {"features_in": held_out, "cam_in": cams})
    # THEN it is the gate's to within 0.2%: the two sums of squares differ in float64 (taken
    # in float32, as before, the difference is off by about 0.5% here)
    np.testing.assert_allclose(distance, gate.distance(held_out), rtol=2e-3)
