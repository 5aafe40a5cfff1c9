"""Data loading, batch composition, mixup, loss, EMA, training, resume equivalence and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsed.core.labels import LabelEncoder
from avsed.core.store import FeatureStore
from training.checkpoint import RunMismatch
from training.config import TrainConfig
from training.data import STRONG, UNLABELLED, WEAK, TrainingDataError, load_clips
from training.loss import mean_teacher_loss
from training.mean_teacher import ema_update, make_teacher
from training.mixup import mix_pairs
from training.models import build_model
from training.predict import predict
from training.train import train

from .conftest import small_config, small_model, tiny_model

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
    # Not mixing (the draw said no) is the same arithmetic with ratio 1: exactly the batch.
    same = mix_pairs(batch, partner, torch.tensor(lam, dtype=torch.float64), torch.tensor(False))
    for name in ("logmel", "strong", "weak", "available"):
        assert torch.equal(getattr(same, name), getattr(batch, name)), name
    assert torch.equal(same.visual[0], batch.visual[0]) and torch.equal(same.visual_valid[0], batch.visual_valid[0])


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
    """Strong BCE averages over strong clips only and weak BCE over weak clips only (paper 3.1.5): the logits
    differ per clip kind, so a plain mean over the batch gives other values."""
    kind = torch.tensor([STRONG, STRONG, WEAK, UNLABELLED, UNLABELLED])
    frame_logits = torch.zeros(5, 64, 10)
    clip_logits = torch.zeros(5, 10)
    frame_logits[0], frame_logits[1] = 2.0, -1.0  # strong clips
    frame_logits[2:] = 5.0  # weak and unlabelled clips: must not count in the strong BCE
    clip_logits[2] = -3.0  # the weak clip
    clip_logits[[0, 1, 3, 4]] = 4.0  # must not count in the weak BCE
    strong = torch.zeros(5, 64, 10)
    strong[0, :, 0] = 1.0
    weak = torch.zeros(5, 10)
    weak[2, 1] = 1.0
    t_frame, t_clip = torch.full((5, 64, 10), 0.5), torch.full((5, 10), 0.7)
    terms = mean_teacher_loss(frame_logits, clip_logits, t_frame, t_clip, strong, weak, kind, consistency_weight=2.0)

    def bce(logit, target):
        p = 1 / (1 + np.exp(-logit))
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))
    strong_expected = np.mean([(bce(2.0, 1) + 9 * bce(2.0, 0)) / 10, bce(-1.0, 0)])
    weak_expected = (bce(-3.0, 1) + 9 * bce(-3.0, 0)) / 10
    assert terms.strong_bce.item() == pytest.approx(strong_expected, rel=1e-5)
    assert terms.weak_bce.item() == pytest.approx(weak_expected, rel=1e-5)
    # Consistency: every clip counts (MSE between student and teacher probabilities).
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    frame_expected = np.mean([(sig(v) - 0.5) ** 2 for v in (2.0, -1.0, 5.0, 5.0, 5.0)])
    clip_expected = np.mean([(sig(v) - 0.7) ** 2 for v in (4.0, 4.0, -3.0, 4.0, 4.0)])
    assert terms.consistency_frame.item() == pytest.approx(frame_expected, rel=1e-5)
    assert terms.consistency_clip.item() == pytest.approx(clip_expected, rel=1e-5)
    assert terms.total.item() == pytest.approx(strong_expected + weak_expected + 2 * (frame_expected + clip_expected),
                                               rel=1e-5)


@pytest.mark.parametrize("architecture,encoders,weights", [
    ("transformer", ["logmel", "openl3"], "random"),
    ("conformer", ["logmel", "openl3", "tce"], [0.5, 0.25, 0.25]),
])
def test_resume_reaches_the_same_parameters(tmp_path, synthetic_store, architecture, encoders, weights):
    # The tiny model with dropout on (its draws must resume too): resuming is structural, and a step of the
    # small model cost 10x more.
    config = small_config(encoders, architecture, steps=6, interpolation_weights=weights, mixup_rate=0.5,
                          lr_decay_every=4, model=tiny_model(architecture, dropout=True))
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
    for key in ("exp_avg", "exp_avg_sq"):
        for name, value in a["optimizer"][key].items():
            assert torch.equal(value, b["optimizer"][key][name]), (key, name)
    assert a["optimizer"]["step"] == b["optimizer"]["step"] == 6
    log_full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_part = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log_part] == list(range(1, 7))
    assert [x["total"] for x in log_full] == [x["total"] for x in log_part]
    assert [x["lr"] for x in log_full] == pytest.approx([1e-3] * 4 + [1e-4] * 2)  # x0.1 after lr_decay_every steps
    saved = TrainConfig.load(tmp_path / "full" / "config.yaml")
    assert (saved.bf16, saved.tf32) == (False, False)  # decided for the CPU, recorded
    assert any((tmp_path / "full" / "tensorboard").iterdir())


def test_predict_outputs_and_forced_audio_weight(tmp_path, synthetic_store):
    config = small_config(["logmel", "openl3"], steps=2, interpolation_weights=[0.5, 0.5],
                          model=tiny_model(dropout=True))
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
    train(synthetic_store, small_config(["logmel"], steps=1, model=tiny_model(dropout=True)), tmp_path / "audio")
    r = predict(tmp_path / "audio", synthetic_store, ["eval"], device="cpu", video_feature="openl3")
    assert r.video_available.sum() == store.present("openl3")[[store.clip_index()[c] for c in r.clip_ids]].sum()


def test_cli_trains_extends_and_refuses_changed_config(tmp_path, synthetic_store, capsys):
    from avsed.cli import main

    cfg = small_config(["logmel", "openl3"], steps=2, model=tiny_model(dropout=True))
    cfg.save(tmp_path / "c.yaml")
    argv = ["train", "--store", str(synthetic_store), "--config", str(tmp_path / "c.yaml"), "--out",
            str(tmp_path / "run"), "--resume", "--device", "cpu"]
    assert main(argv) == 0
    assert main(argv + ["--steps", "3"]) == 0  # extend the finished run by one step
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert "1 trained now" in capsys.readouterr().out
    capsys.readouterr()
    # A refusal is one line naming the run and what to do, exit status 2 (the traceback only with --debug).
    assert main(argv + ["--steps", "3", "--seed", "99"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("avsed train: error: ") and "\n" not in error
    assert "cannot resume with a different config (changed: ['seed']); train into a new directory" in error
    with pytest.raises(RunMismatch):
        main(argv + ["--steps", "3", "--seed", "99", "--debug"])
    # --seeds: one run directory per seed, each with the same files as a single run.
    assert main(["train", "--store", str(synthetic_store), "--config", str(tmp_path / "c.yaml"), "--out",
                 str(tmp_path / "group"), "--seeds", "3,5"]) == 0
    for seed in (3, 5):
        run = tmp_path / "group" / f"seed{seed}"
        assert {p.name for p in run.iterdir()} >= {"checkpoint.pt", "config.yaml", "log.jsonl", "tensorboard"}
        assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["seed"] == seed
    with pytest.raises(SystemExit):
        main(["train", "--store", "s", "--out", "o", "--seeds", "5-2"])


def test_resume_and_predict_refuse_features_made_differently(tmp_path, synthetic_store):
    import shutil

    config = small_config(["logmel", "openl3"], steps=2, model=tiny_model(dropout=True))
    train(synthetic_store, config, tmp_path / "run", stop_after=1)
    other = tmp_path / "other.zarr"
    shutil.copytree(synthetic_store, other)
    array = FeatureStore.open(other, mode="r+").group["openl3"]
    array.attrs["provenance"] = {**dict(array.attrs["provenance"]), "version": 99}
    with pytest.raises(ValueError, match=r"feature 'openl3' provenance differs .*train into a new directory"):
        train(other, config, tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match=r"feature 'openl3' was made differently"):
        predict(tmp_path / "run", other, ["eval"], device="cpu")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 1  # left as it was
    assert train(synthetic_store, config, tmp_path / "run", resume=True).steps == 2  # the same store resumes
    # A checkpoint of the earlier format (torch optimiser state) is evaluable but not resumable: one clear line.
    old = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    torch.save({**old, "format": 1}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(RunMismatch, match="written by an earlier version .*train into a new directory"):
        train(synthetic_store, {**config.to_dict(), "steps_per_epoch": 3}, tmp_path / "run", resume=True)


def test_predict_use_teacher_scores_the_teachers_weights(tmp_path, synthetic_store):
    from training.fusion import resolve_weights

    # A fast teacher and learning rate, so student and teacher differ clearly after 3 steps.
    config = small_config(["logmel", "openl3"], steps=3, interpolation_weights=[0.75, 0.25], learning_rate=1e-2,
                          ema_decay=0.5, model=tiny_model(dropout=True))
    train(synthetic_store, config, tmp_path / "run")
    student = predict(tmp_path / "run", synthetic_store, ["eval"], device="cpu")
    teacher = predict(tmp_path / "run", synthetic_store, ["eval"], device="cpu", use_teacher=True)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    model = build_model(config.model, ckpt["visual_dims"])
    model.load_state_dict(ckpt["teacher"])
    model.eval()
    t = load_clips(FeatureStore.open(synthetic_store), ["eval"], ["logmel", "openl3"]).tensors
    with torch.no_grad():
        frame, _ = model(t.logmel, t.visual, t.visual_valid, resolve_weights(torch.tensor([0.75, 0.25]), t.available))
    assert np.allclose(teacher.frame_probs, torch.sigmoid(frame).numpy(), atol=1e-6)
    assert not np.allclose(student.frame_probs, teacher.frame_probs, atol=1e-3)
