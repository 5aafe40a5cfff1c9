"""The training loop: mean-teacher training of multi-encoder models on the cached feature store, one seed or
many seeds of one configuration at once.

`train(store, config, out_dir)` trains one run (seed `config.seed`); `train_group(store, config, runs)` trains
the seeds of one configuration together in one process (`runs`: seed -> run directory): the store is read once,
the features sit in (GPU) memory once and the seeds' models are stacked (training/group.py). Every seed writes
its own run directory, exactly as a run of its own: `config.yaml`, `log.jsonl`, TensorBoard event files and
`checkpoint.pt`. A seed's batches, mixup and interpolation-weight draws are the same alone or in a group
(training/draws.py); with dropout 0 its parameters agree to rounding.

With `resume=True` a run (or group) continues from its checkpoints and reaches the same parameters as an
uninterrupted run: draws are pure functions of (seed, step); the optimiser state, the torch RNG (dropout) and the
loss sums since the last log line are checkpointed. Seeds of a group whose checkpoints are at different steps
(e.g. seeds added to a finished group) are trained in sub-groups by step; finished seeds are not trained again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from tqdm import tqdm

from avsed.core.store import FeatureStore
from training.checkpoint import (CHECKPOINT, FORMAT, RunMismatch, StoreChanged, load_checkpoints, read_checkpoint,
                                 save_checkpoints)
from training.attention import MultiHeadAttention
from training.cnn import CNNFrontEnd
from training.config import TrainConfig, TrainConfigError
from training.data import ClipSet, identity_changes, load_clips
from training.draws import DRAW_CHUNK, BatchSchedule, StepDraws, draw_chunk, stream_seed
from training.group import StackedModels, build_seed_model, group_size, skeleton_of
from training.mean_teacher import make_teacher
from training.optimizer import RAdam
from training.step import (INDUCTOR_CACHE, LOGGED_TERMS, LOSS_TERMS, DeviceCounters, StreamSteps, TrainStep,
                           stream_steps)

__all__ = ["CHECKPOINT", "TrainResult", "TrainingGroup", "train", "train_group", "prepare_group", "resolve_device",
           "as_config", "load_training_data"]

# Settings that may change between an interrupted run and its resumption without changing the result.
# The schedule length may grow: nothing but the loop end depends on it. Validation only reads the models.
_RESUMABLE_KEYS = {"device", "progress", "log_every", "checkpoint_every", "epochs", "steps_per_epoch",
                   "validate_every", "validation_partitions", "group_seeds", "compile", "capture", "seeds_mode"}
_DROPOUT_STREAM = 3  # generator-seed key of the torch RNG that drives dropout (training/draws.stream_seed)


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    steps: int
    last_losses: dict[str, float]
    samples_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    trained_steps: int = 0  # steps this call trained (0 when the run was already complete)


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


def load_training_data(store_path: str | Path, config: TrainConfig, device: torch.device) -> ClipSet:
    store = FeatureStore.open(store_path)
    kinds = {p: "strong" for p in config.strong_partitions}
    kinds.update({p: "weak" for p in config.weak_partitions})
    kinds.update({p: "unlabelled" for p in config.unlabelled_partitions})
    dtype = getattr(torch, config.feature_dtype)
    return load_clips(store, list(kinds), config.encoders, kinds=kinds, device=device, dtype=dtype,
                      standardise_visual=config.standardise_visual)


class Validator(Protocol):
    """What validates the seeds during training (every `validate_every` steps), handed in by the caller:
    evaluation.validation.VALIDATOR (training does not import evaluation)."""

    def load(self, store_path, config: TrainConfig, device: torch.device) -> Any: ...

    def __call__(self, skeleton: torch.nn.Module, student: StackedModels, teacher: StackedModels, data: Any,
                 config: TrainConfig) -> list[dict[str, dict[str, float]]]: ...


def train(store_path: str | Path, config: TrainConfig | dict | str | Path | None, out_dir: str | Path,
          resume: bool = False, stop_after: int | None = None, data: ClipSet | None = None,
          progress_desc: str = "train", progress_position: int | None = None,
          accept_changed_store: bool = False, validator: Validator | None = None) -> TrainResult:
    """Train (or resume) one run. `stop_after` ends the loop early at that step with a checkpoint, as an
    interruption would (used by tests and benchmarks); `data` reuses already loaded tensors;
    `progress_desc` / `progress_position` label and place the progress bar (runs side by side). With
    `config=None` a resumed run uses its checkpoint's config. A resume refuses a store whose training data changed
    since the checkpoint (`_check_store`) unless `accept_changed_store`."""
    out_dir = Path(out_dir)
    if config is None:
        if not (resume and (out_dir / CHECKPOINT).exists()):
            raise RunMismatch("train() needs a config unless it resumes from a checkpoint")
        seed = int(read_checkpoint(out_dir / CHECKPOINT)["config"]["seed"])
    else:
        config = as_config(config)
        seed = config.seed
    return train_group(store_path, config, {seed: out_dir}, resume=resume, stop_after=stop_after, data=data,
                       progress_desc=progress_desc, progress_position=progress_position,
                       accept_changed_store=accept_changed_store, validator=validator)[0]


def train_group(store_path: str | Path, config: TrainConfig | dict | str | Path | None,
                runs: Mapping[int, str | Path], resume: bool = False, stop_after: int | None = None,
                data: ClipSet | None = None, progress_desc: str = "train",
                progress_position: int | None = None, accept_changed_store: bool = False,
                validator: Validator | None = None) -> list[TrainResult]:
    """Train the seeds of one configuration together; `runs` maps each seed to its run directory. Returns one
    result per seed, in the order of `runs`. `config=None` (with resume) takes each run's checkpoint config."""
    seeds = [int(s) for s in runs]
    if len(set(seeds)) != len(seeds):
        raise RunMismatch(f"seeds listed twice: {seeds}")
    dirs = [Path(runs[s]) for s in runs]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    checkpoints = load_checkpoints(dirs) if resume else [None] * len(dirs)
    configs = [_run_config(config, ckpt, seed, d) for seed, d, ckpt in zip(seeds, dirs, checkpoints)]
    shared = {json.dumps({**c.to_dict(), "seed": 0}, sort_keys=True) for c in configs}
    if len(shared) != 1:
        raise RunMismatch(f"the runs {[str(d) for d in dirs]} hold different configurations; a group trains the seeds "
                         f"of one configuration (resume them separately)")
    device = resolve_device(configs[0].device)
    configs = [c.resolved(device.type) for c in configs]
    template = configs[0]
    total = template.total_steps if stop_after is None else min(stop_after, template.total_steps)
    # Seeds whose checkpoints are at the same step train together (the common case: all of them), at most
    # `group_seeds` at a time (a group's memory grows with its seeds).
    by_step: dict[int, list[int]] = {}
    for k, ckpt in enumerate(checkpoints):
        by_step.setdefault(0 if ckpt is None else int(ckpt["step"]), []).append(k)
    if data is None and min(by_step) < total:  # finished runs need no features
        data = load_training_data(store_path, template, device)
    for d, ckpt in zip(dirs, checkpoints):
        if ckpt is not None and data is not None:
            _check_provenance(ckpt, data, store_path, d)
            if int(ckpt["step"]) < total:  # finished runs are not trained again: their data does not matter
                _check_store(ckpt, data, store_path, d, accept_changed_store)
    results: dict[int, TrainResult] = {}
    cohorts: list[list[int]] = []
    size = group_size(template, device, len(seeds))
    for _, same_step in sorted(by_step.items()):
        cohorts += [same_step[i: i + size] for i in range(0, len(same_step), size)]
    for members in cohorts:
        cohort = _Cohort(store_path, template, [seeds[k] for k in members], [dirs[k] for k in members],
                         [checkpoints[k] for k in members], data, device, validator)
        for k, result in zip(members, cohort.run(total, progress_desc, progress_position)):
            results[k] = result
    return [results[k] for k in range(len(seeds))]


