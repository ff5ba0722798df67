"""EfficientNet-Lite0 from ImageNet weights: the torch-free reader of the pinned weights file,
the port to Keras (it must still recognise photographs), and the serving export of a network
built on it. Integration tier: TensorFlow."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumonia.config import load_params
from pneumonia.model import pretrained
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

SITE = Path(np.__file__).parents[1]  # site-packages: sample photographs of installed packages
# ImageNet classes: 652 military uniform; 281-285 the domestic cats (tabby ... Egyptian cat).
PHOTOGRAPHS = {
    SITE / "matplotlib/mpl-data/sample_data/grace_hopper.jpg": {652},
    SITE / "skimage/data/chelsea.png": {281, 282, 283, 284, 285},
}


@pytest.fixture(scope="module")
def state():
    return pretrained.imagenet_state()


def _params(**update):
    return load_params(REPO_ROOT / "params.yaml").train.model_copy(
        update={"architecture": "efficientnet_lite0", **update}
    )


def test_the_reader_gives_every_tensor_of_the_lite0_state_dict(state):
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    blocks = {int(name.split(".")[1]) for name in state if name.startswith("_blocks.")}
    assert blocks == set(range(len(pretrained.BLOCK_STRIDES)))
    assert "_blocks.0._expand_conv.weight" not in state  # the first block does not expand
    assert not any(name.endswith("num_batches_tracked") for name in state)  # 0-d counters
    # trained statistics, not zeros or ones: the storages were read at their offsets
    assert 0.01 < state["_bn0.running_var"].mean() < 1e4
    assert state["_blocks.15._bn2.running_mean"].std() > 0
    assert all(np.isfinite(value).all() for value in state.values())


def test_a_weights_file_that_names_anything_else_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    with evil.open("wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, file)
        pickle.dump({"_conv_stem.weight": Payload()}, file)
    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        pretrained.read_torch_legacy(evil)
    assert not marker.exists()


def test_a_weights_file_other_than_the_pinned_one_is_refused(tmp_path, monkeypatch):
    changed = tmp_path / "weights.pth"
    shutil.copyfile(pretrained.weights_path(), changed)
    with changed.open("r+b") as file:
        file.seek(-4, 2)
        file.write(b"\0\0\0\1")
    monkeypatch.setattr(pretrained, "weights_path", lambda: changed)
    with pytest.raises(RuntimeError, match="not the pinned"):
        pretrained.imagenet_state()


def test_the_port_recognises_photographs_as_the_imagenet_classifier_did(state):
    """The ImageNet classifier rebuilt on the ported backbone, on grey photographs through
    the one-channel stem: a transposed kernel, a missed batch norm or a wrong stride fails."""
    import cv2
    import keras

    inputs = keras.Input((224, 224, 1))
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128)(inputs)  # the weights' input scale
    x, weights = pretrained.efficientnet_lite0(x, state)
    logits = keras.layers.Dense(1000, name="fc")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, logits)
    pretrained.set_weights(model, weights)
    model.get_layer("fc").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    for path, classes in PHOTOGRAPHS.items():
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        grey = cv2.resize(grey, (224, 224), interpolation=cv2.INTER_AREA)
        scores = model.predict(grey[None, ..., None].astype(np.float32), verbose=0)[0]
        assert int(np.argmax(scores)) in classes, path.name


def test_the_architecture_without_the_file_matches_the_file(state):
    """build_model(imagenet=False), as tests and clones build it, has the file's shapes."""
    from pneumonia.model.network import build_model

    with_file = build_model(64, _params())
    without = build_model(64, _params(), imagenet=False)
    assert [w.shape for w in with_file.weights] == [w.shape for w in without.weights]
    stem = with_file.get_layer("lite_stem").get_weights()[0]
    np.testing.assert_allclose(  # the RGB stem summed over its input channels
        stem[..., 0, :], state["_conv_stem.weight"].sum(axis=1).transpose(1, 2, 0), rtol=1e-6
    )


def test_a_lite0_network_exports_with_its_explanations_and_matches_keras():
    """The served graph of an EfficientNet-Lite0 network: probability, features and the
    activation map, ONNX against Keras."""
    import onnxruntime as ort

    from pneumonia.model.network import build_model, with_explanations
    from pneumonia.release.export import convert

    size = 64
    model = build_model(size, _params())
    explained = with_explanations(model)
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 1)).astype(np.float32)
    probability, features, cam = explained.predict(images, verbose=0)
    assert features.shape[1] == 1280 + 672 + 240 + 8 * 8  # three depths, then the layout
    logit = np.log(probability[:, 0] / (1 - probability[:, 0]))
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logit, atol=1e-4)  # CAM of the logit

    session = ort.InferenceSession(convert(model, size, 17), providers=["CPUExecutionProvider"])
    onnx_probability = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(onnx_probability, probability, atol=1e-4)
