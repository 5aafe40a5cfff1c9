"""The training step of a group of seeds, with no host round trip: a step reads its draws (batch indices, mixup,
interpolation weights) from device memory by a device-side counter, trains student and teacher, updates RAdam
with a device-side learning rate and sums the loss terms on the device.

Per seed (training/group.py runs it over all seeds of a group at once):
  batch = resident clips[indices] -> mixup with the drawn partners and ratio where the draw says so
  -> interpolation weights (fixed, or audio ~ U(0.25, 1) per batch) renormalised over available streams
  -> student and teacher forward -> loss terms (training/loss.py).
Then backward over the sum of the seeds' losses (seeds share no parameter, so each gets its own gradient),
RAdam, the teacher's EMA, and the counters. With `compile=True` Inductor (torch.compile) compiles the seeds'
objective (forward, and through AOTAutograd its backward) and the update (RAdam, EMA, counters) into fused
kernels; with `capture=True` (CUDA) the whole of it is recorded once in a CUDA graph after a few warm-up steps
(the compiled kernels inside: not mode="reduce-overhead", whose own graphs would clash with this capture) and
replayed; the host only refills the draw buffers in place every DRAW_CHUNK steps.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

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
INDUCTOR_CACHE = ".inductor"  # Inductor's on-disk caches, under the run root (training/train.py)
# torch.compile's backend. Tests on the CPU use "aot_eager" (the same graphs, forward and backward, through Dynamo
# and AOTAutograd, run by eager kernels) where Inductor's C++ builds would take minutes.
COMPILE_BACKEND = "inductor"


@contextlib.contextmanager
def inductor_cache(path: Path | None) -> Iterator[None]:
    """Inductor's on-disk caches (compiled graphs, kernels, autotuning) under `path` for what runs inside, so the
    runs of one root reuse one another's compilations (a seed, or a later group of the same shape, loads them
    instead of compiling again). The process's own setting is restored afterwards (Inductor reads the variable
    each time it looks for its cache, and sets it to its default when it finds it unset, so unset is restored too;
    Inductor's own threads may set that default again later)."""
    if path is None:
        yield
        return
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def compiled(fn: Callable) -> Callable:
    """`fn` compiled by Inductor as one graph (fullgraph: a graph break is a compile failure, so the fallback says
    so instead of running half-compiled), for fixed shapes (a group's shapes never change)."""
    return torch.compile(fn, backend=COMPILE_BACKEND, fullgraph=True, dynamic=False)


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
    loss_steps: torch.Tensor  # (1,) float64: steps summed in loss_sums (not 0-dim: training/optimizer.RAdam says why)


class TrainStep:
    """One training step of a group (eager or compiled, replayed from a CUDA graph or not), plus what the loop
    needs around it. `compile_seconds`: the first compiled step's wall time (compiling, or loading from Inductor's
    cache, plus one step); `compile_error`: why the step fell back to eager, if it did."""

    def __init__(self, config: TrainConfig, skeleton: nn.Module, student: StackedModels, teacher: StackedModels,
                 optimizer: RAdam, features: Batch, draws: StepDraws, counters: DeviceCounters,
                 device: torch.device, capture: bool, compile: bool = False, cache_dir: Path | None = None):
        self.config, self.student, self.teacher, self.optimizer = config, student, teacher, optimizer
        self.draws, self.counters, self.device = draws, counters, device
        dtype = student.parameter_list()[0].dtype
        bf16 = bool(config.bf16) and device.type == "cuda"
        # cache_enabled=False: autocast's weight cache cannot live inside a captured CUDA graph.
        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
        self.eager_objective = over_seeds(seed_objective(skeleton, features, config, dtype, autocast), student.size)
        self.objective, self.update = self.eager_objective, self._update
        self.compile, self.cache_dir = compile, cache_dir
        self.compile_seconds: float | None = None
        self.compile_error: str | None = None
        if compile:
            self.objective, self.update = compiled(self.eager_objective), compiled(self._update)
        self.capture = capture and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0
        self.steps_run = 0

    def _update(self, terms: torch.Tensor, lr_step: torch.Tensor) -> None:
        """RAdam, the teacher's EMA and the counters, after the backward."""
        s, t, c = self.student, self.teacher, self.counters
        lr = step_learning_rate(lr_step, self.config.learning_rate, self.config.lr_decay_every,
                                self.config.lr_decay_factor)
        self.optimizer.step(lr)
        ema_update_(t.parameter_list(), s.parameter_list(), self.config.ema_decay)
        with torch.no_grad():
            c.loss_sums.add_(terms.detach().to(torch.float64))
            c.loss_steps.add_(1.0)
            c.position.add_(1)

    def _step(self) -> None:
        s, t, c = self.student, self.teacher, self.counters
        d = self.draws.at(c.position)
        terms = self.objective(s.params, s.buffers, t.params, t.buffers,
                               *(getattr(d, f.name) for f in fields(StepDraws)))
        terms[:, 0].sum().backward()
        self.update(terms.detach(), self.optimizer.step_count + 1.0)

    def _mutable_state(self) -> list[torch.Tensor]:
        o, c = self.optimizer, self.counters
        return [*self.student.params.values(), *self.student.buffers.values(), *self.teacher.params.values(),
                *self.teacher.buffers.values(), *o.exp_avg, *o.exp_avg_sq, o.step_count, c.position, c.loss_sums,
                c.loss_steps]

    def _first_compiled_step(self) -> None:
        """The first step compiles (or loads from the cache). If compiling fails, the state is put back as it was,
        one warning line says why, and this and every later step run eagerly."""
        state = self._mutable_state()
        saved = [x.detach().clone() for x in state]
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        start = time.perf_counter()
        try:
            with inductor_cache(self.cache_dir):
                self._step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            self.compile_seconds = time.perf_counter() - start
            return
        except Exception as exc:  # whatever Inductor raises: the eager step is the same arithmetic
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            self.compile_error = reason[:300]
        with torch.no_grad():
            for x, y in zip(state, saved):
                x.copy_(y)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], self.device)
        warnings.warn(f"compile: the training step could not be compiled ({self.compile_error}); training "
                      f"eagerly (set compile: false to skip compiling)", stacklevel=2)
        self.objective, self.update, self.compile = self.eager_objective, self._update, False
        self._clear_grads()
        self._step()

    def _run_step(self) -> None:
        if self.compile and self.steps_run == 0:
            self._first_compiled_step()
        elif self.compile:
            with inductor_cache(self.cache_dir):  # a recompilation, if a guard ever fails, caches there too
                self._step()
        else:
            self._step()
        self.steps_run += 1

    def _clear_grads(self) -> None:
        for p in self.student.parameter_list():
            p.grad = None

    def __call__(self) -> None:
        if not self.capture:
            self._clear_grads()
            self._run_step()
            return
        if self.graph is None and self.warm_steps < CAPTURE_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._clear_grads()
                self._run_step()
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


