"""Learning check: on a synthetic store whose video carries what the audio lacks (pairs of classes share one
log-mel band; the visual embedding is a noisy one-hot of the active classes), a short CPU run of the
bi-encoder model beats the audio-only model on frame-level F1 on clips with video, and is not worse on
clips without video."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.labels import LabelEncoder
from training.predict import predict
from training.synthetic_store import SyntheticStoreSpec, build_synthetic_store
from training.train import train

from .conftest import small_config

STEPS = 160


def frame_f1(pred, selection: np.ndarray) -> float:
    encoder = LabelEncoder(pred.classes, pred.timing)
    truth = np.stack([encoder.encode_strong(e) for e in pred.events])[selection] > 0.5
    decided = pred.frame_probs[selection] > 0.5
    tp = np.count_nonzero(decided & truth)
    return 2.0 * tp / max(1, np.count_nonzero(decided) + np.count_nonzero(truth))


@pytest.mark.slow
def test_bi_encoder_beats_audio_only_where_video_exists(tmp_path):
    store = tmp_path / "features.zarr"
    # Strong clips carry video here (unlike DESED's synthetic soundscapes) so a short run can learn from it.
    build_synthetic_store(store, SyntheticStoreSpec(
        clips={"synthetic": 64, "weak": 32, "unlabelled": 32, "validation": 4, "eval": 64},
        visual={"openl3": 32}, missing_fraction=0.4, strong_with_video=True, seed=5))
    scores = {}
    for name, encoders, weights in (("audio_only", ["logmel"], None), ("bi_encoder", ["logmel", "openl3"], [0.5, 0.5])):
        # Short-run settings: a narrower CNN without dropout, lr 3e-3 and a faster teacher (EMA 0.95; with the
        # paper's 0.999 the teacher hardly leaves its initialisation in 160 steps and the consistency term
        # pulls the student back to it). Everything else as in the paper.
        config = small_config(encoders, steps=STEPS, interpolation_weights=weights, batch_strong=8, batch_weak=4,
                              batch_unlabelled=4, log_every=20, learning_rate=3e-3, ema_decay=0.95)
        config.model.cnn.dropout = 0.0
        config.model.cnn.filters = [4, 8, 16, 32, 32, 32, 32]
        train(store, config, tmp_path / name)
        pred = predict(tmp_path / name, store, ["eval"], device="cpu", video_feature="openl3")
        scores[name] = {"with_video": frame_f1(pred, pred.video_available),
                        "without_video": frame_f1(pred, ~pred.video_available)}
    print("frame-level F1:", json.dumps(scores))
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    assert scores["bi_encoder"]["with_video"] > scores["audio_only"]["with_video"] + 0.03
    assert scores["bi_encoder"]["without_video"] >= scores["audio_only"]["without_video"] - 0.05
