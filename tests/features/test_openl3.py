"""OpenL3 image embedding: Keras .h5 files with the real layer layout and random values are loaded and the
forward pass is checked against a reference written here from the Keras model definition."""

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from features.base import build_extractor
from features.weights import MissingWeightsError, WeightsFormatError, WeightsMismatchError
from tests.features.conftest import assert_close

# The Keras image model's layers in model order (auto names as Keras 2 gives them; only some carry weights):
# (name, kind, channels in, channels out)
_KERAS_LAYERS = [("input_1", "input", 0, 0), ("batch_normalization_1", "bn", 3, 3)]
_blocks = [(3, 64, "relu_bn"), (64, 128, "bn_relu"), (128, 256, "bn_relu")]
_conv, _bnn, _act, _pool = 1, 2, 1, 1
for cin, cout, order in _blocks:
    _KERAS_LAYERS += [(f"conv2d_{_conv}", "conv", cin, cout), (f"batch_normalization_{_bnn}", "bn", cout, cout),
                      (f"activation_{_act}", "act", 0, 0), (f"conv2d_{_conv + 1}", "conv", cout, cout)]
    second = [(f"activation_{_act + 1}", "act", 0, 0), (f"batch_normalization_{_bnn + 1}", "bn", cout, cout)]
    _KERAS_LAYERS += second if order == "relu_bn" else second[::-1]
    _KERAS_LAYERS += [(f"max_pooling2d_{_pool}", "pool", 0, 0)]
    _conv, _bnn, _act, _pool = _conv + 2, _bnn + 2, _act + 2, _pool + 1
_KERAS_LAYERS += [("conv2d_7", "conv", 256, 512), ("batch_normalization_8", "bn", 512, 512),
                  ("activation_7", "act", 0, 0), ("vision_embedding_layer", "conv", 512, 512)]


