"""Training helpers: class weights (the augmentation, which needs TensorFlow, is tested in
tests/integration/test_augment.py)."""

import numpy as np
import pytest

from pneumonia.model.training import class_weights


def test_balanced_class_weights_give_each_class_half_the_loss():
    labels = np.array([0] * 25 + [1] * 75)
    weights = class_weights(labels, "balanced")
    assert weights == {0: pytest.approx(2.0), 1: pytest.approx(100 / 150)}
    assert 25 * weights[0] == pytest.approx(75 * weights[1])
    assert class_weights(labels, "none") is None
