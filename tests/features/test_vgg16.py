"""VGG16 fc7 embedding: a full-size torchvision-format .pth with random values (written once per module) is
loaded and the forward pass is checked against plain functional ops written here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg16

from features.base import build_extractor
from features.weights import MissingWeightsError, WeightsFormatError, WeightsMismatchError
from tests.features.conftest import assert_close

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def random_vgg16_state(seed=0):
    """torchvision's VGG16 keys and shapes (classifier.6 included, as in vgg16-397923af.pth), random values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = vgg16(weights=None)
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.data.normal_(0, 0.05)  # torchvision's init zeroes biases; random ones test their mapping
    return net.state_dict()


def vgg16_fc7_reference(frames, sd):
    x = (frames.astype(np.float64) / 255.0 - MEAN) / STD
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    sd = {k: v.double() for k, v in sd.items()}
    i = 0
    for v in CFG:
        if v == "M":
            x, i = F.max_pool2d(x, 2, 2), i + 1
        else:
            x, i = torch.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)), i + 2
    x = x.flatten(1)  # 512 x 7 x 7: the adaptive average pool is the identity at 224 px
    x = torch.relu(x @ sd["classifier.0.weight"].T + sd["classifier.0.bias"])
    return torch.relu(x @ sd["classifier.3.weight"].T + sd["classifier.3.bias"]).numpy()


@pytest.fixture(scope="module")
def vgg_state():
    return random_vgg16_state()


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory, vgg_state):
    """A $TORCH_HOME holding hub/checkpoints/vgg16-397923af.pth (528 MB, written once per module)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(vgg_state, home / "hub" / "checkpoints" / "vgg16-397923af.pth")
    return home


def test_fc7_from_torch_cache_matches_reference(torch_home, vgg_state, frames, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("AVSED_WEIGHTS_DIR", str(tmp_path))  # empty: the torch cache must be found next
    ex = build_extractor("vgg16", batch_size=1)  # two batches; the float64 reference costs seconds per frame
    assert ex.weights_file() == torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    out = ex.embed(frames[:2])
    assert out.shape == (2, 4096) and (out >= 0).all()  # after ReLU
    assert_close(out, vgg16_fc7_reference(frames[:2], vgg_state))
    assert ex.weights_provenance().startswith("sha256:")


def test_missing_file_names_the_torchvision_cache(weights_home):
    with pytest.raises(MissingWeightsError) as err:
        build_extractor("vgg16").load()
    assert "vgg16-397923af.pth" in str(err.value)
    assert any("hub/checkpoints" in str(p) for p in err.value.searched)


def test_wrong_shape_and_missing_keys_are_refused(tmp_path, vgg_state):
    small = {k: v for k, v in vgg_state.items() if k.startswith("features.0.")}
    torch.save(small, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("vgg16", weights_path=str(tmp_path / "missing.pth")).load()
    assert err.value.layer == "features.2.weight" and "missing" in str(err.value)

    small["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(small, tmp_path / "shape.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("vgg16", weights_path=str(tmp_path / "shape.pth")).load()
    assert err.value.layer == "features.0.weight" and "(64, 1, 3, 3)" in str(err.value)


def test_garbage_file_is_a_format_error(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsFormatError, match="bad.pth"):
        build_extractor("vgg16", weights_path=str(tmp_path / "bad.pth")).load()
