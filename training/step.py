"""The training step of a group of seeds, with no host round trip: a step reads its draws (batch indices, mixup,
interpolation weights) from device memory by a device-side counter, trains student and teacher, updates RAdam
with a device-side learning rate and sums the loss terms on the device.

Per seed (training/group.py runs it over all seeds of a group at once):
  batch = resident clips[indices] -> mixup with the drawn partners and ratio where the draw says so
  -> interpolation weights (fixed, or audio ~ U(0.25, 1) per batch) renormalised over available streams
  -> student and teacher forward -> loss terms (training/loss.py).
Then backward over the sum of the seeds' losses (seeds share no parameter, so each gets its own gradient),
RAdam, the teacher's EMA, and the counters. With `capture=True` (CUDA) the whole of it is recorded once in a
CUDA graph after a few eager warm-up steps and replayed; the host only refills the draw buffers in place every
DRAW_CHUNK steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import nn

from training.config import TrainConfig
from training.data import Batch
from training.draws import StepDraws
from training.fusion import resolve_weights
from training.group import StackedModels, call_model, over_seeds
from training.loss import mean_teacher_loss
from training.mean_teacher import ema_update_
from training.mixup import mix_pairs
from training.optimizer import RAdam, step_learning_rate

LOSS_TERMS = ("total", "strong_bce", "weak_bce", "consistency_clip", "consistency_frame")
# Summed per seed with the loss terms and logged as means: the audio interpolation weight of the batches
# (before renormalisation over available streams) and the fraction of batches that mixup mixed.
LOGGED_TERMS = LOSS_TERMS + ("audio_weight", "mixup_fraction")
CAPTURE_WARMUP_STEPS = 3  # eager steps (on a side stream) before capture, as torch.cuda.graph requires


def base_interpolation_weights(config: TrainConfig, audio_weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(S,) training weights of one batch before renormalisation: fixed, equal, or "random" (audio ~ the
    drawn U(low, high) value, the rest split equally between the visual streams, paper 3.2.2 / 3.2.3)."""
    n = len(config.encoders)
    w = config.interpolation_weights
    if n == 1:
        return torch.ones(1, dtype=dtype, device=audio_weight.device)
    if w == "random":
        a = audio_weight.to(dtype)
        return torch.cat([a.reshape(1), ((1.0 - a) / (n - 1)).reshape(1).expand(n - 1)])
    fixed = [1.0 / n] * n if w is None else [float(x) for x in w]
    return torch.tensor(fixed, dtype=dtype, device=audio_weight.device)


def prepared_batch(features: Batch, draws: StepDraws, dtype: torch.dtype) -> Batch:
    """One seed's training batch: the drawn clips, mixed with their drawn partners when the draw says so."""
    batch = features.take(draws.indices)
    batch = Batch(batch.logmel.to(dtype), [v.to(dtype) for v in batch.visual], batch.visual_valid, batch.available,
                  batch.strong.to(dtype), batch.weak.to(dtype), batch.kind)
    return mix_pairs(batch, draws.partner, draws.lam, draws.mix)


def hide_video(batch: Batch, hide: torch.Tensor) -> Batch:
    """The batch with every visual stream of the clips where `hide` (B,) holds marked missing, as a clip without
    video is: availability 0 (so its weight is 0, and a gate's input from it is zeros) and keys all valid."""
    keep = torch.cat([torch.ones_like(hide[:, None]), ~hide[:, None].expand(-1, batch.available.shape[1] - 1)], 1)
    visual_valid = [v | hide[:, None] for v in batch.visual_valid]
    return Batch(batch.logmel, batch.visual, visual_valid, batch.available & keep, batch.strong, batch.weak,
                 batch.kind)


