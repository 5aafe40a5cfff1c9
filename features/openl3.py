"""OpenL3 image (video-frame) embedding, ported to PyTorch: the paper's 512-dim OpenL3 visual features.

Architecture as `_construct_image_network` in marl/openl3 `openl3/models.py` (v0.4), layer for layer:
    BN(3) -> [conv3x3 64, BN, ReLU, conv3x3 64, ReLU, BN, maxpool 2]          (block 1: ReLU *before* BN)
          -> [conv3x3 128, BN, ReLU, conv3x3 128, BN, ReLU, maxpool 2]
          -> [conv3x3 256, BN, ReLU, conv3x3 256, BN, ReLU, maxpool 2]
          -> [conv3x3 512, BN, ReLU, conv3x3 512 ("vision_embedding_layer", no BN / ReLU)]
then `load_image_embedding_model_from_path` adds MaxPooling2D(28x28) -> 512 (or 7x7 -> 4x4x512 = 8192,
flattened in Keras' height, width, channel order). Keras "same" padding for 3x3 stride 1 is 1 pixel on each
side, and its 2x2/stride-2 "same" pooling on even sizes pads nothing, so PyTorch's symmetric padding is exact.
Keras BatchNormalization's epsilon is 1e-3 (PyTorch's default is 1e-5): set explicitly.

Input as `openl3.core._preprocess_image_batch`: 224 x 224 RGB, uint8 mapped to [-1, 1] by 2 * x / 255 - 1.
(Frames of other sizes: openl3 rescales the shorter side to 256 if larger and takes the central 224 x 224,
which we do too; its float path then leaves such frames in [0, 1], a quirk we do not copy: every frame is
scaled to [-1, 1].)

Weights: the official Keras files `openl3_image_<input_repr>_<content_type>.h5`, e.g.
`openl3_image_mel256_env.h5`, shipped inside the openl3 package (one per audio representation the image
network was co-trained with: linear, mel128, mel256; and content type env or music). Keras 2 HDF5 layout:
layer groups at the root (or under `model_weights/` for a full-model save) listed in the `layer_names`
attribute, each with a `weight_names` attribute such as `conv2d_1/kernel:0`. Keras itself matches layers to
the file by order, not by name; so do we: the 16 layers with weights, in order, must be a BN, then conv/BN
pairs as above, with matching shapes, or the load is refused naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from features.base import register_extractor
from features.image_batching import ImageExtractorConfig, TorchImageExtractor
from features.weights import WeightsFormatError, WeightsMismatchError

KERAS_BN_EPSILON = 1e-3

# (torch name, in channels, out channels) of the convolutions, and the layer sequence with its BN placements.
_CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
          ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv4_1", 256, 512), ("embedding", 512, 512)]
# Order of the Keras model's layers that carry weights (what the .h5 file lists), as torch module names.
WEIGHTED_LAYERS = ["input_bn", "conv1_1", "bn1_1", "conv1_2", "bn1_2", "conv2_1", "bn2_1", "conv2_2", "bn2_2",
                   "conv3_1", "bn3_1", "conv3_2", "bn3_2", "conv4_1", "bn4_1", "embedding"]
EMBEDDING_POOL = {512: 28, 8192: 7}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON)


class OpenL3ImageNet(nn.Module):
    """The OpenL3 image subnetwork with its final max pooling; input (N, 3, 224, 224) in [-1, 1]."""

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        if embedding_size not in EMBEDDING_POOL:
            raise ValueError(f"OpenL3 image embedding size must be one of {sorted(EMBEDDING_POOL)}")
        self.embedding_size = embedding_size
        convs = {name: nn.Conv2d(cin, cout, 3, padding=1) for name, cin, cout in _CONVS}
        relu = nn.ReLU
        pool = lambda: nn.MaxPool2d(2, 2)  # noqa: E731
        self.layers = nn.Sequential()
        seq = [
            ("input_bn", _bn(3)),
            ("conv1_1", convs["conv1_1"]), ("bn1_1", _bn(64)), ("relu1_1", relu()),
            ("conv1_2", convs["conv1_2"]), ("relu1_2", relu()), ("bn1_2", _bn(64)), ("pool1", pool()),
            ("conv2_1", convs["conv2_1"]), ("bn2_1", _bn(128)), ("relu2_1", relu()),
            ("conv2_2", convs["conv2_2"]), ("bn2_2", _bn(128)), ("relu2_2", relu()), ("pool2", pool()),
            ("conv3_1", convs["conv3_1"]), ("bn3_1", _bn(256)), ("relu3_1", relu()),
            ("conv3_2", convs["conv3_2"]), ("bn3_2", _bn(256)), ("relu3_2", relu()), ("pool3", pool()),
            ("conv4_1", convs["conv4_1"]), ("bn4_1", _bn(512)), ("relu4_1", relu()),
            ("embedding", convs["embedding"]),
        ]
        for name, module in seq:
            self.layers.add_module(name, module)
        for name, _, _ in _CONVS:  # Keras he_normal: std sqrt(2 / fan_in)
            nn.init.kaiming_normal_(self.layers.get_submodule(name).weight, nonlinearity="relu")
            nn.init.zeros_(self.layers.get_submodule(name).bias)
        # Keras pools the 28x28 map of a 224 px frame with a fixed window (28 -> 1x1, 7 -> 4x4). The adaptive
        # pool to the same output grid is identical there and also works for other input sizes (`input_size`).
        grid = 28 // EMBEDDING_POOL[embedding_size]
        self.pool = nn.AdaptiveMaxPool2d(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.layers(x))
        # Keras flattens (N, H, W, C); for 512 the map is 1x1 and this is just (N, 512).
        return y.permute(0, 2, 3, 1).flatten(1)


# ----------------------------------------------------------------------------------------------------------
# Keras .h5 reader
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_BN_TORCH = ("weight", "bias", "running_mean", "running_var")


def _attr_strings(value) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def _weight_kind(name: str) -> str:
    # 'conv2d_1/kernel:0' -> 'kernel'; 'batch_normalization_1/moving_mean:0' -> 'moving_mean'
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def read_keras_layers(path: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The weighted layers of a Keras 2 HDF5 file, in the file's layer order: [(layer name, {kind: array})]."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsFormatError(f"{path}: no 'layer_names' attribute: not a Keras weights file")
        layers = []
        for lname in _attr_strings(root.attrs["layer_names"]):
            if lname not in root:
                raise WeightsMismatchError(path, lname, "listed in layer_names but has no group")
            group = root[lname]
            wnames = _attr_strings(group.attrs.get("weight_names", []))
            if not wnames:
                continue  # input, activation, pooling layers
            weights = {}
            for wname in wnames:
                if wname not in group:
                    raise WeightsMismatchError(path, lname, f"weight {wname!r} listed but absent")
                weights[_weight_kind(wname)] = np.asarray(group[wname], dtype=np.float32)
            layers.append((lname, weights))
    return layers


def keras_to_state_dict(path: Path, layers: list[tuple[str, dict[str, np.ndarray]]],
                        net: OpenL3ImageNet) -> dict[str, torch.Tensor]:
    """Map Keras layers (by order, as Keras' own load_weights) onto the network's state-dict keys."""
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if len(layers) < len(WEIGHTED_LAYERS):
        missing = WEIGHTED_LAYERS[len(layers)]
        raise WeightsMismatchError(path, missing, f"missing: the file has {len(layers)} layers with weights, "
                                                  f"the OpenL3 image network {len(WEIGHTED_LAYERS)}")
    if len(layers) > len(WEIGHTED_LAYERS):
        raise WeightsMismatchError(path, layers[len(WEIGHTED_LAYERS)][0],
                                   "unexpected: more layers with weights than the OpenL3 image network")
    state: dict[str, torch.Tensor] = {}
    for (kname, weights), tname in zip(layers, WEIGHTED_LAYERS):
        where = f"{kname} (-> {tname})"
        if tname.startswith(("bn", "input_bn")):
            if set(weights) != set(_BN_WEIGHTS):
                raise WeightsMismatchError(path, where, f"expected batch normalisation weights {_BN_WEIGHTS}, "
                                                        f"got {sorted(weights)}")
            for kkind, tkind in zip(_BN_WEIGHTS, _BN_TORCH):
                state[f"layers.{tname}.{tkind}"] = torch.from_numpy(weights[kkind])
        else:
            if set(weights) != {"kernel", "bias"}:
                raise WeightsMismatchError(path, where, f"expected convolution weights ('kernel', 'bias'), "
                                                        f"got {sorted(weights)}")
            # Keras kernels are (kh, kw, in, out) = HWIO; torch wants OIHW.
            state[f"layers.{tname}.weight"] = torch.from_numpy(np.ascontiguousarray(
                weights["kernel"].transpose(3, 2, 0, 1)))
            state[f"layers.{tname}.bias"] = torch.from_numpy(weights["bias"])
        for key in [k for k in state if k.startswith(f"layers.{tname}.")]:
            if tuple(state[key].shape) != shapes[key]:
                got, want = tuple(state[key].shape), shapes[key]
                if key.endswith(".weight") and len(want) == 4:  # report in the file's HWIO terms
                    got, want = tuple(weights["kernel"].shape), (want[2], want[3], want[1], want[0])
                raise WeightsMismatchError(path, where, f"{key.rsplit('.', 1)[-1]} shape {got} in the file, "
                                                        f"network expects {want}")
    return state


@dataclass(frozen=True)
class OpenL3Config(ImageExtractorConfig):
    content_type: Literal["env", "music"] = "env"  # env: environmental sounds, as DESED
    # The audio representation the image network was co-trained with (selects the weights file); mel256 is
    # openl3's default.
    input_repr: Literal["linear", "mel128", "mel256"] = "mel256"
    embedding_size: Literal[512, 8192] = 512  # the paper uses 512


@register_extractor
class OpenL3(TorchImageExtractor):
    name = "openl3"
    version = "1"
    config_type = OpenL3Config
    # Max-pooled ReLU-free conv outputs; float16 keeps 3 significant digits, far below the embedding's noise,
    # and halves the store (64 x 512 x 2 bytes per clip).
    store_dtype = "float16"
    resize_mode = "center_crop"  # openl3's own rule for non-224 frames

    @property
    def dim(self) -> int:
        return int(self.config.embedding_size)

    def weights_file_name(self) -> str:
        return f"openl3_image_{self.config.input_repr}_{self.config.content_type}.h5"

    def build_network(self) -> nn.Module:
        return OpenL3ImageNet(self.config.embedding_size)

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        with torch.device("meta"):
            net = self.build_network()
        return keras_to_state_dict(path, read_keras_layers(path), net)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 / 255.0) - 1.0
