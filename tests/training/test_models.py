"""Shapes of every architecture x encoder count, fusion with missing streams, weight renormalisation, CNN."""

from __future__ import annotations

import pytest
import torch

from training.cnn import CNNFrontEnd
from training.config import CNNConfig, ModelConfig, TrainConfig, TrainConfigError
from training.fusion import interpolate, resolve_weights
from training.models import build_model, model_names

from .conftest import small_model

VISUAL_DIMS = {1: [], 2: [24], 3: [24, 40]}


def _inputs(b: int, dims: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logmel = torch.randn(b, 512, 64, generator=g)
    visual = [torch.randn(b, 64, d, generator=g) for d in dims]
    valid = [torch.ones(b, 64, dtype=torch.bool) for _ in dims]
    return logmel, visual, valid


def test_registry_knows_both_architectures():
    assert model_names() == ["conformer", "transformer"]
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelConfig(architecture="rnn"), [])


@pytest.mark.parametrize("architecture", ["transformer", "conformer"])
@pytest.mark.parametrize("n_encoders", [1, 2, 3])
def test_output_shapes(architecture, n_encoders):
    torch.manual_seed(0)
    dims = VISUAL_DIMS[n_encoders]
    model = build_model(small_model(architecture), dims)
    assert len(model.encoders) == n_encoders
    assert all(len(block.cross_attn) == n_encoders for block in model.decoder)
    logmel, visual, valid = _inputs(3, dims)
    weights = resolve_weights(torch.full((n_encoders,), 1.0 / n_encoders), torch.ones(3, n_encoders, dtype=torch.bool))
    frame, clip = model(logmel, visual, valid, weights)
    assert frame.shape == (3, 64, 10) and clip.shape == (3, 10)
    assert torch.isfinite(frame).all() and torch.isfinite(clip).all()
    # Gradients reach every parameter of a multi-encoder model (each stream contributes), and are not all zero
    # (a stream cut off by a zero weight or a detached branch would give None or zeros).
    (frame.sum() + clip.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, zero


def test_paper_sized_model_front_end_and_attention_sizes():
    config = ModelConfig()
    cnn = CNNFrontEnd(config.cnn, config.d_model)
    assert cnn.time_pooling == 8 and cnn.freq_pooling == 64 and cnn.out_channels == 128
    bn = [m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 7 and all(abs(m.momentum - 0.1) < 1e-12 for m in bn)  # Keras 0.9 == PyTorch 0.1
    assert cnn(torch.randn(2, 512, 64)).shape == (2, 64, 128)
    model = build_model(config, [512])
    attn = model.decoder[0].cross_attn[1]
    assert attn.q.weight.shape == (384, 128) and attn.out.weight.shape == (128, 384)  # 3 heads x d_k 128 -> 128
    assert model.decoder[0].ff.net[0].weight.shape == (512, 128)
    with pytest.raises(ValueError, match="frequency bins"):
        CNNFrontEnd(CNNConfig(pooling=[[2, 1]] * 7), 128)(torch.randn(1, 512, 64))


def test_resolve_weights_renormalises_over_available_streams():
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    w = resolve_weights(torch.tensor([0.5, 0.25, 0.25]), available)
    expected = torch.tensor([[0.5, 0.25, 0.25], [2 / 3, 0, 1 / 3], [1, 0, 0], [2 / 3, 1 / 3, 0]])
    assert torch.allclose(w, expected)
    assert torch.allclose(w.sum(1), torch.ones(4))
    # Per-clip base weights, and audio weight forced to 0 on a clip without video -> audio takes over.
    w = resolve_weights(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[1, 1], [1, 0]], dtype=torch.bool))
    assert torch.equal(w, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_interpolate_is_exact_for_zero_weights():
    a, b = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    out = interpolate([a, b], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    assert torch.equal(out[0], a[0])
    assert torch.allclose(out[1], 0.25 * a[1] + 0.75 * b[1])


@pytest.mark.parametrize("architecture", ["transformer", "conformer"])
def test_missing_video_equals_forced_zero_weight(architecture):
    """A clip without video == the same clip with video whose visual weight is forced to 0, bit for bit."""
    torch.manual_seed(1)
    model = build_model(small_model(architecture), [24, 40]).eval()
    logmel, visual, valid = _inputs(2, [24, 40], seed=3)
    base = torch.tensor([0.5, 0.25, 0.25])
    with torch.no_grad():
        # (a) clip 0 has both videos, weight of stream 2 forced to 0 (and stream 1 kept).
        forced = resolve_weights(torch.tensor([0.5, 0.25, 0.0]), torch.ones(2, 3, dtype=torch.bool))
        frame_a, clip_a = model(logmel, visual, valid, forced)
        # (b) clip 0's second video is missing: zeros, all-valid keys, availability False.
        visual_b = [visual[0], visual[1].clone()]
        visual_b[1][0] = 0.0
        available = torch.ones(2, 3, dtype=torch.bool)
        available[0, 2] = False
        frame_b, clip_b = model(logmel, visual_b, valid, resolve_weights(base, available))
        assert torch.equal(frame_a[0], frame_b[0]) and torch.equal(clip_a[0], clip_b[0])
        # All videos missing == audio weight forced to 1.
        audio_only = resolve_weights(torch.tensor([1.0, 0.0, 0.0]), torch.ones(2, 3, dtype=torch.bool))
        frame_c, clip_c = model(logmel, visual, valid, audio_only)
        none = torch.zeros(2, 3, dtype=torch.bool)
        none[:, 0] = True
        frame_d, clip_d = model(logmel, [torch.zeros_like(v) for v in visual], valid, resolve_weights(base, none))
        assert torch.equal(frame_c, frame_d) and torch.equal(clip_c, clip_d)
        # ... and the video does change the output when it is there.
        frame_e, _ = model(logmel, visual, valid, resolve_weights(base, torch.ones(2, 3, dtype=torch.bool)))
        assert not torch.allclose(frame_e, frame_c)


def test_config_yaml_round_trip(tmp_path):
    config = TrainConfig(encoders=["logmel", "openl3", "tce"], interpolation_weights="random", seed=7)
    config.model.architecture = "conformer"
    config.save(tmp_path / "c.yaml")
    loaded = TrainConfig.load(tmp_path / "c.yaml")
    assert loaded == config
    assert loaded.total_steps == 25000 and loaded.model.cnn.filters[-1] == 128
    assert loaded.default_inference_weights() == [0.625, 0.1875, 0.1875]
    with pytest.raises(ValueError, match="audio is always the first"):
        TrainConfig.from_dict({"encoders": ["openl3", "logmel"]})
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"model": {"heads": 3, "bogus": 1}})
    with pytest.raises(TrainConfigError, match=r"unknown keys 'hedas' \(did you mean 'heads'\?\)"):
        TrainConfig.from_dict({"model": {"hedas": 3}})
    with pytest.raises(TrainConfigError, match="mixup_alpha must be positive"):
        TrainConfig.from_dict({"mixup_alpha": 0})
    # bf16 autocast and TF32 default to on for CUDA only; an explicit setting wins; the run saves the decision.
    assert config.bf16 is None and config.tf32 is None
    assert (config.resolved("cuda").bf16, config.resolved("cuda").tf32) == (True, True)
    assert (config.resolved("cpu").bf16, config.resolved("cpu").tf32) == (False, False)
    assert TrainConfig(bf16=False).resolved("cuda").bf16 is False


