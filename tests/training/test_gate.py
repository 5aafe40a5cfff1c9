"""Learned interpolation weights (training/gate.py): exact zeros for missing streams, weights that sum to 1, the
audio-only path of a clip without video bit for bit, fixed-weight fusion when the gate is frozen to a constant,
per clip and per frame; trained end to end in a group without host reads; the paper grid's learned rows."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from training.config import GateConfig, TrainConfig, TrainConfigError
from training.fusion import resolve_weights
from training.gate import gated_weights
from training.models import build_model
from training.step import hide_video, prepared_batch
from training.checkpoint import CHECKPOINT, RunMismatch
from training.train import load_training_data, prepare_group, train, train_group

from .conftest import small_config, small_model, steps_without_host_sync
from .test_group import HOST_SYNC_EVENTS, _count, _max_difference, _states, tiny_model

DIMS = [24, 40]
MODES = ["clip", "frame"]


def gated(architecture: str, mode: str, floor: float = 0.25, dims=DIMS, seed: int = 1) -> torch.nn.Module:
    config = small_model(architecture).model_copy(update={"gate": GateConfig(mode=mode, audio_floor=floor)})
    torch.manual_seed(seed)
    model = build_model(config, dims).eval()
    # A trained-looking gate: its last layer is zero when new (the prior's weights), which would hide mistakes.
    with torch.no_grad():
        model.gate.logits.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
    return model


def _inputs(b: int, dims=DIMS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logmel = torch.randn(b, 512, 64, generator=g)
    visual = [torch.randn(b, 64, d, generator=g) for d in dims]
    valid = [torch.ones(b, 64, dtype=torch.bool) for _ in dims]
    return logmel, visual, valid


def _without(visual, valid, available):
    """Inputs as data.load_clips gives them: zeros and all-valid key masks where a stream is missing."""
    visual = [torch.where(available[:, s + 1, None, None], v, torch.zeros_like(v)) for s, v in enumerate(visual)]
    valid = [m | ~available[:, s + 1, None] for s, m in enumerate(valid)]
    return visual, valid


AVAILABLE = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("architecture", ["transformer", "conformer"])
def test_missing_streams_get_exactly_zero_and_weights_sum_to_one(architecture, mode):
    model = gated(architecture, mode, floor=0.25)
    logmel, visual, valid = _inputs(5)
    visual, valid = _without(visual, valid, AVAILABLE)
    prior = resolve_weights(torch.full((3,), 1 / 3), AVAILABLE)
    w = model.interpolation_weights(logmel, visual, valid, prior)
    assert w.shape == ((5, 3) if mode == "clip" else (5, 65, 3))
    per_position = w if mode == "frame" else w[:, None]
    missing = ~AVAILABLE[:, None, :].expand_as(per_position)
    assert torch.equal(per_position[missing], torch.zeros(int(missing.sum())))  # exactly 0, not 1e-12
    assert torch.equal(per_position[3], torch.tensor([1.0, 0.0, 0.0]).expand_as(per_position[3]))  # audio only
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-6)
    assert (per_position[AVAILABLE[:, 1:].any(1)][..., 0] >= 0.25 - 1e-6).all()  # the audio floor
    # The weights depend on the clip (and, per frame, on the frame): clips 0 and 4 have the same streams.
    assert not torch.allclose(w[0], w[4], atol=1e-4)
    if mode == "frame":
        assert not torch.allclose(w[0, 0], w[0, 30], atol=1e-4)


def test_gated_weights_floor_temperature_and_prior():
    logits = torch.tensor([[0.0, 3.0], [0.0, 3.0], [2.0, -1.0]])
    prior = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    w = gated_weights(logits, prior, temperature=1.0, audio_floor=0.0)
    assert torch.allclose(w[0], torch.softmax(torch.tensor([0.0, 3.0]), 0))
    assert torch.equal(w[1], torch.tensor([1.0, 0.0]))  # forced off: exactly audio only
    floored = gated_weights(logits, prior, audio_floor=0.4)
    assert torch.allclose(floored[0], torch.tensor([1 - 0.6 * w[0, 1], 0.6 * w[0, 1]]))
    hot = gated_weights(logits, prior, temperature=10.0)
    assert hot[0, 1] < w[0, 1] and hot[0, 1] > 0.5  # a higher temperature flattens towards the prior
    tilted = gated_weights(logits, torch.tensor([[0.9, 0.1]] * 3))  # the prior's values tilt the softmax
    assert torch.allclose(tilted[0], torch.softmax(torch.tensor([0.0, 3.0]) + torch.log(torch.tensor([0.9, 0.1])), 0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("architecture", ["transformer", "conformer"])
def test_clip_without_video_equals_the_same_clip_with_video_forced_off(architecture, mode):
    """Bit for bit: a clip whose streams are missing == the same clip with them (all or one) forced to 0."""
    model = gated(architecture, mode)
    logmel, visual, valid = _inputs(2)
    base = torch.tensor([0.5, 0.25, 0.25])
    with torch.no_grad():
        for forced_prior, available in ((torch.tensor([1.0, 0.0, 0.0]), torch.tensor([[1, 0, 0], [1, 1, 1]])),
                                        (torch.tensor([0.5, 0.25, 0.0]), torch.tensor([[1, 1, 0], [1, 1, 1]]))):
            available = available.to(torch.bool)
            forced = resolve_weights(forced_prior, torch.ones(2, 3, dtype=torch.bool))
            frame_a, clip_a = model(logmel, visual, valid, forced)
            visual_b, valid_b = _without(visual, valid, available)
            frame_b, clip_b = model(logmel, visual_b, valid_b, resolve_weights(base, available))
            assert torch.equal(frame_a[0], frame_b[0]) and torch.equal(clip_a[0], clip_b[0])
        # ... and the video changes the output when it is there and not forced off.
        frame_c, _ = model(logmel, visual, valid, resolve_weights(base, torch.ones(2, 3, dtype=torch.bool)))
        assert not torch.allclose(frame_c[0], frame_a[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("architecture", ["transformer", "conformer"])
def test_gate_frozen_to_a_constant_reproduces_fixed_weight_fusion(architecture, mode):
    fixed = torch.tensor([0.6, 0.3, 0.1])
    model = gated(architecture, mode, floor=0.0)
    with torch.no_grad():  # constant logits log(w): softmax(log w + log(equal prior)) == w renormalised
        model.gate.logits.weight.zero_()
        model.gate.logits.bias.copy_(torch.log(fixed))
    plain = build_model(small_model(architecture), DIMS).eval()
    missing = plain.load_state_dict(model.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {k for k in model.state_dict() if k.startswith("gate.")}
    assert not missing.missing_keys
    logmel, visual, valid = _inputs(5, seed=2)
    visual, valid = _without(visual, valid, AVAILABLE)
    with torch.no_grad():
        learned = model(logmel, visual, valid, resolve_weights(torch.full((3,), 1 / 3), AVAILABLE))
        reference = plain(logmel, visual, valid, resolve_weights(fixed, AVAILABLE))
        other = plain(logmel, visual, valid, resolve_weights(torch.tensor([0.2, 0.4, 0.4]), AVAILABLE))
    for a, b, c in zip(learned, reference, other):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert not torch.allclose(a, c, atol=1e-3)  # the weights matter at this tolerance


def test_gate_settings_are_checked_and_kept_in_the_config():
    config = small_config(model=small_model().model_copy(update={"gate": GateConfig(mode="frame", temperature=2.0)}))
    loaded = TrainConfig.from_dict(config.to_dict())
    assert loaded.model.gate == GateConfig(mode="frame", temperature=2.0) and loaded.model.gate.audio_floor == 0.25
    for bad, match in (({"mode": "learned"}, "model.gate.mode"), ({"audio_floor": 1.0}, "audio_floor"),
                       ({"temperature": 0}, "temperature")):
        with pytest.raises(TrainConfigError, match=match):
            TrainConfig.from_dict({"model": {"gate": bad}})
    assert build_model(small_model(), []).gate is None  # audio only: nothing to weigh
    assert build_model(small_model().model_copy(update={"gate": GateConfig(mode="clip")}), [24]).gate is not None


def _learned_config(mode: str, **kw) -> TrainConfig:
    architecture = kw.pop("architecture", "conformer")
    model = kw.pop("model", tiny_model(architecture))
    return small_config(["logmel", "openl3", "tce"], architecture,
                        model=model.model_copy(update={"gate": GateConfig(mode=mode)}), **kw)


@pytest.mark.parametrize("mode", MODES)
def test_training_moves_the_gate_and_mixed_clips_missing_a_video_get_zero(synthetic_store, mode):
    """Mixup on every batch: the gate sees the mixed inputs, and a mixed pair missing a stream (either clip)
    gets exactly 0 there; a few steps change the gate of student and teacher (trained end to end)."""
    config = _learned_config(mode, steps=4, mixup_rate=1.0, batch_strong=4, batch_weak=4,
                             batch_unlabelled=4).resolved("cpu")
    data = load_training_data(synthetic_store, config, torch.device("cpu"))
    group = prepare_group(config, [0], data, torch.device("cpu"))
    start = {k: v.detach().clone() for k, v in group.student.params.items() if k.startswith("gate.")}
    for step in range(3):
        group.before_step(step)
        group.step_fn()
    moved = [k for k, v in start.items() if not torch.equal(v, group.student.params[k][0])]
    assert {"gate.logits.weight", "gate.hidden.weight"} <= set(moved)
    assert not torch.equal(group.teacher.params["gate.logits.weight"][0], torch.zeros_like(start["gate.logits.weight"]))
    # The next step's batch, mixed as the step mixes it, through the trained student.
    draws = group.step_fn.draws.at(3)
    seed_draws = type(draws)(*(getattr(draws, f)[0] for f in ("indices", "mix", "lam", "partner", "audio_weight",
                                                                 "video_drop")))
    batch = prepared_batch(data.tensors, seed_draws, torch.float32)
    raw = data.tensors.take(seed_draws.indices)
    anded = raw.available & raw.available.index_select(0, seed_draws.partner)
    assert bool(seed_draws.mix) and torch.equal(batch.available, anded)
    assert (raw.available & ~anded).any()  # some clip had a video that its partner lacked
    model = build_model(config.model, group.visual_dims)
    model.load_state_dict(group.student.state_dict(0))
    model.train()
    w = model.interpolation_weights(batch.logmel, batch.visual, batch.visual_valid,
                                    resolve_weights(torch.full((3,), 1 / 3), batch.available))
    per_position = w if mode == "frame" else w[:, None]
    missing = ~batch.available[:, None, :].expand_as(per_position)
    assert torch.equal(per_position[missing], torch.zeros(int(missing.sum())))
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-6)


def test_hidden_video_is_a_missing_video(synthetic_store):
    """hide_video marks the chosen clips' visual streams missing, exactly as data.load_clips marks a clip without
    video (availability 0, every key valid), and leaves the audio and the other clips alone."""
    config = _learned_config("clip").resolved("cpu")
    data = load_training_data(synthetic_store, config, torch.device("cpu"))
    batch = data.tensors.take(torch.arange(8))
    hide = torch.tensor([True, False] * 4)
    out = hide_video(batch, hide)
    assert torch.equal(out.available[:, 0], torch.ones(8, dtype=torch.bool))
    assert not out.available[hide, 1:].any()
    assert torch.equal(out.available[~hide], batch.available[~hide])
    for before, after in zip(batch.visual_valid, out.visual_valid):
        assert after[hide].all() and torch.equal(after[~hide], before[~hide])
    assert out.logmel is batch.logmel and out.strong is batch.strong


@pytest.mark.parametrize("dropout,visual_learns", [(0.0, True), (0.999, False)])
def test_video_dropout_trains_the_audio_only_path(synthetic_store, dropout, visual_learns):
    """With every video hidden (dropout just below 1) the visual streams get weight 0 in every training clip, so
    their encoders get no gradient; without dropout they learn."""
    config = _learned_config("clip", steps=4, mixup_rate=0.5).resolved("cpu")
    config.model.gate.video_dropout = dropout
    data = load_training_data(synthetic_store, config, torch.device("cpu"))
    group = prepare_group(config, [0], data, torch.device("cpu"))
    start = {k: v.detach().clone() for k, v in group.student.params.items()}
    for step in range(2):
        group.before_step(step)
        group.step_fn()
    moved = {k for k, v in start.items() if not torch.equal(v, group.student.params[k])}
    visual = {k for k in start if k.startswith(("visual_proj.", "encoders.1.", "encoders.2."))}
    # (Some parameters never get a gradient, e.g. attention key biases: judge by the projections and feed-forwards.)
    learners = {"visual_proj.0.weight", "visual_proj.1.weight", "encoders.1.0.ff_in.net.1.weight",
                "encoders.2.2.ff_out.net.4.weight"}
    assert learners <= visual
    assert (learners <= moved) if visual_learns else not (visual & moved)
    assert "cnn.blocks.0.0.weight" in moved  # the audio path trains either way


@pytest.mark.parametrize("mode,seeds", [("clip", [0, 1]), pytest.param("frame", [0, 1], marks=pytest.mark.slow),
                                        ("clip", [0])])  # the per-frame gate's group: full suite
def test_learned_weights_step_makes_no_host_round_trip(synthetic_store, mode, seeds):
    config = _learned_config(mode, steps=10, mixup_rate=0.5).resolved("cpu")
    config.model.dropout = config.model.cnn.dropout = 0.1
    data = load_training_data(synthetic_store, config, torch.device("cpu"))
    group = prepare_group(config, seeds, data, torch.device("cpu"))
    for step in range(2):
        group.before_step(step)
        group.step_fn()
    before = group.student.params["gate.logits.weight"].detach().clone()
    group.before_step(2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        group.step_fn()
    assert _count(prof, HOST_SYNC_EVENTS) == dict.fromkeys(HOST_SYNC_EVENTS, 0)
    assert len(prof.events()) > 500
    assert not torch.equal(before, group.student.params["gate.logits.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode,capture", [("clip", False), ("clip", True), ("frame", True)])
def test_learned_weights_cuda_step_does_not_synchronise(synthetic_store, mode, capture):
    config = _learned_config(mode, steps=10, mixup_rate=0.5, device="cuda", capture=capture).resolved("cuda")
    device = torch.device("cuda")
    group = prepare_group(config, [0, 1], load_training_data(synthetic_store, config, device), device)
    steps_without_host_sync(group)
    assert all(v["total"] > 0 for v in group.step_fn.read_losses())


def test_learned_seed_of_a_group_equals_the_seed_trained_alone(tmp_path, synthetic_store):
    """The gate under vmap: per-frame weights, mixup and video dropout on, float64; seed 1 of a group == seed 1
    alone."""
    config = _learned_config("frame", steps=8, batch_strong=2, batch_weak=2, batch_unlabelled=2, mixup_rate=0.5,
                             feature_dtype="float64", model_dtype="float64", log_every=8)
    config.model.gate.video_dropout = 0.3  # the hidden videos are a seed's own draws too
    data = load_training_data(synthetic_store, config.resolved("cpu"), torch.device("cpu"))
    train_group(synthetic_store, config, {s: tmp_path / f"group{s}" for s in (0, 1)}, data=data)
    train_group(synthetic_store, config, {1: tmp_path / "alone1"}, data=data)
    group, alone = _states(tmp_path / "group1"), _states(tmp_path / "alone1")
    assert _max_difference(group, alone) < 1e-5
    assert not torch.equal(group["model"]["gate.logits.weight"], torch.zeros_like(group["model"]["gate.logits.weight"]))


def test_a_gated_run_from_before_video_dropout_resumes_only_as_it_was_trained(tmp_path, synthetic_store):
    """A checkpoint written before `model.gate.video_dropout` existed was trained without it: resuming it with the
    new default refuses (naming the change) instead of silently training on with hidden videos; with the
    setting at 0 it resumes."""
    config = _learned_config("clip", steps=4, log_every=2, checkpoint_every=2)
    train(synthetic_store, config, tmp_path / "run", stop_after=2)
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    del ckpt["config"]["model"]["gate"]["video_dropout"]
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(RunMismatch, match="model"):
        train(synthetic_store, config, tmp_path / "run", resume=True)
    config.model.gate.video_dropout = 0.0
    assert train(synthetic_store, config, tmp_path / "run", resume=True).steps == 4
