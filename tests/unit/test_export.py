"""The ONNX parity check that fails export_onnx."""

import numpy as np

from stages.export_onnx import parity


def test_parity_reports_the_largest_difference_and_flipped_labels():
    keras_p = np.array([0.10, 0.49, 0.51, 0.90])
    onnx_p = np.array([0.10, 0.51, 0.51, 0.90 + 2e-5])
    check = parity(keras_p, onnx_p, threshold=0.5)
    assert check["images"] == 4
    assert abs(check["max_abs_diff"] - 0.02) < 1e-12
    assert check["labels_differing"] == 1


def test_identical_predictions_pass():
    probabilities = np.linspace(0, 1, 11)
    check = parity(probabilities, probabilities.copy(), threshold=0.3)
    assert check == {"images": 11, "max_abs_diff": 0.0, "labels_differing": 0}
