"""Training helpers: class weights and the layer-wise learning rates (the augmentation and the
optimiser's steps, which need TensorFlow, are tested in tests/integration/test_augment.py and
test_training_levers.py)."""

import numpy as np
import pytest

from pneumonia.model.training import class_weights, layer_lr_multipliers


def test_balanced_class_weights_give_each_class_half_the_loss():
    labels = np.array([0] * 25 + [1] * 75)
    weights = class_weights(labels, "balanced")
    assert weights == {0: pytest.approx(2.0), 1: pytest.approx(100 / 150)}
    assert 25 * weights[0] == pytest.approx(75 * weights[1])
    assert class_weights(labels, "none") is None


def test_layer_lr_multipliers_fall_with_each_level_below_the_head():
    paths = [
        "lite_stem/kernel",
        "lite_stem_bn/gamma",
        "lite_block0_depthwise/kernel",
        "lite_block10_project_bn/beta",
        "lite_block11_expand/kernel",
        "lite_block11_expand_bn/beta",
        "probability_pneumonia/kernel",
        "probability_pneumonia/bias",
    ]
    # the stem is level 0, block i level i + 1, the head one above block 11 (level 13)
    expected = [0.5**13, 0.5**13, 0.5**12, 0.5**2, 0.5, 0.5, 1.0, 1.0]
    assert layer_lr_multipliers(paths, 0.5) == pytest.approx(expected)
    assert layer_lr_multipliers(paths, 1.0) == [1.0] * len(paths)


def test_layer_lr_multipliers_leave_a_network_without_imagenet_layers_at_one_rate():
    paths = ["conv_1/kernel", "residual_2_bn/gamma", "probability_pneumonia/bias"]
    assert layer_lr_multipliers(paths, 0.5) == [1.0, 1.0, 1.0]
    # a name that only starts like a block is not one: it stays at the head's rate, one
    # level above block 2
    paths = ["lite_blockx_conv/kernel", "lite_block2_project/kernel"]
    assert layer_lr_multipliers(paths, 0.5) == [1.0, 0.5]


def test_layer_lr_multipliers_count_the_whole_lite0s_imagenet_head_as_a_backbone_layer():
    # the whole network: block 15 at level 16, its 1,280-channel head at 17, the new one at 18
    paths = ["lite_block15_project/kernel", "lite_head/kernel", "lite_head_bn/beta", "dense/bias"]
    assert layer_lr_multipliers(paths, 0.5) == pytest.approx([0.25, 0.5, 0.5, 1.0])
