"""Predictions of a trained checkpoint on store partitions, for evaluation.

`predict(checkpoint, store_path, partitions, ...)` returns frame- and clip-level probabilities with the clip
ids, durations, ground-truth events and video availability, so evaluation can tune post-processing, score
and split by availability. The interpolation weights are a parameter (e.g. `audio_weight=1` ignores video).
The paper evaluates the student after the last epoch; `use_teacher=True` scores the teacher instead.

To predict more than once (an evaluation predicts validation at each inference weight of its grid, then the test
partition), load the model (`load_trained`) and the clips (`load_store_clips`) once and call `predict_clips`.
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
from training.data import ClipSet, load_clips
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


@dataclass
class TrainedModel:
    """A checkpoint's network (the student, or the teacher), built once on its device in eval mode, with what it
    was trained with. An evaluation predicts with it at several weights and on several partitions: reading the
    checkpoint (optimiser state and teacher included) and the store's features again for each was most of a small
    model's evaluation, and at DESED's size rereads ~200 MB of log-mel per prediction."""

    config: TrainConfig
    network: torch.nn.Module
    device: torch.device
    provenance: dict[str, dict]  # feature -> how the store's feature the run trained on was made
    step: int


def load_trained(checkpoint: str | Path, device: str = "auto", use_teacher: bool = False) -> TrainedModel:
    ckpt = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["config"])
    dev = resolve_device(device)
    network = build_model(config.model, ckpt["visual_dims"])
    network.load_state_dict(ckpt["teacher" if use_teacher else "model"])
    network.to(dev).eval()
    return TrainedModel(config, network, dev, ckpt["provenance"], int(ckpt.get("step", -1)))


@dataclass
class StoreClips:
    """The clips of some partitions as a model reads them (its streams, standardised), with what predictions
    report beside the probabilities: ground truth, video availability, the store's classes and time grid."""

    clips: ClipSet
    events: list[list[Event]]
    video_available: np.ndarray  # (n,) bool
    classes: tuple[str, ...]
    timing: ClipTiming

    def __len__(self) -> int:
        return len(self.clips.rows)


def load_store_clips(model: TrainedModel, store_path: str | Path, partitions: Sequence[str],
                     video_feature: str | None = None) -> StoreClips:
    """Read the partitions' clips for `model`; refuses (RunMismatch) a store whose features were made otherwise
    than those the model trained on. video_feature: which store feature defines `video_available` for audio-only
    models (default: the model's first visual stream, else the first non-log-mel feature of the store)."""
    config = model.config
    store = FeatureStore.open(store_path)
    data = load_clips(store, partitions, config.encoders, device="cpu", standardise_visual=config.standardise_visual)
    for name, prov in model.provenance.items():
        if json.dumps(prov, sort_keys=True) != json.dumps(data.provenance[name], sort_keys=True):
            raise RunMismatch(f"{store_path}: feature {name!r} was made differently from the one the checkpoint "
                              f"was trained on ({prov} vs {data.provenance[name]}); predict on the store the run was "
                              f"trained on, or train on this one")
    stream_available = data.tensors.available.cpu().numpy()
    if stream_available.shape[1] > 1:
        video = stream_available[:, 1:].any(axis=1)
    else:
        name = video_feature or next((f for f in store.feature_names() if f != AUDIO_STREAM), None)
        video = store.present(name)[data.rows] if name else np.zeros(len(data.rows), dtype=bool)
    all_events = store.clip_events()
    return StoreClips(data, [all_events[r] for r in data.rows], video, store.classes, store.timing)


@torch.no_grad()
def predict_clips(model: TrainedModel, clips: StoreClips, interpolation_weights: Sequence[float] | None = None,
                  audio_weight: float | None = None, batch_size: int = 256) -> Predictions:
    """`model`'s probabilities on loaded clips at the given interpolation weights (default: the run's own)."""
    base = torch.tensor(inference_weights(model.config, interpolation_weights, audio_weight))
    dev, t = model.device, clips.clips.tensors
    n = len(t)
    frames, clip_probs, weights = [], [], []
    for s in range(0, n, batch_size):
        b = t.take(torch.arange(s, min(s + batch_size, n))).to(dev)
        w = resolve_weights(base.to(dev), b.available)
        f, c = model.network(b.logmel.float(), [v.float() for v in b.visual], b.visual_valid, w)
        frames.append(torch.sigmoid(f.float()).cpu())
        clip_probs.append(torch.sigmoid(c.float()).cpu())
        weights.append(w.cpu())
    data = clips.clips
    return Predictions(
        clip_ids=data.clip_ids, partitions=data.partitions, frame_probs=torch.cat(frames).numpy(),
        clip_probs=torch.cat(clip_probs).numpy(), video_available=clips.video_available,
        stream_available=t.available.cpu().numpy(), weights=torch.cat(weights).numpy(), durations=data.durations,
        events=clips.events, classes=clips.classes, timing=clips.timing, encoders=list(model.config.encoders))


def predict(checkpoint: str | Path, store_path: str | Path, partitions: Sequence[str] = ("validation", "eval"),
            interpolation_weights: Sequence[float] | None = None, audio_weight: float | None = None,
            use_teacher: bool = False, batch_size: int = 256, device: str = "auto",
            video_feature: str | None = None) -> Predictions:
    """A checkpoint's predictions on store partitions, in one call (`load_trained`, `load_store_clips`,
    `predict_clips`: what to use to predict more than once). video_feature: see `load_store_clips`."""
    model = load_trained(checkpoint, device, use_teacher)
    return predict_clips(model, load_store_clips(model, store_path, partitions, video_feature),
                         interpolation_weights, audio_weight, batch_size)
