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
    from pneumonia.release.export import OUTPUTS, export_for_serving
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
    graph = export_for_serving(keras_model, IMAGE_SIZE, 17, Calibration(1.0, 0.0), gate)
    session = inference.session(graph)
    (served,) = session.run([OUTPUTS["ood_distance"]], {"image": pixels})
    # THEN its distance is the gate's, for the images it was fitted on and the others
    np.testing.assert_allclose(served, gate.distance(features), rtol=1e-3)
    # AND the graph holds the gate's matrix of its components, and no square one when reduced
    shapes = [tuple(t.dims) for t in onnx.load_from_string(graph).graph.initializer]
    width = features.shape[1]
    assert gate.whitening.shape in shapes
    assert ((width, width) in shapes) == (share is None)