def keras_weights(seed=0):
    """Random weights with realistic scales, per Keras layer name: {name: [(weight name, array)]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, kind, cin, cout in _KERAS_LAYERS:
        if kind == "conv":
            out[name] = [(f"{name}/kernel:0", rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout))),
                         (f"{name}/bias:0", rng.normal(0, 0.05, cout))]
        elif kind == "bn":
            out[name] = [(f"{name}/gamma:0", rng.uniform(0.8, 1.2, cout)), (f"{name}/beta:0", rng.normal(0, 0.1, cout)),
                         (f"{name}/moving_mean:0", rng.normal(0, 0.1, cout)),
                         (f"{name}/moving_variance:0", rng.uniform(0.5, 1.5, cout))]
    return {k: [(n, a.astype(np.float32)) for n, a in v] for k, v in out.items()}


def write_keras_h5(path, weights, full_model=False, layers=None):
    """A Keras 2 HDF5 weights file (`save_weights` layout, or `model.save`'s with a model_weights group)."""
    layers = [n for n, *_ in _KERAS_LAYERS] if layers is None else layers
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = np.array([n.encode() for n in layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.6"
        for name in layers:
            g = root.create_group(name)
            ws = weights.get(name, [])
            g.attrs["weight_names"] = np.array([n.encode() for n, _ in ws])
            for wname, arr in ws:
                g.create_dataset(wname, data=arr)
    return path


def openl3_reference(frames, weights, pool=None):
    """The Keras image model, step by step in float64 from the Keras definition."""
    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    def bn(x, name):
        w = dict((n.split("/")[1].split(":")[0], a) for n, a in weights[name])
        shape = (1, -1, 1, 1)
        return ((x - t(w["moving_mean"]).view(shape)) / torch.sqrt(t(w["moving_variance"]).view(shape) + 1e-3)
                * t(w["gamma"]).view(shape) + t(w["beta"]).view(shape))

    def conv(x, name):
        (_, k), (_, b) = weights[name]
        return F.conv2d(x, t(k).permute(3, 2, 0, 1), t(b), padding=1)

    x = torch.from_numpy(frames.astype(np.float64)).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
    for name, kind, _, _ in _KERAS_LAYERS:
        if kind == "bn":
            x = bn(x, name)
        elif kind == "conv":
            x = conv(x, name)
        elif kind == "act":
            x = torch.relu(x)
        elif kind == "pool":
            x = F.max_pool2d(x, 2, 2)
    if pool is None:
        return x.amax(dim=(2, 3)).numpy()
    return F.max_pool2d(x, pool).permute(0, 2, 3, 1).flatten(1).numpy()


@pytest.fixture(scope="module")
def h5_weights(tmp_path_factory):
    w = keras_weights()
    d = tmp_path_factory.mktemp("openl3")
    return w, write_keras_h5(d / "openl3_image_mel256_env.h5", w)


def test_forward_matches_keras_reference(h5_weights, frames):
    weights, path = h5_weights
    ex = build_extractor("openl3", weights_path=str(path), batch_size=3)
    out = ex.embed(frames)
    assert out.shape == (4, 512) and out.dtype == np.float32
    # the last frame repeats the first: the float64 reference (seconds per frame) is computed for the first three
    assert_close(out, openl3_reference(frames[:3], weights)[[0, 1, 2, 0]])
    assert ex.weights_provenance().startswith("sha256:") and len(ex.weights_provenance()) == 7 + 64
    assert ex.frames_computed == 3  # the repeated frame was computed once


def test_8192_embedding_and_full_model_layout(tmp_path, frames, weights_home):
    weights = keras_weights(seed=1)
    # model.save layout, found by name in $AVSED_WEIGHTS_DIR
    write_keras_h5(weights_home / "openl3_image_linear_music.h5", weights, full_model=True)
    ex = build_extractor("openl3", content_type="music", input_repr="linear", embedding_size=8192, batch_size=1)
    assert ex.dim == 8192
    out = ex.embed(frames[:1])
    assert out.shape == (1, 8192)
    assert_close(out, openl3_reference(frames[:1], weights, pool=7))


def test_missing_file_names_file_and_places(weights_home):
    ex = build_extractor("openl3")
    with pytest.raises(MissingWeightsError) as err:
        ex.load()
    msg = str(err.value)
    assert "openl3_image_mel256_env.h5" in msg and str(weights_home) in msg and "hub" in msg
    assert "--allow-random-weights" in msg


def test_random_weights_are_seeded(weights_home, frames):
    a = build_extractor("openl3", allow_random_weights=True, seed=3, batch_size=2).embed(frames[:2])
    b = build_extractor("openl3", allow_random_weights=True, seed=3, batch_size=2).embed(frames[:2])
    c = build_extractor("openl3", allow_random_weights=True, seed=4, batch_size=2).embed(frames[:2])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ex = build_extractor("openl3", allow_random_weights=True, seed=3)
    assert ex.provenance()["weights"] == "random" and ex.provenance()["config"]["seed"] == 3


def test_missing_layer_is_refused(tmp_path):
    weights = keras_weights()
    layers = [n for n, *_ in _KERAS_LAYERS if n != "vision_embedding_layer"]
    path = write_keras_h5(tmp_path / "w.h5", weights, layers=layers)
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("openl3", weights_path=str(path)).load()
    assert err.value.layer == "embedding" and "missing" in str(err.value)


def test_wrong_shape_is_refused_naming_the_layer(tmp_path):
    weights = keras_weights()
    k, b = weights["conv2d_3"]
    weights["conv2d_3"] = [(k[0], np.zeros((3, 3, 64, 120), np.float32)), (b[0], np.zeros(120, np.float32))]
    path = write_keras_h5(tmp_path / "w.h5", weights)
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("openl3", weights_path=str(path)).load()
    assert "conv2d_3" in err.value.layer and "(3, 3, 64, 120)" in str(err.value)


def test_layer_of_wrong_kind_is_refused(tmp_path):
    weights = keras_weights()
    weights["conv2d_1"], weights["batch_normalization_1"] = weights["batch_normalization_1"], weights["conv2d_1"]
    path = write_keras_h5(tmp_path / "w.h5", weights)
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("openl3", weights_path=str(path)).load()
    assert "batch_normalization_1" in err.value.layer


def test_not_hdf5_is_a_format_error(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(WeightsFormatError, match="not an HDF5 file"):
        build_extractor("openl3", weights_path=str(path)).load()
