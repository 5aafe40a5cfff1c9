"""Data loading, batch composition, mixup, loss, EMA, training, resume equivalence and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.labels import LabelEncoder
from pipeline.store import FeatureStore
from training.data import STRONG, UNLABELLED, WEAK, BatchComposer, TrainingDataError, load_clips
from training.loss import mean_teacher_loss
from training.mean_teacher import ema_update, make_teacher
from training.mixup import maybe_mixup, mix_pairs
from training.models import build_model
from training.predict import predict
from training.train import train

from .conftest import small_config, small_model

TRAIN_KINDS = {"synthetic": "strong", "weak": "weak", "unlabelled": "unlabelled"}


def test_load_clips_standardises_and_encodes_targets(synthetic_store):
    store = FeatureStore.open(synthetic_store)
    data = load_clips(store, list(TRAIN_KINDS), ["logmel", "openl3", "tce"], kinds=TRAIN_KINDS)
    t = data.tensors
    raw = store.read_feature("logmel", data.rows)
    mean, std = store.stats("logmel")
    assert torch.allclose(t.logmel, torch.from_numpy((raw - mean) / std), atol=1e-5)
    assert set(data.partitions) == set(TRAIN_KINDS)
    assert [int((t.kind == k).sum()) for k in (STRONG, WEAK, UNLABELLED)] == [12, 10, 12]
    # Availability = the store's masks; missing rows are zeros with all-valid keys; audio always there.
    for s, name in enumerate(["openl3", "tce"]):
        present = store.present(name)[data.rows]
        assert np.array_equal(t.available[:, s + 1].numpy(), present)
        assert (t.visual[s][~torch.from_numpy(present)] == 0).all()
        assert t.visual_valid[s].all()
    assert t.available[:, 0].all()
    # Strong targets come from the store's events through the shared label encoder.
    encoder = LabelEncoder(store.classes, store.timing)
    events = store.clip_events()
    i = int(np.flatnonzero(t.kind.numpy() == STRONG)[0])
    assert np.array_equal(t.strong[i].numpy(), encoder.encode_strong(events[data.rows[i]]))
    assert np.array_equal(t.weak.numpy(), store.column("weak_labels")[data.rows].astype(np.float32))
    with pytest.raises(TrainingDataError, match="vgg16"):
        load_clips(store, ["weak"], ["logmel", "vgg16"])


def test_visual_streams_are_standardised_with_the_store_statistics(synthetic_store, tmp_path):
    store = FeatureStore.open(synthetic_store)
    data = load_clips(store, list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS)
    raw = load_clips(store, list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS, standardise_visual=False)
    present = torch.from_numpy(store.present("openl3")[data.rows])
    mean, std = store.stats("openl3")
    expected = (raw.tensors.visual[0][present] - torch.from_numpy(mean)) / torch.from_numpy(std)
    assert torch.allclose(data.tensors.visual[0][present], expected, atol=1e-5)
    # Over the training clips' real frames (where the statistics come from): zero mean, unit variance.
    frames = data.tensors.visual[0][present].reshape(-1, mean.shape[0])
    assert frames.mean(0).abs().max() < 1e-4 and (frames.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert (data.tensors.visual[0][~present] == 0).all()  # missing clips stay zeros after standardising

    # A store without the embedding's statistics: a clear error naming the stream and the remedy.
    import shutil
    bare = tmp_path / "bare.zarr"
    shutil.copytree(synthetic_store, bare)
    for key in ("openl3_mean", "openl3_std"):
        shutil.rmtree(bare / key)
    with pytest.raises(TrainingDataError, match=r"no openl3_mean/_std statistics.*standardise_visual: false"):
        load_clips(FeatureStore.open(bare), list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS)
    assert len(load_clips(FeatureStore.open(bare), list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS,
                          standardise_visual=False).tensors) == len(data.tensors)


def test_batch_composer_composition_and_coverage():
    kind = np.array([0] * 5 + [1] * 3 + [2] * 7)
    composer = BatchComposer(kind, [2, 2, 4], seed=3)
    assert composer.slices == [slice(0, 2), slice(2, 4), slice(4, 8)]
    seen_unlabelled = []
    for step in range(7):
        idx = composer.indices(step)
        assert list(kind[idx]) == [0, 0, 1, 1, 2, 2, 2, 2]
        seen_unlabelled.extend(idx[4:])
    # Every unlabelled clip is drawn once per pass (7 clips, 4 per step: 4 full passes in 7 steps).
    assert sorted(seen_unlabelled) == sorted(list(range(8, 15)) * 4)
    # Pure function of the step: a fresh composer gives the same batches (resume needs no sampler state).
    assert np.array_equal(BatchComposer(kind, [2, 2, 4], seed=3).indices(5), composer.indices(5))
    with pytest.raises(TrainingDataError, match="weak"):
        BatchComposer(np.array([0, 2]), [1, 1, 1], seed=0)


def test_mixup_mixes_streams_masks_and_targets_consistently(synthetic_store):
    store = FeatureStore.open(synthetic_store)
    t = load_clips(store, list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS).tensors
    batch = t.take(torch.tensor([0, 1, 2, 3]))
    batch.available[:, 1] = torch.tensor([True, False, True, True])
    batch.visual_valid[0][:] = True
    batch.visual_valid[0][3, 50:] = False  # a short video
    partner = torch.tensor([1, 0, 3, 2])
    lam = 0.7
    mixed = mix_pairs(batch, partner, lam)
    for name in ("logmel", "strong", "weak"):
        a, m = getattr(batch, name), getattr(mixed, name)
        assert torch.allclose(m[0], lam * a[0] + (1 - lam) * a[1])
    assert torch.allclose(mixed.visual[0][2], lam * batch.visual[0][2] + (1 - lam) * batch.visual[0][3])
    # Availability of a mix is the AND: clips 0/1 (one video missing) become audio-only mixes.
    assert mixed.available[:, 1].tolist() == [False, False, True, True]
    assert mixed.visual_valid[0][0].all()  # missing stream -> all keys valid (weight 0 anyway)
    assert mixed.visual_valid[0][2, :50].all() and not mixed.visual_valid[0][2, 50:].any()  # frame masks ANDed
    assert torch.equal(mixed.kind, batch.kind)
    # Partners are drawn inside each supervision group; rate 0 never mixes, rate 1 always does.
    rng = np.random.default_rng(0)
    kind_batch = t.take(torch.tensor([0, 1, 12, 13, 22, 23, 24, 25]))
    slices = [slice(0, 2), slice(2, 4), slice(4, 8)]
    same, lam0 = maybe_mixup(kind_batch, slices, rng, rate=0.0, alpha=0.2)
    assert same is kind_batch and lam0 is None
    mixed, lam1 = maybe_mixup(kind_batch, slices, rng, rate=1.0, alpha=0.2)
    assert 0.0 <= lam1 <= 1.0 and torch.equal(mixed.kind, kind_batch.kind)
    assert torch.allclose(mixed.weak[4:], torch.zeros_like(mixed.weak[4:]))  # unlabelled only mix with unlabelled


def test_ema_update():
    torch.manual_seed(0)
    student = build_model(small_model(), [])
    teacher = make_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.999)
    for t_old, t_new, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t_new, 0.999 * t_old + 0.001 * s, atol=1e-7)
        assert not t_new.requires_grad


def test_loss_terms():
    kind = torch.tensor([STRONG, WEAK, UNLABELLED])
    frame_logits = torch.zeros(3, 64, 10)
    clip_logits = torch.zeros(3, 10)
    strong = torch.zeros(3, 64, 10)
    strong[0, :, 0] = 1.0
    weak = torch.zeros(3, 10)
    terms = mean_teacher_loss(frame_logits, clip_logits, torch.full((3, 64, 10), 0.5), torch.full((3, 10), 0.7),
                              strong, weak, kind, consistency_weight=2.0)
    assert terms.strong_bce.item() == pytest.approx(np.log(2))  # logits 0 -> p 0.5 for every target
    assert terms.weak_bce.item() == pytest.approx(np.log(2))
    assert terms.consistency_frame.item() == pytest.approx(0.0)
    assert terms.consistency_clip.item() == pytest.approx(0.04)
    assert terms.total.item() == pytest.approx(2 * np.log(2) + 2 * 0.04)


@pytest.mark.parametrize("architecture,encoders,weights", [
    ("transformer", ["logmel", "openl3"], "random"),
    ("conformer", ["logmel", "openl3", "tce"], [0.5, 0.25, 0.25]),
])
def test_resume_reaches_the_same_parameters(tmp_path, synthetic_store, architecture, encoders, weights):
    config = small_config(encoders, architecture, steps=6, interpolation_weights=weights, mixup_rate=0.5,
                          lr_decay_every=4)
    full = train(synthetic_store, config, tmp_path / "full")
    part = train(synthetic_store, config, tmp_path / "part", stop_after=3)
    assert part.steps == 3
    resumed = train(synthetic_store, None, tmp_path / "part", resume=True)
    assert resumed.steps == 6
    a = torch.load(full.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    for key in ("model", "teacher"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # x0.1 after lr_decay_every steps
    log_full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_part = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log_part] == list(range(1, 7))
    assert [x["total"] for x in log_full] == [x["total"] for x in log_part]
    assert (tmp_path / "full" / "config.yaml").exists()
    assert any((tmp_path / "full" / "tensorboard").iterdir())


def test_predict_outputs_and_forced_audio_weight(tmp_path, synthetic_store):
    config = small_config(["logmel", "openl3"], steps=2, interpolation_weights=[0.5, 0.5])
    train(synthetic_store, config, tmp_path / "run")
    p = predict(tmp_path / "run", synthetic_store, ["validation", "eval"], device="cpu")
    n = len(p.clip_ids)
    assert n == 18 and p.frame_probs.shape == (n, 64, 10) and p.clip_probs.shape == (n, 10)
    assert ((p.frame_probs >= 0) & (p.frame_probs <= 1)).all()
    assert set(p.partitions) == {"validation", "eval"} and len(p.events) == n and p.durations.shape == (n,)
    store = FeatureStore.open(synthetic_store)
    rows = [store.clip_index()[c] for c in p.clip_ids]
    assert np.array_equal(p.video_available, store.present("openl3")[rows])
    assert np.allclose(p.weights[p.video_available], [0.5, 0.5]) and np.allclose(p.weights[~p.video_available], [1, 0])
    # Forcing audio weight 1 changes clips with video only; clips without video are bit-identical.
    q = predict(tmp_path / "run", synthetic_store, ["validation", "eval"], audio_weight=1.0, device="cpu")
    assert np.array_equal(q.frame_probs[~p.video_available], p.frame_probs[~p.video_available])
    assert not np.allclose(q.frame_probs[p.video_available], p.frame_probs[p.video_available])
    assert np.allclose(q.weights, [1, 0])
    # An audio-only model reports video availability from the store's visual feature.
    train(synthetic_store, small_config(["logmel"], steps=1), tmp_path / "audio")
    r = predict(tmp_path / "audio", synthetic_store, ["eval"], device="cpu", video_feature="openl3")
    assert r.video_available.sum() == store.present("openl3")[[store.clip_index()[c] for c in r.clip_ids]].sum()


def test_cli_trains_extends_and_refuses_changed_config(tmp_path, synthetic_store):
    import argparse

    from training.cli import run_train
    cfg = small_config(["logmel", "openl3"], steps=2)
    cfg.save(tmp_path / "c.yaml")
    args = argparse.Namespace(store=str(synthetic_store), config=str(tmp_path / "c.yaml"), out=str(tmp_path / "run"),
                              resume=True, seed=None, steps=None, device="cpu")
    assert run_train(args) == 0
    args.steps = 3  # extend the finished run by one step
    assert run_train(args) == 0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    args.seed = 99
    with pytest.raises(ValueError, match="seed"):
        run_train(args)