def _run_config(given: TrainConfig | dict | str | Path | None, checkpoint: dict | None, seed: int,
                out_dir: Path) -> TrainConfig:
    if checkpoint is None:
        if given is None:
            raise RunMismatch(f"{out_dir}: no checkpoint to resume and no config given")
        config = as_config(given)
    else:
        if checkpoint.get("format", 1) != FORMAT:
            raise RunMismatch(f"{out_dir / CHECKPOINT}: written by an earlier version (checkpoint format "
                              f"{checkpoint.get('format', 1)}, this one resumes format {FORMAT}); it can still be "
                              f"evaluated, but train into a new directory to continue training")
        stored = TrainConfig.from_dict(_as_trained(checkpoint["config"]))
        if given is None:
            config = stored
        else:
            config = as_config(given)
            # The stored config is the resolved one (bf16/tf32 decided for its device): compare like with like.
            device_type = resolve_device(stored.device).type
            a = config.resolved(device_type).to_dict()
            b = stored.resolved(device_type).to_dict()
            diff = {k for k in a if a[k] != b[k]} - _RESUMABLE_KEYS - {"seed"}
            if seed != stored.seed:
                diff.add("seed")
            if diff:
                raise RunMismatch(f"{out_dir / CHECKPOINT}: cannot resume with a different config (changed: "
                                 f"{sorted(diff)}); train into a new directory instead")
    config = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
    return config


