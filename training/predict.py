"""Predictions of a trained checkpoint on store partitions, for evaluation.

`predict(checkpoint, store_path, partitions, ...)` returns frame- and clip-level probabilities with the clip
ids, durations, ground-truth events and video availability, so evaluation can tune post-processing, score
and split by availability. The interpolation weights are a parameter (e.g. `audio_weight=1` ignores video).
The paper evaluates the student after the last epoch; `use_teacher=True` scores the teacher instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avsed.core.labels import ClipTiming, Event
from avsed.core.store import FeatureStore
from training.checkpoint import RunMismatch, read_checkpoint
from training.config import AUDIO_STREAM, TrainConfig
from training.data import load_clips
from training.fusion import resolve_weights
from training.models import build_model
from training.train import CHECKPOINT, resolve_device


@dataclass
class Predictions:
    clip_ids: np.ndarray  # (n,) str
    partitions: np.ndarray  # (n,) str
    frame_probs: np.ndarray  # (n, 64, C) float32
    clip_probs: np.ndarray  # (n, C) float32
    video_available: np.ndarray  # (n,) bool: any visual stream (or the store's video feature) present
    stream_available: np.ndarray  # (n, S) bool per encoder stream
    weights: np.ndarray  # (n, S) interpolation weights actually used per clip
    durations: np.ndarray  # (n,) seconds
    events: list[list[Event]]  # ground truth per clip (empty for weak/unlabelled)
    classes: tuple[str, ...]
    timing: ClipTiming
    encoders: list[str]


def inference_weights(config: TrainConfig, interpolation_weights: Sequence[float] | None,
                      audio_weight: float | None) -> list[float]:
    n = len(config.encoders)
    if interpolation_weights is not None and audio_weight is not None:
        raise ValueError("give interpolation_weights or audio_weight, not both")
    if interpolation_weights is not None:
        if len(interpolation_weights) != n:
            raise ValueError(f"interpolation_weights {list(interpolation_weights)} need {n} entries ({config.encoders})")
        return [float(x) for x in interpolation_weights]
    if audio_weight is not None:
        if n == 1:
            return [1.0]
        return [float(audio_weight)] + [(1.0 - float(audio_weight)) / (n - 1)] * (n - 1)
    return config.default_inference_weights()


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise RunMismatch(f"{path}: no checkpoint; point at a trained run's directory or its {CHECKPOINT}")
    return read_checkpoint(path)


@torch.no_grad()
def predict(checkpoint: str | Path, store_path: str | Path, partitions: Sequence[str] = ("validation", "eval"),
            interpolation_weights: Sequence[float] | None = None, audio_weight: float | None = None,
            use_teacher: bool = False, batch_size: int = 256, device: str = "auto",
            video_feature: str | None = None) -> Predictions:
    """video_feature: which store feature defines `video_available` for audio-only models (default: the
    model's first visual stream, else the first non-log-mel feature of the store)."""
    ckpt = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["config"])
    dev = resolve_device(device)
    store = FeatureStore.open(store_path)
    data = load_clips(store, partitions, config.encoders, device="cpu", standardise_visual=config.standardise_visual)
    for name, prov in ckpt["provenance"].items():
        if json.dumps(prov, sort_keys=True) != json.dumps(data.provenance[name], sort_keys=True):
            raise RunMismatch(f"{store_path}: feature {name!r} was made differently from the one the checkpoint "
                              f"was trained on ({prov} vs {data.provenance[name]}); predict on the store the run was "
                              f"trained on, or train on this one")
    model = build_model(config.model, ckpt["visual_dims"])
    model.load_state_dict(ckpt["teacher" if use_teacher else "model"])
    model.to(dev).eval()
    base = torch.tensor(inference_weights(config, interpolation_weights, audio_weight))
    t = data.tensors
    n = len(t)
    frames, clips, weights = [], [], []
    for s in range(0, n, batch_size):
        b = t.take(torch.arange(s, min(s + batch_size, n))).to(dev)
        w = resolve_weights(base.to(dev), b.available)
        f, c = model(b.logmel.float(), [v.float() for v in b.visual], b.visual_valid, w)
        frames.append(torch.sigmoid(f.float()).cpu())
        clips.append(torch.sigmoid(c.float()).cpu())
        weights.append(w.cpu())
    stream_available = t.available.cpu().numpy()
    if stream_available.shape[1] > 1:
        video = stream_available[:, 1:].any(axis=1)
    else:
        name = video_feature or next((f for f in store.feature_names() if f != AUDIO_STREAM), None)
        video = store.present(name)[data.rows] if name else np.zeros(n, dtype=bool)
    all_events = store.clip_events()
    return Predictions(
        clip_ids=data.clip_ids, partitions=data.partitions, frame_probs=torch.cat(frames).numpy(),
        clip_probs=torch.cat(clips).numpy(), video_available=video, stream_available=stream_available,
        weights=torch.cat(weights).numpy(), durations=data.durations,
        events=[all_events[r] for r in data.rows], classes=store.classes, timing=store.timing,
        encoders=list(config.encoders))
