"""Validation metrics during training (every `validate_every` steps): a fast evaluation of every seed's student
and teacher on the validation partition, with evaluation/'s own metric functions. Training does not import it:
whoever starts a training (the CLI, the flows, the grid) hands it `VALIDATOR` (training.train.Validator).

Fast means fixed post-processing (threshold 0.5 for clips and frames, no median filter) instead of the
per-class tuning of the final evaluation, and PSDS1 only: CBF1, SBF1, EBF1 and PSDS1 (PSDS1 does not depend on
thresholds; it uses its 50 operating points). The interpolation weights are the run's inference defaults.
This is one of the two places (with logging) where training reads values back to the host. Evaluation mode
uses batch-norm running statistics and no dropout, so validating never changes the training trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evaluation.evaluate import EvaluationConfig, Tuning, score
from evaluation.predictions import Predictions
from evaluation.psds import PSDS1
from evaluation.tuning import TunedPostprocessing
from avsed.core.labels import ClipTiming, Event
from avsed.core.store import FeatureStore
from training.config import TrainConfig
from training.data import Batch, load_clips
from training.fusion import resolve_weights
from training.group import StackedModels, call_model

VALIDATION_METRICS = ("cbf1", "sbf1", "ebf1", "psds1")
FIXED_THRESHOLD = 0.5


@dataclass
class ValidationSet:
    """Validation clips resident on the training device, with what evaluation needs about them."""

    tensors: Batch
    clip_ids: np.ndarray
    durations: np.ndarray
    events: list[list[Event]]
    classes: tuple[str, ...]
    timing: ClipTiming


def load_validation(store_path, config: TrainConfig, device: torch.device) -> ValidationSet:
    store = FeatureStore.open(store_path)
    data = load_clips(store, config.validation_partitions, config.encoders, device=device,
                      dtype=getattr(torch, config.feature_dtype), standardise_visual=config.standardise_visual)
    events = store.clip_events()
    return ValidationSet(data.tensors, data.clip_ids, data.durations, [list(events[r]) for r in data.rows],
                         store.classes, store.timing)


def fixed_tuning(n_classes: int) -> Tuning:
    fixed = TunedPostprocessing(np.full(n_classes, FIXED_THRESHOLD), np.ones(n_classes, dtype=np.int64), float("nan"))
    return Tuning(cbf1=fixed, sbf1=fixed, ebf1=fixed)


@torch.no_grad()
def _probabilities(skeleton: nn.Module, models: StackedModels, index: int, data: ValidationSet,
                   base_weights: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    params = {k: v[index] for k, v in models.params.items()}
    buffers = {k: v[index] for k, v in models.buffers.items()}
    dtype = next(iter(params.values())).dtype
    t, n = data.tensors, len(data.tensors)
    frames, clips = [], []
    for start in range(0, n, batch_size):
        b = t.take(torch.arange(start, min(start + batch_size, n), device=t.logmel.device))
        w = resolve_weights(base_weights, b.available)
        f, c = call_model(skeleton, params, buffers, b.logmel.to(dtype), [v.to(dtype) for v in b.visual],
                          b.visual_valid, w)
        frames.append(torch.sigmoid(f.float()).cpu())
        clips.append(torch.sigmoid(c.float()).cpu())
    return torch.cat(frames).numpy(), torch.cat(clips).numpy()


def validate(skeleton: nn.Module, student: StackedModels, teacher: StackedModels, data: ValidationSet,
             config: TrainConfig, batch_size: int = 256) -> list[dict[str, dict[str, float]]]:
    """Per seed: {"student": {metric: value}, "teacher": {...}}, values in [0, 1]."""
    was_training = skeleton.training
    skeleton.eval()
    base = torch.tensor(config.default_inference_weights(), device=data.tensors.logmel.device)
    video = data.tensors.available[:, 1:].any(dim=1).cpu().numpy() if data.tensors.available.shape[1] > 1 \
        else np.zeros(len(data.tensors), dtype=bool)
    evaluation = EvaluationConfig(scenarios=(PSDS1,))
    tuning = fixed_tuning(len(data.classes))
    out = []
    try:
        for g in range(student.size):
            seed_metrics = {}
            for name, models in (("student", student), ("teacher", teacher)):
                frame_probs, clip_probs = _probabilities(skeleton, models, g, data, base, batch_size)
                preds = Predictions(clip_ids=data.clip_ids, frame_probs=frame_probs, clip_probs=clip_probs,
                                    events=data.events, durations=data.durations, video_available=video,
                                    classes=data.classes, timing=data.timing)
                metrics = score(preds, tuning, evaluation).metrics
                seed_metrics[name] = {m: float(metrics[m]) for m in VALIDATION_METRICS}
            out.append(seed_metrics)
    finally:
        skeleton.train(was_training)
    return out


class FastValidation:
    """The validator training calls (training.train.Validator): `load` once per group, then the group's seeds
    validated every `validate_every` steps."""

    def load(self, store_path, config: TrainConfig, device: torch.device) -> ValidationSet:
        return load_validation(store_path, config, device)

    def __call__(self, skeleton: nn.Module, student: StackedModels, teacher: StackedModels, data: ValidationSet,
                 config: TrainConfig) -> list[dict[str, dict[str, float]]]:
        return validate(skeleton, student, teacher, data, config)


VALIDATOR = FastValidation()
