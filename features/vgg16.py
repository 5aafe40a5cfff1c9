"""VGG16 (ImageNet) frame embedding: the 4096-dim output of the last hidden fully connected layer (fc7 after
its ReLU), the paper's VGG16 visual features.

Network: `torchvision.models.vgg16` with the final 1000-way layer removed, i.e. `features`, `avgpool`, then
`classifier[:5]` = fc6, ReLU, dropout (identity at inference), fc7, ReLU.
Input: ImageNet preprocessing, RGB in [0, 1] normalised with mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225), 224 x 224 (the pipeline's frames are 224 x 224 already; other sizes are resized).
Weights: torchvision's `vgg16-397923af.pth` (a plain state dict `features.N.weight`/`.bias`,
`classifier.{0,3,6}.weight`/`.bias`); looked for at the configured path, then `$AVSED_WEIGHTS_DIR`, then
torchvision's cache `$TORCH_HOME/hub/checkpoints/`. Never downloaded. `classifier.6` (the ImageNet class
layer) may be present or absent: it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

from features.base import register_extractor
from features.image_batching import IMAGENET_MEAN, IMAGENET_STD, ImageExtractorConfig, TorchImageExtractor
from features.weights import WeightsFormatError, load_torch_checkpoint

TORCHVISION_FILE = "vgg16-397923af.pth"
_UNUSED_KEYS = ("classifier.6.weight", "classifier.6.bias")


@dataclass(frozen=True)
class VGG16Config(ImageExtractorConfig):
    batch_size: int = 16  # 15.5 GFLOPs and ~100 MB of activations per frame: smaller batches than the others


def build_vgg16_fc7() -> nn.Module:
    """torchvision's VGG16 truncated after fc7's ReLU: (N, 3, 224, 224) -> (N, 4096)."""
    net = vgg16(weights=None)
    net.classifier = net.classifier[:5]
    return net


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    return (x - mean) / std


def plain_state_dict(path: Path, obj) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint that is either the state dict itself or wraps it under 'state_dict'."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFormatError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


@register_extractor
class VGG16(TorchImageExtractor):
    name = "vgg16"
    version = "1"
    config_type = VGG16Config
    # fc7 after ReLU: non-negative activations of order 1-10, far from float16's 65504 limit; float16 keeps
    # 3 significant digits and halves the largest feature of the store (64 x 4096 x 2 = 512 KiB per clip).
    store_dtype = "float16"
    resize_mode = "stretch"

    @property
    def dim(self) -> int:
        return 4096

    def weights_file_name(self) -> str:
        return TORCHVISION_FILE

    def build_network(self) -> nn.Module:
        return build_vgg16_fc7()

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        state = plain_state_dict(path, load_torch_checkpoint(path))
        state = {k.removeprefix("module."): v for k, v in state.items()}
        return {k: v for k, v in state.items() if k not in _UNUSED_KEYS}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalise(x)
