"""TCE embedding: a checkpoint in the format of csiro-robotics/TCE's pretrain.py (DataParallel PreTrainNet with
its heads, random values) is loaded and the pooled ResNet-50 output is checked against functional ops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from features.base import build_extractor
from features.weights import WeightsMismatchError
from tests.features.conftest import assert_close

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def random_trunk_state(seed=0):
    """ResNet-50 trunk keys (no fc), random weights and random batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = {k: v for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    for k, v in sd.items():
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias", "downsample.1.bias")):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif v.ndim == 1:  # bn gammas
            sd[k] = torch.rand(v.shape, generator=g) * 0.4 + 0.6
    return sd


def tce_checkpoint(trunk):
    """{'epoch', 'state_dict', 'optimizer', 'NCELoss'} with DataParallel(PreTrainNet) keys, as pretrain.py saves."""
    sd = {f"module.backbone.{k}": v for k, v in trunk.items()}
    heads = {"fc_contrastive.weight": (128, 2048), "fc_contrastive.bias": (128,),
             "fc_rotation_1.weight": (200, 2048), "fc_rotation_1.bias": (200,),
             "bn_rotation_1.weight": (200,), "bn_rotation_1.bias": (200,),
             "bn_rotation_1.running_mean": (200,), "bn_rotation_1.running_var": (200,),
             "fc_rotation_2.weight": (200, 200), "fc_rotation_2.bias": (200,),
             "bn_rotation_2.weight": (200,), "bn_rotation_2.bias": (200,),
             "fc_rotation_3.weight": (4, 200), "fc_rotation_3.bias": (4,)}
    sd.update({f"module.{k}": torch.randn(s) for k, s in heads.items()})
    return {"epoch": 99, "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]},
            "NCELoss": {"memory": torch.randn(4, 128)}}


def resnet50_pooled_reference(frames, sd):
    sd = {k: v.double() for k, v in sd.items()}

    def bn(x, p):
        s = (1, -1, 1, 1)
        return ((x - sd[p + ".running_mean"].view(s)) / torch.sqrt(sd[p + ".running_var"].view(s) + 1e-5)
                * sd[p + ".weight"].view(s) + sd[p + ".bias"].view(s))

    def bottleneck(x, p, stride):
        out = torch.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
        out = torch.relu(bn(F.conv2d(out, sd[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
        out = bn(F.conv2d(out, sd[p + ".conv3.weight"]), p + ".bn3")
        if p + ".downsample.0.weight" in sd:
            x = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
        return torch.relu(out + x)

    x = torch.from_numpy((frames.astype(np.float64) / 255.0 - MEAN) / STD).permute(0, 3, 1, 2)
    x = torch.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer, (blocks, stride) in enumerate([(3, 1), (4, 2), (6, 2), (3, 2)], start=1):
        for b in range(blocks):
            x = bottleneck(x, f"layer{layer}.{b}", stride if b == 0 else 1)
    return x.mean(dim=(2, 3)).numpy()


@pytest.fixture(scope="module")
def trunk():
    return random_trunk_state()


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory, trunk):
    path = tmp_path_factory.mktemp("tce") / "ckpt_epoch_99.pth"
    torch.save(tce_checkpoint(trunk), path)
    return path


def test_pretrain_checkpoint_matches_reference(ckpt_path, trunk, frames):
    ex = build_extractor("tce", weights_path=str(ckpt_path), batch_size=2)
    out = ex.embed(frames[:3])
    assert out.shape == (3, 2048)
    assert_close(out, resnet50_pooled_reference(frames[:3], trunk))


def test_bare_state_dict_found_by_default_name(weights_home, trunk, frames):
    # A state dict without wrapper or prefixes, put where the extractor looks by default.
    torch.save({k: v for k, v in trunk.items() if not k.endswith("num_batches_tracked")},
               weights_home / "tce_resnet50_kinetics400.pth")
    ex = build_extractor("tce", channels_last=False, dedup_identical_frames=False, batch_size=1)
    assert ex.weights_file().name == "tce_resnet50_kinetics400.pth"
    assert_close(ex.embed(frames[:1]), resnet50_pooled_reference(frames[:1], trunk))


def test_missing_and_unexpected_keys_are_refused(tmp_path, trunk):
    ck = tce_checkpoint(trunk)
    del ck["state_dict"]["module.backbone.layer4.2.bn3.running_var"]
    torch.save(ck, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("tce", weights_path=str(tmp_path / "missing.pth")).load()
    assert err.value.layer == "layer4.2.bn3.running_var"

    ck = tce_checkpoint(trunk)
    ck["state_dict"]["module.backbone.layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(ck, tmp_path / "unexpected.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("tce", weights_path=str(tmp_path / "unexpected.pth")).load()
    assert err.value.layer == "layer5.0.conv1.weight" and "unexpected" in str(err.value)

    ck = tce_checkpoint(trunk)
    ck["state_dict"]["module.backbone.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(ck, tmp_path / "shape.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("tce", weights_path=str(tmp_path / "shape.pth")).load()
    assert err.value.layer == "conv1.weight" and "(64, 3, 3, 3)" in str(err.value)