def test_front_end_channels_last_is_the_same_function_in_another_layout():
    """The CUDA layout (NHWC feature maps) computes what NCHW does, also over stacked seeds under vmap."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    # float64: the two layouts sum in other orders, so compare far below float32 rounding.
    nets = [CNNFrontEnd(CNNConfig(dropout=0.0), 128).double().train() for _ in range(2)]
    logmel = torch.randn(2, 3, 512, 64, dtype=torch.float64)
    layouts = []
    handle = nets[0].blocks[0][1].register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                       and not args[0].is_contiguous()))
    out = {}
    for channels_last in (False, True):
        for net in nets:
            net.channels_last = channels_last
        y = nets[0](logmel[0])
        y.square().mean().backward()
        out[channels_last] = (y.detach(), nets[0].blocks[0][0].weight.grad.clone())
        nets[0].zero_grad()
    handle.remove()
    assert layouts == [False, True]  # the first batch norm really sees NHWC maps when asked
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-7, atol=1e-10)
    # Over seeds (training.group's vmap): same outputs as each seed alone.
    params, buffers = stack_module_state(nets)
    stacked = vmap(lambda p, b, x: functional_call(nets[0], (p, b), (x,)), randomness="different")(
        params, buffers, logmel)
    for s, net in enumerate(nets):
        torch.testing.assert_close(stacked[s], net(logmel[s]), rtol=1e-9, atol=1e-9)
