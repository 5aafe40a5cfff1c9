"""Learning check: on a synthetic store whose video carries what the audio lacks (pairs of classes share one
log-mel band; the visual embedding is a noisy one-hot of the active classes), a short CPU run of the bi-encoder
uses the video: on eval clips with video it beats the audio-only model and itself with the video ignored (audio
weight forced to 1, the paper's Table 7 check), and it is about as good as the audio-only model without video.

The bi-encoder trains as a group of two seeds (stacked, dropout and mixup on) and the audio-only model alone:
every seed of the group must pass the checks a run of its own passes.

Scores are frame-level F1 at the best threshold of a grid (0.05 .. 0.95): after 160 steps the models' calibration
varies a lot between runs (the audio-only model's F1 at threshold 0.5 ranged from 0.30 to 0.71 over four runs here,
which flipped the comparison at 0.5 either way; its best-threshold F1 ranged 0.64 to 0.71 over three), and
calibration is what the evaluation's tuning settles anyway.

120 steps, not 160: the checks ask for a margin, not convergence. The smallest margin over the three checks and two
seeds (measured 2026-12-07 on one run, the models of shorter runs being the same trajectory's prefixes) was -0.031
at 100 steps (fails), 0.012 at 120 and 0.024 at 160; 120 steps cost three quarters of 160.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from avsed.core.labels import LabelEncoder
from training.predict import predict
from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store
from training.train import train, train_group

from .conftest import small_config

STEPS = 120
THRESHOLDS = np.arange(0.05, 0.96, 0.05)


def frame_f1(pred, selection: np.ndarray) -> float:
    """Best frame-level F1 over THRESHOLDS of the selected clips."""
    encoder = LabelEncoder(pred.classes, pred.timing)
    truth = np.stack([encoder.encode_strong(e) for e in pred.events])[selection] > 0.5
    scores = []
    for threshold in THRESHOLDS:
        decided = pred.frame_probs[selection] > threshold
        tp = np.count_nonzero(decided & truth)
        scores.append(2.0 * tp / max(1, np.count_nonzero(decided) + np.count_nonzero(truth)))
    return float(max(scores))


def learning_config(encoders, weights):
    # Short-run settings: a narrower CNN without dropout, lr 3e-3 and a faster teacher (EMA 0.95; with the
    # paper's 0.999 the teacher hardly leaves its initialisation in 120 steps and the consistency term pulls
    # the student back to it). Everything else as in the paper: attention / feed-forward dropout 0.1, mixup 33%.
    config = small_config(encoders, steps=STEPS, interpolation_weights=weights, batch_strong=8, batch_weak=4,
                          batch_unlabelled=4, log_every=20, learning_rate=3e-3, ema_decay=0.95)
    config.model.cnn.dropout = 0.0
    config.model.cnn.filters = [4, 8, 16, 32, 32, 32, 32]
    assert config.model.dropout == 0.1 and config.mixup_rate == 0.33
    return config


@pytest.mark.slow
def test_bi_encoder_uses_the_video_alone_and_in_a_group(tmp_path):
    store = tmp_path / "features.zarr"
    # Strong clips carry video here (unlike DESED's synthetic soundscapes) so a short run can learn from it.
    build_synthetic_store(store, SyntheticStoreSpec(
        clips={"synthetic": 64, "weak": 32, "unlabelled": 32, "validation": 4, "eval": 64},
        visual={"openl3": 32}, missing_fraction=0.4, strong_with_video=True, seed=5))
    train(store, learning_config(["logmel"], None), tmp_path / "audio_only")
    audio = predict(tmp_path / "audio_only", store, ["eval"], device="cpu", video_feature="openl3")
    video = audio.video_available
    scores = {"audio_only": {"with_video": frame_f1(audio, video), "without_video": frame_f1(audio, ~video)}}
    group = train_group(store, learning_config(["logmel", "openl3"], [0.5, 0.5]),
                        {seed: tmp_path / f"bi_encoder{seed}" for seed in (0, 1)})
    assert [r.steps for r in group] == [STEPS, STEPS]
    for seed in (0, 1):
        run = tmp_path / f"bi_encoder{seed}"
        bi = predict(run, store, ["eval"], device="cpu")
        ignored = predict(run, store, ["eval"], device="cpu", audio_weight=1.0)
        assert np.array_equal(bi.video_available, video)
        scores[f"bi_encoder seed {seed}"] = {"with_video": frame_f1(bi, video), "without_video": frame_f1(bi, ~video),
                                             "with_video_ignored": frame_f1(ignored, video)}
    print("frame-level F1 (best threshold):", json.dumps(scores))
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    a = scores["audio_only"]
    for seed in (0, 1):
        b = scores[f"bi_encoder seed {seed}"]
        assert b["with_video"] > a["with_video"] + 0.02, (seed, b, a)
        assert b["with_video"] > b["with_video_ignored"] + 0.04, (seed, b)
        assert b["without_video"] >= a["without_video"] - 0.08, (seed, b, a)
