"""Temporally coherent embeddings (TCE; Knights et al., ICPR 2020, github.com/csiro-robotics/TCE): the
2048-dim globally average-pooled output of their self-supervised ResNet-50 per frame, the paper's TCE features.

Network: their `network/resnet.py` ResNet-50 is torchvision's (same module names, stride on the 3x3 conv of
the bottleneck) without the `fc` layer; `PreTrainNet` applies `backbone -> AdaptiveAvgPool2d(1) -> flatten`
before its heads, and that 2048-vector is the embedding (the 128-dim contrastive head is not used).

Input as their inference transform (`utils/tsne_utils.get_blob`, `datasets/.../UCF101.py`): RGB in [0, 1]
normalised with ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225) at 224 x 224. Their
training and fine-tuning resize whole frames to (224, 224), which is what we do (`stretch`; the pipeline's
frames are already 224 x 224, so it is the identity).

Checkpoint format (published `.pth` of `pretrain.py`, also `finetune.py`): a dict
    {'epoch': int, 'state_dict': {...}, 'optimizer': {...}, 'NCELoss': {...}}
where the state dict is that of `nn.DataParallel(PreTrainNet)`:
    module.backbone.conv1.weight, module.backbone.bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
    module.backbone.layer{1-4}.{i}.conv{1-3}.weight, ...bn{1-3}.*, ...downsample.{0.weight,1.*}
    module.fc_contrastive.*, module.fc_rotation_{1,2,3}.*, module.bn_rotation_{1,2}.*   (pretraining heads)
    module.fc.*                                                                          (fine-tuning head)
We strip the training prefixes `module.` and `backbone.` (and the MoCo/CMC-style `encoder.`/`encoder_q.`,
`model.` if present), drop the head keys, and require exactly torchvision's ResNet-50 keys minus `fc`.
A bare state dict (no 'state_dict' wrapper) is accepted too. File name looked for by default:
`tce_resnet50_kinetics400.pth` (name the download so, or set `weights_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from features.base import register_extractor
from features.image_batching import ImageExtractorConfig, TorchImageExtractor
from features.vgg16 import imagenet_normalise, plain_state_dict
from features.weights import load_torch_checkpoint

DEFAULT_FILE = "tce_resnet50_kinetics400.pth"
_PREFIXES = ("module.", "backbone.", "encoder_q.", "encoder.", "model.")
_HEADS = ("fc_contrastive.", "fc_rotation_", "bn_rotation_", "fc.", "l2norm.")


@dataclass(frozen=True)
class TCEConfig(ImageExtractorConfig):
    pass


class TCENet(nn.Module):
    """ResNet-50 trunk + global average pooling: (N, 3, 224, 224) -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        trunk = resnet50(weights=None)
        # Their ResNet has no fc; keeping torchvision's module names makes the checkpoint keys line up.
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def strip_training_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a TCE training checkpoint -> trunk keys; pretraining and fine-tuning head keys are dropped."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.startswith(_HEADS):
            continue
        out[key] = value
    return out


@register_extractor
class TCE(TorchImageExtractor):
    name = "tce"
    version = "1"
    config_type = TCEConfig
    # Averages of post-ReLU activations, order 0.1-10: float16's 3 significant digits are plenty and halve
    # the store (64 x 2048 x 2 bytes per clip).
    store_dtype = "float16"
    resize_mode = "stretch"

    @property
    def dim(self) -> int:
        return 2048

    def weights_file_name(self) -> str:
        return DEFAULT_FILE

    def build_network(self) -> nn.Module:
        return TCENet()

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        return strip_training_prefixes(plain_state_dict(path, load_torch_checkpoint(path)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalise(x)