def _as_trained(stored: dict) -> dict:
    """A checkpoint's config with what newer defaults would change filled in as the run was trained: a gated run
    written before `model.gate.video_dropout` existed trained without it (a resume with the new default then
    refuses, naming the change, instead of silently training on differently)."""
    gate = stored.get("model", {}).get("gate", {})
    if gate.get("mode", "none") != "none" and "video_dropout" not in gate:
        stored = {**stored, "model": {**stored["model"], "gate": {**gate, "video_dropout": 0.0}}}
    return stored


def _check_provenance(checkpoint: dict, data: ClipSet, store_path, out_dir: Path) -> None:
    for name, prov in checkpoint["provenance"].items():
        if json.dumps(prov, sort_keys=True) != json.dumps(data.provenance.get(name), sort_keys=True):
            raise RunMismatch(f"{store_path}: feature {name!r} provenance differs from the one {out_dir / CHECKPOINT} "
                             f"was trained on; refusing to mix features made differently (train into a new directory)")


def _check_store(checkpoint: dict, data: ClipSet, store_path, out_dir: Path, accept: bool) -> None:
    """A resume trains on the data the checkpoint was trained on: the store's identity (training/data.py) is
    compared, and a change (clips added by an extraction rerun, videos found, labels corrected) refuses in one
    line unless accepted; an accepted change, or a checkpoint too old to record the identity, is said in one line
    on stderr and in the run's log.jsonl."""
    step = int(checkpoint["step"])
    before = checkpoint.get("store_identity")
    if before is None:
        note = {"step": step, "store_unverified": f"{out_dir / CHECKPOINT} does not record the store's identity "
                                                  f"(written by an earlier version): {store_path} is not checked"}
        print(f"warning: {note['store_unverified']}; resuming on it as it is now", file=sys.stderr)
    else:
        changes = identity_changes(before, data.identity)
        if not changes:
            return
        what = "; ".join(changes)
        if not accept:
            raise StoreChanged(f"{store_path}: changed since {out_dir / CHECKPOINT} was written at step {step} "
                               f"({what}); resuming would train on other data than the run began with: train "
                               f"into a new directory, or resume with --accept-changed-store to continue on it")
        note = {"step": step, "store_changed": f"accepted at step {step}: {what}"}
        print(f"{out_dir}: resuming on a changed store as asked (--accept-changed-store): {what}", file=sys.stderr)
    with open(out_dir / "log.jsonl", "a") as log:  # kept by _RunLog: its step is the checkpoint's
        log.write(json.dumps(note) + "\n")


