"""The training loop: mean-teacher training of a multi-encoder model on the cached feature store.

`train(store_path, config, out_dir, resume=False)` reads only the store, writes `config.yaml`, a
JSON-lines log, TensorBoard event files and `checkpoint.pt` (student, teacher, optimiser, scheduler, step,
RNG states, config, feature provenance). With `resume=True` it continues from `checkpoint.pt` and reaches
the same parameters as an uninterrupted run (the batch sampler is a pure function of the step; the
dropout and mixup RNG states are checkpointed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.store import FeatureStore
from training.config import TrainConfig
from training.data import BatchComposer, ClipSet, load_clips
from training.fusion import resolve_weights
from training.loss import mean_teacher_loss
from training.mean_teacher import ema_update, make_teacher
from training.mixup import maybe_mixup
from training.models import build_model

CHECKPOINT = "checkpoint.pt"
# Settings that may change between an interrupted run and its resumption without changing the result.
# The schedule length may grow: nothing but the loop end depends on it.
_RESUMABLE_KEYS = {"device", "progress", "log_every", "checkpoint_every", "epochs", "steps_per_epoch"}


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    steps: int
    last_losses: dict[str, float]
    samples_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def as_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.validate()
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    return TrainConfig.load(config)


def sample_training_weights(config: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Base interpolation weights (S,) of one batch (renormalised per clip later by availability)."""
    n = len(config.encoders)
    w = config.interpolation_weights
    if n == 1:
        return torch.ones(1)
    if w == "random":
        a = float(rng.uniform(config.random_audio_low, config.random_audio_high))
        return torch.tensor([a] + [(1.0 - a) / (n - 1)] * (n - 1))
    if w is None:
        return torch.full((n,), 1.0 / n)
    return torch.tensor([float(x) for x in w])


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": rng.bit_generator.state}


def _set_rng_state(state: dict[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    rng.bit_generator.state = state["numpy"]


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def load_training_data(store_path: str | Path, config: TrainConfig, device: torch.device) -> ClipSet:
    store = FeatureStore.open(store_path)
    kinds = {p: "strong" for p in config.strong_partitions}
    kinds.update({p: "weak" for p in config.weak_partitions})
    kinds.update({p: "unlabelled" for p in config.unlabelled_partitions})
    dtype = getattr(torch, config.feature_dtype)
    return load_clips(store, list(kinds), config.encoders, kinds=kinds, device=device, dtype=dtype,
                      standardise_visual=config.standardise_visual)


def train(store_path: str | Path, config: TrainConfig | dict | str | Path | None, out_dir: str | Path,
          resume: bool = False, stop_after: int | None = None, data: ClipSet | None = None,
          progress_desc: str = "train", progress_position: int | None = None) -> TrainResult:
    """Train (or resume) a run. `stop_after` ends the loop early at that step with a checkpoint, as an
    interruption would (used by tests and benchmarks); `data` reuses already loaded tensors;
    `progress_desc` / `progress_position` label and place the progress bar (runs side by side)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    checkpoint = None
    if resume and ckpt_path.exists():
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        stored = TrainConfig.from_dict(checkpoint["config"])
        if config is not None:
            given = as_config(config)
            diff = {k for k, v in given.to_dict().items() if stored.to_dict()[k] != v} - _RESUMABLE_KEYS
            if diff:
                raise ValueError(f"{ckpt_path}: cannot resume with a different config (changed: {sorted(diff)})")
            config = given
        else:
            config = stored
    elif config is None:
        raise ValueError("train() needs a config unless it resumes from a checkpoint")
    config = as_config(config)
    config.save(out_dir / "config.yaml")
    device = resolve_device(config.device)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if data is None:
        data = load_training_data(store_path, config, device)
    if checkpoint is not None:
        for name, prov in checkpoint["provenance"].items():
            if json.dumps(prov, sort_keys=True) != json.dumps(data.provenance.get(name), sort_keys=True):
                raise ValueError(f"{store_path}: feature {name!r} provenance differs from the checkpoint's; "
                                 f"refusing to mix features made differently")
    tensors = data.tensors
    composer = BatchComposer(tensors.kind.cpu().numpy(), [config.batch_strong, config.batch_weak,
                                                          config.batch_unlabelled], config.seed)
    visual_dims = [int(v.shape[-1]) for v in tensors.visual]
    student = build_model(config.model, visual_dims).to(device)
    teacher = make_teacher(student)
    optimizer = torch.optim.RAdam(student.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay_factor)
    step = 0
    if checkpoint is not None:
        student.load_state_dict(checkpoint["model"])
        teacher.load_state_dict(checkpoint["teacher"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step = int(checkpoint["step"])
        _set_rng_state(checkpoint["rng"], rng)
    forward_student = torch.compile(student) if config.compile else student
    forward_teacher = torch.compile(teacher) if config.compile else teacher

    log_path = out_dir / "log.jsonl"
    # Drop log lines written after the checkpoint we resume from: they will be written again.
    lines = log_path.read_text().splitlines() if (resume and log_path.exists()) else []
    history = [json.loads(x) for x in lines if json.loads(x)["step"] <= step]
    log_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step if step else None)

    def save(at_step: int) -> None:
        _save_checkpoint(ckpt_path, {
            "model": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": at_step, "rng": _rng_state(rng),
            "config": config.to_dict(), "encoders": config.encoders, "visual_dims": visual_dims,
            "provenance": data.provenance, "store": str(store_path), "format": 1})

    total = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda")
    student.train()
    teacher.train()  # the teacher sees dropout noise too (mean teacher); no gradients
    last: dict[str, float] = {}
    t0, start_step = time.perf_counter(), step
    with tqdm(total=total, initial=step, desc=progress_desc, position=progress_position,
              disable=not config.progress, dynamic_ncols=True) as bar, \
            open(log_path, "a") as log:
        while step < total:
            idx = torch.from_numpy(composer.indices(step)).to(device)
            batch = tensors.take(idx)
            base = sample_training_weights(config, rng)
            batch, _ = maybe_mixup(batch, composer.slices, rng, config.mixup_rate, config.mixup_alpha)
            weights = resolve_weights(base.to(device), batch.available)
            with autocast:
                s_frame, s_clip = forward_student(batch.logmel, batch.visual, batch.visual_valid, weights)
                with torch.no_grad():
                    t_frame, t_clip = forward_teacher(batch.logmel, batch.visual, batch.visual_valid, weights)
            terms = mean_teacher_loss(s_frame, s_clip, torch.sigmoid(t_frame.float()), torch.sigmoid(t_clip.float()),
                                      batch.strong, batch.weak, batch.kind, config.consistency_weight)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            scheduler.step()
            ema_update(teacher, student, config.ema_decay)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                last = terms.as_floats()
                entry = {"step": step, "lr": scheduler.get_last_lr()[0], **last,
                         "samples_per_second": (step - start_step) * composer.batch_size / (time.perf_counter() - t0)}
                history.append(entry)
                log.write(json.dumps(entry) + "\n")
                log.flush()
                for k, v in entry.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{last['total']:.4f}")
            if step % config.checkpoint_every == 0 and step < total:
                save(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    save(step)
    writer.close()
    rate = (step - start_step) * composer.batch_size / elapsed if step > start_step else 0.0
    return TrainResult(out_dir=out_dir, checkpoint=ckpt_path, steps=step, last_losses=last,
                       samples_per_second=rate, history=history)