class StreamSteps:
    """`seeds_mode: streams`: the seeds of a group as single-seed steps (each its own CUDA graph when captured),
    launched on one CUDA stream per seed so that their kernels overlap, all reading the same resident features.
    The seeds' tensors are slices of the group's stacked ones, so checkpoints, loss sums and validation read them
    exactly as for a vmap group. On the CPU the steps run one after another."""

    def __init__(self, steps: list[TrainStep], counters: DeviceCounters, device: torch.device):
        self.steps, self.counters, self.device = steps, counters, device
        self.streams = [torch.cuda.Stream(device) for _ in steps] if device.type == "cuda" else []

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        return self.steps[0].graph

    @property
    def compile_seconds(self) -> float | None:
        times = [s.compile_seconds for s in self.steps if s.compile_seconds is not None]
        return sum(times) if times else None

    @property
    def compile_error(self) -> str | None:
        return next((s.compile_error for s in self.steps if s.compile_error), None)

    def __call__(self) -> None:
        if not self.streams:
            for step in self.steps:
                step()
            return
        main = torch.cuda.current_stream(self.device)
        for step, stream in zip(self.steps, self.streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                step()
        for stream in self.streams:
            main.wait_stream(stream)

    def new_chunk(self, draws: StepDraws) -> None:
        for k, step in enumerate(self.steps):
            step.new_chunk(seed_draws(draws, k))

    def read_losses(self) -> list[dict[str, float]]:
        out = TrainStep.read_losses(self)  # type: ignore[arg-type]  # the group's sums: every seed's row
        for step in self.steps:
            step.counters.loss_steps.zero_()
        return out


def seed_draws(draws: StepDraws, k: int) -> StepDraws:
    """Seed `k`'s draws of a group's (steps, seeds, ...) draws, as a group of one: (steps, 1, ...), own memory."""
    return StepDraws(*(getattr(draws, f.name)[:, k:k + 1].contiguous() for f in fields(StepDraws)))


def stream_steps(config: TrainConfig, skeleton: nn.Module, student: StackedModels, teacher: StackedModels,
                 optimizer: RAdam, features: Batch, draws: StepDraws, counters: DeviceCounters, device: torch.device,
                 capture: bool, compile: bool, cache_dir: Path | None) -> StreamSteps:
    """One single-seed TrainStep per seed of a stacked group, on slices of its tensors: parameters as leaves that
    share the stacked storage (updates in place reach the group's tensors), optimiser moments and loss sums as
    views. The seeds share one objective (one compilation)."""
    steps: list[TrainStep] = []
    for k in range(student.size):
        def part(models: StackedModels, grad: bool) -> StackedModels:
            params = {n: p[k:k + 1].detach().requires_grad_(grad) for n, p in models.params.items()}
            return StackedModels(params, {n: b[k:k + 1] for n, b in models.buffers.items()}, models.state_names)
        s, t = part(student, True), part(teacher, False)
        # Seed 0 shares the group's step count (what checkpoints read); all seeds step together.
        count = optimizer.step_count if k == 0 else optimizer.step_count.clone()
        opt = RAdam(s.parameter_list(), [m[k:k + 1] for m in optimizer.exp_avg],
                    [v[k:k + 1] for v in optimizer.exp_avg_sq], count, optimizer.betas, optimizer.eps)
        own = DeviceCounters(counters.position if k == 0 else counters.position.clone(),
                             counters.loss_sums[k:k + 1],
                             counters.loss_steps if k == 0 else counters.loss_steps.clone())
        step = TrainStep(config, skeleton, s, t, opt, features, seed_draws(draws, k), own, device, capture,
                         compile=False, cache_dir=cache_dir)
        if steps:
            step.eager_objective = steps[0].eager_objective
        if compile:
            step.compile = True
            step.objective = compiled(step.eager_objective) if not steps else steps[0].objective
            step.update = compiled(step._update)
        steps.append(step)
    return StreamSteps(steps, counters, device)