def seed_objective(skeleton: nn.Module, features: Batch, config: TrainConfig, dtype: torch.dtype,
                   autocast: Callable[[], contextlib.AbstractContextManager]) -> Callable:
    """LOGGED_TERMS (7,) of one seed for one step (the loss terms first), as a function of that seed's state and
    draws."""
    fixed_weights = None
    if len(config.encoders) > 1 and config.interpolation_weights != "random":
        # Built once here: a tensor made from Python numbers inside the step would be a host-to-device copy.
        fixed_weights = base_interpolation_weights(config, torch.zeros((), device=features.logmel.device), dtype)

    video_dropout = config.model.gate.video_dropout if config.model.gate.mode != "none" else 0.0

    def objective(params, buffers, t_params, t_buffers, indices, mix, lam, partner, audio_weight, video_drop):
        batch = prepared_batch(features, StepDraws(indices, mix, lam, partner, audio_weight, video_drop), dtype)
        if video_dropout > 0 and len(config.encoders) > 1:
            # After mixup: the mixed clip is what the model sees, so it is the mixed clip's video that is hidden.
            batch = hide_video(batch, video_drop < video_dropout)
        if len(config.encoders) == 1:
            base = torch.ones(1, dtype=dtype, device=batch.available.device)
        else:
            base = fixed_weights if fixed_weights is not None else \
                base_interpolation_weights(config, audio_weight, dtype)
        weights = resolve_weights(base, batch.available)
        inputs = (batch.logmel, batch.visual, batch.visual_valid, weights)
        with autocast():
            s_frame, s_clip = call_model(skeleton, params, buffers, *inputs)
            t_frame, t_clip = call_model(skeleton, t_params, t_buffers, *inputs)
        terms = mean_teacher_loss(s_frame, s_clip, torch.sigmoid(t_frame.float()).detach(),
                                  torch.sigmoid(t_clip.float()).detach(), batch.strong, batch.weak, batch.kind,
                                  config.consistency_weight)
        logged = [getattr(terms, k) for k in LOSS_TERMS] + [base[0].float(), mix.float()]
        return torch.stack([t.float() for t in logged])
    return objective


@dataclass
class DeviceCounters:
    """Device-side state of the loop besides models and optimiser."""

    position: torch.Tensor  # (1,) int64: step within the current draw chunk
    loss_sums: torch.Tensor  # (G, len(LOGGED_TERMS)) float64: summed since the last log
    loss_steps: torch.Tensor  # () float64: steps summed in loss_sums


class TrainStep:
    """One training step of a group (eager, or replayed from a CUDA graph), plus what the loop needs around it."""

    def __init__(self, config: TrainConfig, skeleton: nn.Module, student: StackedModels, teacher: StackedModels,
                 optimizer: RAdam, features: Batch, draws: StepDraws, counters: DeviceCounters,
                 device: torch.device, capture: bool):
        self.config, self.student, self.teacher, self.optimizer = config, student, teacher, optimizer
        self.draws, self.counters, self.device = draws, counters, device
        dtype = student.parameter_list()[0].dtype
        bf16 = bool(config.bf16) and device.type == "cuda"
        # cache_enabled=False: autocast's weight cache cannot live inside a captured CUDA graph.
        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
        self.objective = over_seeds(seed_objective(skeleton, features, config, dtype, autocast), student.size)
        self.capture = capture and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0

    def _step(self) -> None:
        s, t, c = self.student, self.teacher, self.counters
        d = self.draws.at(c.position)
        terms = self.objective(s.params, s.buffers, t.params, t.buffers,
                               *(getattr(d, f.name) for f in fields(StepDraws)))
        terms[:, 0].sum().backward()
        lr = step_learning_rate(self.optimizer.step_count + 1.0, self.config.learning_rate,
                                self.config.lr_decay_every, self.config.lr_decay_factor)
        self.optimizer.step(lr)
        ema_update_(t.parameter_list(), s.parameter_list(), self.config.ema_decay)
        with torch.no_grad():
            c.loss_sums.add_(terms.detach().to(torch.float64))
            c.loss_steps.add_(1.0)
            c.position.add_(1)

    def _clear_grads(self) -> None:
        for p in self.student.parameter_list():
            p.grad = None

    def __call__(self) -> None:
        if not self.capture:
            self._clear_grads()
            self._step()
            return
        if self.graph is None and self.warm_steps < CAPTURE_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._clear_grads()
                self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.warm_steps += 1
            return
        if self.graph is None:
            # Gradients are None here, so the captured backward allocates them in the graph's memory pool and
            # every replay writes them afresh (no accumulation across replays).
            self._clear_grads()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
        self.graph.replay()

    def new_chunk(self, draws: StepDraws) -> None:
        """Refill the draw buffers in place (the captured graph reads these very tensors) and rewind."""
        self.draws.copy_(draws)
        self.counters.position.zero_()

    def read_losses(self) -> list[dict[str, float]]:
        """Per seed, the mean of each loss term since the last read (one host read), then reset the sums."""
        sums = self.counters.loss_sums.detach().cpu().clone()
        n = max(1.0, float(self.counters.loss_steps.cpu()))
        self.counters.loss_sums.zero_()
        self.counters.loss_steps.zero_()
        return [{k: float(v) / n for k, v in zip(LOGGED_TERMS, row)} for row in sums]
