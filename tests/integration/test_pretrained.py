"""EfficientNet-Lite0 from ImageNet weights: the torch-free reader of the pinned weights file
(and of hostile ones, written here by hand), the port to Keras (it must still recognise
photographs), and the serving export of a network built on it. Integration tier: TensorFlow."""

import collections
import pickle
import shutil
import struct
import sys
import types
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


# Hand-built legacy files (torch is not installed): torch.save's layout, with the two torch
# names a state dict refers to played by stand-ins that pickle writes by reference.
FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
LongStorage = type("LongStorage", (), {"__module__": "torch"})
STORAGE_TYPES = {np.dtype(np.float32): FloatStorage, np.dtype(np.int64): LongStorage}


def _rebuild_tensor_v2(*args):
    raise AssertionError("a stand-in, only ever pickled")


_rebuild_tensor_v2.__module__ = "torch._utils"


class _Storage:
    def __init__(self, key, dtype, count, view=None):
        self.pid = ("storage", STORAGE_TYPES[np.dtype(dtype)], key, "cpu", count, view)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _rebuild_tensor_v2, self.args


class _StatePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def write_legacy(path, tensors, storages, keys=None, counts=None, views=None, cut=0, magic=None):
    """torch.save(state, path, _use_new_zipfile_serialization=False), by hand.

    tensors {name: (storage key, offset, size, stride)} view storages {key: 1-d array}; the
    rest makes the file hostile: `keys` the storage key list (default: the storages'),
    `counts` {key: element count written instead of the true one}, `views` {key: a
    persistent id's view field}, `cut` bytes dropped from the end, `magic` the magic number.
    """
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage, torch.LongStorage, torch._utils = FloatStorage, LongStorage, utils
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage = {
        key: _Storage(key, values.dtype, values.size, (views or {}).get(key))
        for key, values in storages.items()
    }
    state = collections.OrderedDict(
        (name, _Tensor(storage[key], offset, size, stride))
        for name, (key, offset, size, stride) in tensors.items()
    )
    keys = list(storages) if keys is None else keys
    with path.open("wb") as file:
        for header in (magic or pretrained.LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        with pytest.MonkeyPatch.context() as patch:  # only while pickle looks the names up
            patch.setitem(sys.modules, "torch", torch)
            patch.setitem(sys.modules, "torch._utils", utils)
            _StatePickler(file, protocol=2).dump(state)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            values = storages.get(key, np.zeros(0, np.float32))
            file.write(struct.pack("<q", (counts or {}).get(key, values.size)))
            file.write(values.tobytes())
        file.truncate(file.tell() - cut)
    return path


SIX = np.arange(6, dtype=np.float32)  # storage "a" of the hostile files


def test_a_hand_built_file_reads_back_every_view_exactly(tmp_path):
    """The checks refuse no valid view: contiguous, transposed, strided at an offset, a
    broadcast (stride 0), a length-1 dimension with any stride, no elements, a counter."""
    counter = np.array([7], dtype=np.int64)
    tensors = {
        "matrix": ("a", 0, (2, 3), (3, 1)),
        "transposed": ("a", 0, (3, 2), (1, 3)),
        "strided": ("a", 1, (2, 2), (1, 3)),
        "every_other": ("a", 1, (3,), (2,)),
        "last": ("a", 5, (1,), (1,)),
        "broadcast": ("a", 2, (2, 3), (0, 1)),
        "row": ("a", 3, (1, 3), (10**20, 1)),
        "empty": ("a", 0, (2, 0), (1, 1)),
        "num_batches_tracked": ("n", 0, (), ()),
    }
    path = write_legacy(tmp_path / "valid.pth", tensors, {"a": SIX, "n": counter})
    state = pretrained.read_torch_legacy(path)
    matrix = SIX.reshape(2, 3)
    expected = {
        "matrix": matrix,
        "transposed": matrix.T,
        "strided": np.array([[1, 4], [2, 5]]),
        "every_other": SIX[1::2],
        "last": SIX[5:],
        "broadcast": np.broadcast_to(SIX[2:5], (2, 3)),
        "row": SIX[3:].reshape(1, 3),
        "empty": np.zeros((2, 0)),
    }
    assert state.keys() == expected.keys()  # the 0-d counter is skipped
    for name, values in expected.items():
        assert state[name].dtype == np.float32, name
        np.testing.assert_array_equal(state[name], values, strict=False, err_msg=name)
        assert state[name].shape == values.shape, name
        assert state[name].flags.writeable and state[name].flags.owndata, name  # copies


TWO = ("a", 0, (2,), (1,))  # a valid view of SIX


def view(offset, size, stride):
    """A file whose one tensor w views storage a (SIX) as given."""
    return {"tensors": {"w": ("a", offset, size, stride)}}


NEGATIVE = "tensor w has a negative offset, size or stride"
HOSTILE = [  # (what the file gets wrong, the refusal)
    pytest.param({"magic": 1234}, "not a torch legacy-format file", id="magic-number"),
    pytest.param(
        {"counts": {"a": -1}}, "storage a has a negative element count", id="negative-count"
    ),
    pytest.param(
        {"counts": {"a": 7}},
        r"storage a claims 7 elements \(28 bytes\), but the file has 24 bytes left",
        id="count-past-the-end",
    ),
    pytest.param(
        {"counts": {"a": 2**62}}, "storage a claims 4611686018427387904 elements", id="count-huge"
    ),
    pytest.param(
        {"cut": 24 + 3}, "ends inside the element count of storage a: 5 of 8", id="short-read"
    ),
    pytest.param(
        {"keys": ["a", "ghost"]}, "storage ghost is listed but no tensor", id="undeclared-key"
    ),
    pytest.param({"keys": [0]}, "no state dict and list of storage keys", id="key-not-str"),
    pytest.param(
        {
            "tensors": {"w": TWO, "v": ("b", 0, (2,), (1,))},
            "storages": {"a": SIX, "b": SIX},
            "keys": ["a"],
        },
        "tensor v names a storage that is not in the file",
        id="storage-not-in-file",
    ),
    pytest.param({"views": {"a": ("a", 0, 6)}}, "persistent ids are", id="pid-a-view-of-a-storage"),
    pytest.param(view(-1, (2,), (1,)), NEGATIVE, id="negative-offset"),
    pytest.param(view(5, (2,), (-1,)), NEGATIVE, id="negative-stride"),
    pytest.param(view(0, (-1, 2), (1, 1)), NEGATIVE, id="negative-size"),
    pytest.param(
        view(6, (1,), (1,)),
        r"tensor w \(offset 6, .*\) reaches element 6 of storage a, which has 6",
        id="offset-past-the-end",
    ),
    pytest.param(view(0, (2, 3), (3, 2)), "reaches element 7 of storage a", id="strides-past"),
    pytest.param(view(3, (2, 2), (2, 1)), "reaches element 6 of storage a", id="both-past"),
    pytest.param(view(0, (2, 3), (1,)), "tensor w has a malformed view", id="ranks-differ"),
    pytest.param(view(0.5, (2,), (1,)), "tensor w has a malformed view", id="offset-not-int"),
    pytest.param(view(0, (2**14, 2**13), (0, 0)), "over the 67,108,864 left", id="broadcast-huge"),
    pytest.param(  # each under the file's budget, together over it: five 2**24-element views
        {"tensors": {f"w{i}": ("a", 0, (2**12, 2**12), (0, 0)) for i in range(5)}},
        r"tensor w4 has 16,777,216 elements, over the 0 left of the file's 67,108,864",
        id="broadcasts-many",
    ),
]


@pytest.mark.parametrize(("hostile", "message"), HOSTILE)
def test_a_weights_file_that_does_not_fit_itself_is_refused_before_reading(
    tmp_path, hostile, message
):
    """Each count, key and view is checked against the file; as_strided never reads outside
    a storage, and np.frombuffer never gets more bytes than the file holds."""
    spec = {"tensors": {"w": TWO}, "storages": {"a": SIX}} | hostile
    path = write_legacy(tmp_path / "hostile.pth", **spec)
    with pytest.raises(ValueError, match=message):
        pretrained.read_torch_legacy(path)


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


def test_the_stride_16_network_is_the_first_eleven_blocks_and_the_next_expansion(state):
    """`efficientnet_lite0_stride16`: Lite0's own layers and ImageNet weights up to block 11's
    expansion, nothing after it; its map at stride 16 and the three depths before it."""
    from pneumonia.model.network import build_model, with_explanations

    size = 64
    whole = build_model(size, _params())
    cut = build_model(size, _params(architecture="efficientnet_lite0_stride16"))
    names = {layer.name for layer in cut.layers if layer.weights}
    assert "lite_block11_expand" in names and "lite_block11_depthwise" not in names
    assert "lite_head" not in names and "lite_block10_project" in names
    for name in names - {"probability_pneumonia"}:
        for ours, theirs in zip(
            cut.get_layer(name).get_weights(), whole.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    assert cut.count_params() < whole.count_params() / 4
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 1)).astype(np.float32)
    probability, features, cam = with_explanations(cut).predict(images, verbose=0)
    assert cam.shape == (2, size // 16, size // 16)
    assert features.shape[1] == 672 + 240 + 144 + 8 * 8  # three depths, then the layout
    logit = np.log(probability[:, 0] / (1 - probability[:, 0]))
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logit, atol=1e-4)


def test_a_backbone_of_no_blocks_or_more_than_lite0_has_is_refused(state):
    import keras

    x = keras.Input((32, 32, 1))
    for blocks in (0, len(pretrained.BLOCK_STRIDES) + 1):
        with pytest.raises(ValueError, match="Lite0 has 1 to 16 blocks"):
            pretrained.efficientnet_lite0(x, state, blocks)