@contextlib.contextmanager
def _precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions, and cuDNN's autotuner (a group's shapes never change, so each convolution's
    fastest algorithm is found once), for this run only (torch's switches are process-wide)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


class _RunLog:
    """One seed's JSON-lines log and TensorBoard writer; on resume, lines after the checkpoint are dropped."""

    def __init__(self, out_dir: Path, step: int, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        path = out_dir / "log.jsonl"
        lines = path.read_text().splitlines() if (resume and path.exists()) else []
        self.history = [h for h in (json.loads(x) for x in lines) if h["step"] <= step]
        path.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        self.file = open(path, "a")
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step if step else None)

    def write(self, entry: dict[str, Any], scalars: dict[str, float]) -> None:
        self.history.append(entry)
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, entry["step"])

    def close(self) -> None:
        self.file.close()
        self.writer.close()


class _Cohort:
    """Seeds of one configuration that start from the same step, trained as one stacked group."""

    def __init__(self, store_path, config: TrainConfig, seeds: list[int], dirs: list[Path],
                 checkpoints: list[dict | None], data: ClipSet, device: torch.device,
                 validator: Validator | None = None):
        self.store_path, self.config, self.seeds, self.dirs, self.data, self.device = \
            store_path, config, seeds, dirs, data, device
        self.configs = [TrainConfig.from_dict({**config.to_dict(), "seed": s}) for s in seeds]
        self.checkpoints = checkpoints
        self.validator = validator
        if config.validate_every and validator is None:
            raise TrainConfigError(f"validate_every is {config.validate_every}, but this caller gave training no "
                                   f"validator (evaluation.validation.VALIDATOR); set validate_every to 0 or pass one")
        self.step = 0 if checkpoints[0] is None else int(checkpoints[0]["step"])

    def run(self, total: int, progress_desc: str, progress_position: int | None) -> list[TrainResult]:
        for c, d in zip(self.configs, self.dirs):
            c.save(d / "config.yaml")
        if self.step >= total:
            return [self._result(k, self.checkpoints[k], []) for k in range(len(self.seeds))]
        with _precision(self.device, bool(self.config.tf32)):
            return self._train(total, progress_desc, progress_position)

    def _result(self, k: int, ckpt: dict, history: list, trained: int = 0, rate: float = 0.0) -> TrainResult:
        log = self.dirs[k] / "log.jsonl"
        if not history and log.exists():
            history = [json.loads(x) for x in log.read_text().splitlines()]
        last = next((h for h in reversed(history) if "total" in h), {})
        losses = {k2: v for k2, v in last.items() if k2 in LOSS_TERMS}
        return TrainResult(out_dir=self.dirs[k], checkpoint=self.dirs[k] / CHECKPOINT, steps=int(ckpt["step"]),
                           last_losses=losses, samples_per_second=rate, history=history, trained_steps=trained)

    def _train(self, total: int, progress_desc: str, progress_position: int | None) -> list[TrainResult]:
        config, device, seeds = self.config, self.device, self.seeds
        root = Path(os.path.commonpath([str(d.resolve()) for d in self.dirs]))  # the run root: seeds share its cache
        group = prepare_group(config, seeds, self.data, device, self.checkpoints, cache_dir=root / INDUCTOR_CACHE)
        validation = self.validator.load(self.store_path, config, device) if config.validate_every else None
        resume = self.checkpoints[0] is not None
        logs = [_RunLog(d, self.step, resume) for d in self.dirs]
        batch = group.schedules[0].batch_size

        def save(at_step: int) -> None:
            save_checkpoints(self.dirs, group.checkpoint_payloads(at_step, self.configs, self.data, self.store_path))

        step, start_step = self.step, self.step
        t0 = time.perf_counter()
        last_log_t, last_log_step = t0, step
        try:
            with tqdm(total=total, initial=step, desc=progress_desc, position=progress_position,
                      disable=not config.progress, dynamic_ncols=True) as bar:
                while step < total:
                    group.before_step(step)
                    group.step_fn()
                    step += 1
                    bar.update(1)
                    if step % config.log_every == 0 or step == total:
                        now = time.perf_counter()
                        rate = (step - last_log_step) * batch / max(now - last_log_t, 1e-9)
                        last_log_t, last_log_step = now, step
                        lr = config.learning_rate * config.lr_decay_factor ** ((step - 1) // config.lr_decay_every)
                        for log, losses in zip(logs, group.step_fn.read_losses()):
                            entry = {"step": step, "lr": lr, **losses, "samples_per_second": rate}
                            if group.compile_seconds() is not None and step - start_step <= config.log_every:
                                entry["compile_seconds"] = group.compile_seconds()  # the first log line only
                            log.write(entry, {f"train/{k}": v for k, v in entry.items() if k != "step"})
                        bar.set_postfix(loss=f"{logs[0].history[-1]['total']:.4f}")
                    if validation is not None and (step % config.validate_every == 0 or step == total):
                        metrics = self.validator(group.skeleton, group.student, group.teacher, validation, config)
                        for log, m in zip(logs, metrics):
                            log.write({"step": step, "validation": m},
                                      {f"validation/{who}/{k}": v for who, ms in m.items() for k, v in ms.items()})
                    if step % config.checkpoint_every == 0 and step < total:
                        save(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            save(step)
        finally:
            for log in logs:
                log.close()
        rate = (step - start_step) * batch / elapsed if step > start_step else 0.0
        payload = {"step": step}
        return [self._result(k, payload, logs[k].history, step - start_step, rate) for k in range(len(seeds))]


@dataclass
class TrainingGroup:
    """Everything that trains a group of seeds on the device: stacked models, optimiser, draws, the step."""

    config: TrainConfig
    seeds: list[int]
    device: torch.device
    skeleton: torch.nn.Module
    student: StackedModels
    teacher: StackedModels
    optimizer: RAdam
    counters: DeviceCounters
    schedules: list[BatchSchedule]
    step_fn: TrainStep | StreamSteps
    visual_dims: list[int]
    chunk: int

    def draws(self, chunk: int) -> StepDraws:
        c = self.config
        return StepDraws.stack([draw_chunk(s, chunk, c.mixup_rate, c.mixup_alpha, c.random_audio_low,
                                           c.random_audio_high) for s in self.schedules], dim=1)

    def compile_seconds(self) -> float | None:
        """Wall time of the first compiled step (compiling or loading from Inductor's cache); None if not compiled."""
        return self.step_fn.compile_seconds

    def before_step(self, step: int) -> None:
        """Host work before step `step` (0-based): refill the draw buffers at a chunk boundary, nothing else."""
        if step // DRAW_CHUNK != self.chunk:
            self.chunk = step // DRAW_CHUNK
            self.step_fn.new_chunk(self.draws(self.chunk))

    def checkpoint_payloads(self, step: int, configs: Sequence[TrainConfig], data: ClipSet,
                            store_path) -> list[dict[str, Any]]:
        rng = _rng_state(self.device)
        sums = self.counters.loss_sums.cpu().tolist()
        n = float(self.counters.loss_steps.cpu())
        names = list(self.student.params)
        return [{"model": self.student.state_dict(k), "teacher": self.teacher.state_dict(k),
                 "optimizer": self.optimizer.state_of(k, names), "step": step, "rng": rng,
                 "loss_sums": sums[k], "loss_steps": n, "config": configs[k].to_dict(),
                 "encoders": list(self.config.encoders), "visual_dims": self.visual_dims,
                 "provenance": data.provenance, "store": str(store_path), "store_identity": data.identity,
                 "format": FORMAT, "group": self.seeds}
                for k in range(len(self.seeds))]


def prepare_group(config: TrainConfig, seeds: Sequence[int], data: ClipSet, device: torch.device,
                  checkpoints: Sequence[dict | None] | None = None, cache_dir: Path | None = None) -> TrainingGroup:
    """Build (or restore from per-seed checkpoints, all at one step) the stacked models, optimiser, draws and
    step of a group of seeds. `config` must already be resolved for the device (TrainConfig.resolved);
    `cache_dir`: where Inductor keeps its compilations (None: the process's setting)."""
    seeds = [int(s) for s in seeds]
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(seeds)
    tensors = data.tensors
    dtype = getattr(torch, config.model_dtype)
    visual_dims = [int(v.shape[-1]) for v in tensors.visual]
    students = [build_seed_model(config.model, visual_dims, s, device, dtype) for s in seeds]
    teachers = [make_teacher(m) for m in students]
    skeleton = skeleton_of(students[0]).train()
    vmapped = len(seeds) > 1 and config.seeds_mode == "vmap"  # streams: each seed runs as a group of one
    if vmapped:
        # CUDA batch norm asks for its input's memory format, which vmap (seeds stacked) cannot answer: stacked
        # seeds keep NCHW feature maps (measured on an H100, the NHWC step crashed inside vmap).
        for module in skeleton.modules():
            if isinstance(module, CNNFrontEnd):
                module.channels_last = False
    for module in skeleton.modules():
        if isinstance(module, MultiHeadAttention):
            # The fused attention kernel, except for stacked seeds on the CPU (no vmap batching rule there:
            # training/attention.py).
            module.fused = not vmapped or device.type == "cuda"
    student = StackedModels.stack(students, requires_grad=True)
    teacher = StackedModels.stack(teachers, requires_grad=False)
    del students, teachers
    names = list(student.params)
    optimizer = RAdam.create(student.parameter_list())
    counters = DeviceCounters(position=torch.zeros(1, dtype=torch.int64, device=device),
                              loss_sums=torch.zeros(len(seeds), len(LOGGED_TERMS), dtype=torch.float64, device=device),
                              loss_steps=torch.zeros(1, dtype=torch.float64, device=device))
    step = 0
    if checkpoints[0] is not None:
        step = int(checkpoints[0]["step"])
        student.load_state_dicts([c["model"] for c in checkpoints])
        teacher.load_state_dicts([c["teacher"] for c in checkpoints])
        optimizer.load_states([c["optimizer"] for c in checkpoints], names)
        counters.loss_sums.copy_(torch.tensor([c["loss_sums"] for c in checkpoints], dtype=torch.float64))
        counters.loss_steps.fill_(float(checkpoints[0]["loss_steps"]))
        _set_rng_state(checkpoints[0]["rng"], device)
    else:
        torch.manual_seed(stream_seed(*seeds, _DROPOUT_STREAM))
    sizes = [config.batch_strong, config.batch_weak, config.batch_unlabelled]
    schedules = [BatchSchedule(tensors.kind, sizes, s).to(device) for s in seeds]
    capture = bool(config.capture) and device.type == "cuda"
    if config.capture and device.type != "cuda":
        warnings.warn(f"capture: true records the training step in a CUDA graph; on {device} the step is not "
                      f"captured", stacklevel=3)
    group = TrainingGroup(config, seeds, device, skeleton, student, teacher, optimizer, counters, schedules,
                          step_fn=None, visual_dims=visual_dims, chunk=step // DRAW_CHUNK)  # type: ignore[arg-type]
    counters.position.fill_(step % DRAW_CHUNK)
    build_step = stream_steps if len(seeds) > 1 and not vmapped else TrainStep
    group.step_fn = build_step(config, skeleton, student, teacher, optimizer, tensors, group.draws(group.chunk),
                               counters, device, capture, compile=bool(config.compile), cache_dir=cache_dir)
    return group


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
