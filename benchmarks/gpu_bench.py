"""The training step on one GPU, in one prepared run of at most ~9 minutes: the baseline and each change for the
transformer bi-encoder, the compiled + captured step for both architectures and 1-3 streams, the ways of training
seeds together (with peak memory), and the CUDA tests. `--smoke` runs the same code on the CPU with tiny sizes.

Every measurement is appended to the results as soon as it is taken (markdown and json rewritten and flushed), so
a run cut short keeps what it did; once the time budget is spent the rest is listed as skipped. In order:
1. kernels per eager step (transformer bi-encoder, one seed) before and after each change: on a GPU the CUDA
   kernels of the profile, on the CPU the profile's leaf compute ops (benchmarks/bench_training.py counts them so).
   The smoke run writes these counts to results/kernels_cpu.md too.
2. ms per step of the transformer bi-encoder, eager and captured: before (parameters sliced with `t[0]`,
   written-out attention, no cuDNN autotuning), + squeeze(0), + fused attention (SDPA), + cudnn.benchmark,
   + Inductor (compile), + compile and capture (the new default).
3. seeds (transformer bi-encoder, compiled + captured): vmap groups of 1, 2, 4, 8 and of the size free memory
   gives (training/group.group_size), and `seeds_mode: streams` (one captured single-seed step per CUDA stream):
   seed-steps/s, the grid's hours at that rate and peak memory (torch.cuda.max_memory_allocated) per group.
4. compiled + captured, transformer and conformer with 1, 2 and 3 streams (audio; + OpenL3; + OpenL3 + TCE):
   ms per step, compile seconds, seconds per 25k-step seed.
5. `pytest -k cuda` on the tests (GPU only; CUDA_TESTS_S of the budget is kept for it).

    .venv/bin/python benchmarks/gpu_bench.py            # on a GPU machine: results/training_cuda.md and .json
    .venv/bin/python benchmarks/gpu_bench.py --smoke    # on the CPU, tiny sizes: results/training_cpu_smoke.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import training.step  # noqa: E402
from bench_training import NO_KERNEL, PAPER_STEPS, STREAMS, build_store  # noqa: E402
from training.attention import MultiHeadAttention  # noqa: E402
from training.config import CNNConfig, ModelConfig, TrainConfig  # noqa: E402
from training.group import group_size, seed_bytes_estimate  # noqa: E402
from training.step import CAPTURE_WARMUP_STEPS  # noqa: E402
from training.train import load_training_data, prepare_group  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BUDGET_S = 540  # the device tool's 10-minute call, less the start and the copy back
CUDA_TESTS_S = 120  # kept for `pytest -k cuda` at the end (its steps compile tiny models)
GRID_SEED_STEPS = 18 * 20 * PAPER_STEPS  # the paper's grid (training/paper.py): 18 models x 20 seeds x 25k steps


@dataclass
class Sizes:
    """What a run measures at: the paper's model and batch on a GPU, a same-structure tiny one for --smoke."""

    smoke: bool
    clips: int
    steps: int  # timed steps per measurement
    groups: list[int]
    eager_s: float  # time a measurement is expected to take (est.): one starts only if the budget has this left
    compile_s: float

    def config(self, arch: str, streams: int, device: torch.device, **settings: Any) -> TrainConfig:
        base: dict[str, Any] = dict(encoders=STREAMS[streams], device=str(device), progress=False,
                                    interpolation_weights="random" if streams > 1 else None)
        if self.smoke and settings.get("compile"):
            # Inductor's C++ kernels take minutes to build on a small CPU: a shallow model (3 CNN blocks, 1 + 1
            # blocks) runs the compiled code path in the smoke run's time.
            base.update(model=ModelConfig(architecture=arch, d_model=8, heads=3, d_head=4, ff_dim=16,
                                          encoder_blocks=1, decoder_blocks=1,
                                          cnn=CNNConfig(filters=[2, 2, 4], kernel=[3, 3, 3],
                                                        pooling=[[2, 4], [2, 4], [2, 4]])),
                        batch_strong=2, batch_weak=2, batch_unlabelled=2)
        elif self.smoke:
            # The paper's structure (7 CNN blocks, 3 + 3 blocks, 3 heads) at a tiny width: the same ops and graphs.
            base.update(model=ModelConfig(architecture=arch, d_model=8, heads=3, d_head=4, ff_dim=16,
                                          cnn=CNNConfig(filters=[2, 2, 4, 4, 8, 8, 8])),
                        batch_strong=2, batch_weak=2, batch_unlabelled=2)
        else:
            base["model"] = ModelConfig(architecture=arch)
        base.update(settings)
        return TrainConfig(**base).resolved(device.type)


class Results:
    """Measurements of one run, written out (markdown + json) after each one."""

    def __init__(self, out: Path, device: torch.device, budget: float, smoke: bool):
        self.md, self.json = out.with_suffix(".md"), out.with_suffix(".json")
        self.start = time.perf_counter()
        self.budget = budget
        self.reserve = CUDA_TESTS_S if device.type == "cuda" else 0.0
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
        self.data: dict[str, Any] = {"device": card, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                     "torch": torch.__version__, "smoke": smoke, "budget_s": budget, "sections": {}}
        self.notes: dict[str, str] = {}
        self.out_dir = out.parent
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.write()

    def left(self, reserve: float | None = None) -> float:
        """Seconds of the budget left for measurements, less what the CUDA tests at the end keep for themselves."""
        reserve = self.reserve if reserve is None else reserve
        return self.budget - reserve - (time.perf_counter() - self.start)

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        print(f"[{self.data['elapsed_s']:6.1f} s] {section}: {json.dumps(row)}", flush=True)
        self.write()

    def write(self) -> None:
        self.json.write_text(json.dumps(self.data, indent=2) + "\n")
        self.md.write_text(markdown(self.data, self.notes))


def markdown(data: dict[str, Any], notes: dict[str, str]) -> str:
    kind = "smoke run on the CPU, tiny sizes: timings mean nothing" if data["smoke"] else \
        "paper-sized models, batch 128, bf16 autocast + TF32, mixup and dropout on"
    lines = [f"# Training step on {data['device']}", "",
             f"`benchmarks/gpu_bench.py{' --smoke' if data['smoke'] else ''}`, {data['date']}, torch {data['torch']} "
             f"({kind}). Budget {data['budget_s']:.0f} s; elapsed {data.get('elapsed_s', 0):.0f} s.", ""]
    for section, rows in data["sections"].items():
        lines += [f"## {section}", ""]
        if notes.get(section):
            lines += [notes[section], ""]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# --- the changes, as switches ------------------------------------------------------------------------------------

def index_slicing_over_seeds(fn: Callable, n_seeds: int) -> Callable:
    """training/group.over_seeds as it was before: a group of one sliced with `t[0]` (select + its backward)."""
    if n_seeds > 1:
        return torch.func.vmap(fn, randomness="different")

    def single(*args):
        out = fn(*tree_map(lambda t: t[0] if isinstance(t, torch.Tensor) else t, args))
        return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, out)
    return single


@dataclass
class Variant:
    name: str
    index_slicing: bool = False  # t[0] instead of squeeze(0)
    fused_attention: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False
    capture: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


BEFORE = dict(index_slicing=True, fused_attention=False, cudnn_benchmark=False)
CHANGES = [
    Variant("before: t[0], written-out attention", **BEFORE),
    Variant("before, captured", **BEFORE, capture=True),
    Variant("+ squeeze(0)", fused_attention=False, cudnn_benchmark=False),
    Variant("+ squeeze(0), captured", fused_attention=False, cudnn_benchmark=False, capture=True),
    Variant("+ fused attention (SDPA)", cudnn_benchmark=False),
    Variant("+ fused attention (SDPA), captured", cudnn_benchmark=False, capture=True),
    Variant("+ cudnn.benchmark"),
    Variant("+ cudnn.benchmark, captured", capture=True),
    Variant("+ compile (Inductor)", compile=True),
    Variant("+ compile + capture (default on CUDA)", compile=True, capture=True),
]


@contextlib.contextmanager
def switched(variant: Variant) -> Iterator[None]:
    saved_over_seeds, saved_bench = training.step.over_seeds, torch.backends.cudnn.benchmark
    if variant.index_slicing:
        training.step.over_seeds = index_slicing_over_seeds
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    try:
        yield
    finally:
        training.step.over_seeds, torch.backends.cudnn.benchmark = saved_over_seeds, saved_bench


def build(sizes: Sizes, variant: Variant, arch: str, streams: int, seeds: list[int], device: torch.device, data,
          cache: Path):
    config = sizes.config(arch, streams, device, compile=variant.compile, capture=variant.capture,
                          **variant.settings)
    group = prepare_group(config, seeds, data, device, cache_dir=cache)
    if not variant.fused_attention:
        for m in group.skeleton.modules():
            if isinstance(m, MultiHeadAttention):
                m.fused = False
    return group


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(group, device: torch.device, steps: int) -> dict[str, Any]:
    """Warm-up (compile, capture), then `steps` timed steps: ms per step and the first step's compile seconds."""
    warm = CAPTURE_WARMUP_STEPS + 2
    t = time.perf_counter()
    for step in range(warm):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for step in range(warm, warm + steps):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    ms = (time.perf_counter() - t) / steps * 1e3
    out: dict[str, Any] = {"ms_per_step": ms, "warmup_s": warm_s}
    if group.compile_seconds() is not None:
        out["compile_s"] = group.compile_seconds()
    if group.step_fn.compile_error:
        out["compile_error"] = group.step_fn.compile_error
    return out


def kernels_per_step(group, device: torch.device) -> int:
    """Kernels of one steady-state eager step: CUDA kernels recorded, or the CPU profile's leaf compute ops."""
    for step in range(2):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    group.before_step(2)
    with profile(activities=activities) as prof:
        group.step_fn()
        _sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return leaf_ops(events)


def leaf_ops(events) -> int:
    """Compute ops that call no other op (views and allocations left out), forward and backward: the backward's ops
    sit under autograd's own events, which benchmarks/bench_training.py's count did not descend into. A `_foreach_`
    op counts once (the CPU runs it as a loop, a GPU as a few fused multi-tensor kernels)."""
    def count(e) -> int:
        if e.name.startswith("aten::_foreach_"):
            return 1
        if e.name.startswith("aten::"):
            children = [c for c in e.cpu_children if c.name.startswith("aten::")]
            if not children:
                return int(e.name not in NO_KERNEL)
            return sum(count(c) for c in children)
        return sum(count(c) for c in e.cpu_children)
    return sum(count(e) for e in events if e.cpu_parent is None)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


# --- the sections ------------------------------------------------------------------------------------------------

def section_kernels(res: Results, sizes: Sizes, device, data, cache) -> None:
    name = "Kernels per eager step (transformer bi-encoder, one seed)"
    res.notes[name] = ("CUDA kernels of one profiled step" if device.type == "cuda" else
                       "Leaf compute ops of one CPU-profiled step, forward and backward (a `_foreach_` op counted "
                       "once), about one kernel launch each when the step runs eagerly on a GPU. The tiny model has "
                       "the paper's structure, so the same ops. On the CPU the fused attention stays written out "
                       "while dropout is on (training/attention.py), so its row equals the one above.")
    rows = []
    for variant in [v for v in CHANGES if not v.capture and not v.compile][:3]:
        with switched(variant):
            group = build(sizes, variant, "transformer", 2, [0], device, data, cache)
            rows.append({"variant": variant.name, "kernels_per_step": kernels_per_step(group, device)})
            res.add(name, rows[-1])
        del group
        _free(device)
    if device.type == "cpu":
        (res.out_dir / "kernels_cpu.md").write_text(
            f"# Kernels per eager step on the CPU ({res.data['date']}, torch {res.data['torch']})\n\n"
            f"Written by `benchmarks/gpu_bench.py --smoke`. {res.notes[name]}\n\n"
            "| variant | kernels per step |\n|---|---:|\n"
            + "".join(f"| {r['variant']} | {r['kernels_per_step']} |\n" for r in rows))


def section_changes(res: Results, sizes: Sizes, device, data, cache) -> None:
    name = "Each change (transformer bi-encoder, one seed)"
    res.notes[name] = "Cumulative: each row adds its change to the rows above. Captured rows replay a CUDA graph."
    for variant in CHANGES:
        if variant.capture and device.type != "cuda":
            continue
        if res.left() < (sizes.compile_s if variant.compile else sizes.eager_s):
            res.add(name, {"variant": variant.name, "skipped": "time budget spent"})
            continue
        with switched(variant):
            group = build(sizes, variant, "transformer", 2, [0], device, data, cache)
            row = {"variant": variant.name, **timed(group, device, sizes.steps)}
        row["s_per_25k_seed"] = row["ms_per_step"] * PAPER_STEPS / 1e3
        res.add(name, row)
        del group
        _free(device)


def section_architectures(res: Results, sizes: Sizes, device, store, cache) -> None:
    name = "Compiled + captured, by architecture and streams (one seed)"
    capture = device.type == "cuda"
    for arch in ("transformer", "conformer"):
        for streams in (1, 2, 3):
            if res.left() < sizes.compile_s:
                res.add(name, {"architecture": arch, "streams": streams, "skipped": "time budget spent"})
                continue
            config = sizes.config(arch, streams, device, compile=True, capture=capture)
            data = load_training_data(store, config, device)
            group = prepare_group(config, [0], data, device, cache_dir=cache)
            row = {"architecture": arch, "streams": streams, **timed(group, device, sizes.steps)}
            row["s_per_25k_seed"] = row["ms_per_step"] * PAPER_STEPS / 1e3
            res.add(name, row)
            del group, data
            _free(device)


def section_seeds(res: Results, sizes: Sizes, device, data, cache) -> None:
    name = "Seeds together (transformer bi-encoder, compiled + captured)"
    capture = device.type == "cuda"
    base = sizes.config("transformer", 2, device)
    auto = group_size(base, device, 20)
    res.notes[name] = (f"vmap: one stacked model; streams: one single-seed step per CUDA stream. The group size free "
                       f"memory gives (training/group.group_size, {seed_bytes_estimate(base) / 2 ** 30:.1f} GiB per "
                       f"seed est.): {auto}. Grid hours: the paper's 360 runs x 25k steps at this rate.")
    options = [("vmap", g) for g in sizes.groups] + [("vmap", auto)] * (auto not in sizes.groups) + \
        [("streams", g) for g in sizes.groups if g > 1][:2]
    for mode, g in options:
        if res.left() < sizes.compile_s:
            res.add(name, {"seeds_mode": mode, "seeds": g, "skipped": "time budget spent"})
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        config = sizes.config("transformer", 2, device, compile=True, capture=capture, seeds_mode=mode)
        try:
            group = prepare_group(config, list(range(g)), data, device, cache_dir=cache)
            row: dict[str, Any] = {"seeds_mode": mode, "seeds": g, **timed(group, device, sizes.steps)}
        except torch.OutOfMemoryError:
            res.add(name, {"seeds_mode": mode, "seeds": g, "error": "out of memory"})
            _free(device)
            continue
        rate = g / row["ms_per_step"] * 1e3
        row.update(seed_steps_per_s=rate, grid_hours=GRID_SEED_STEPS / rate / 3600, peak_gib=peak_gib(device))
        res.add(name, row)
        del group
        _free(device)


def section_cuda_tests(res: Results, device) -> None:
    name = "CUDA tests (pytest -k cuda)"
    if device.type != "cuda":
        res.add(name, {"result": "not run: no CUDA device"})
        return
    if res.left(reserve=0) < 20:
        res.add(name, {"result": "skipped: time budget spent"})
        return
    cmd = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-k", "cuda", "tests/"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, res.left(reserve=0)))
        tail = [x for x in done.stdout.splitlines() if x.strip()][-1:] or ["(no output)"]
        res.add(name, {"command": " ".join(cmd[1:]), "exit_code": done.returncode, "summary": tail[0]})
    except subprocess.TimeoutExpired:
        res.add(name, {"command": " ".join(cmd[1:]), "result": "stopped: time budget spent"})


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny sizes (about a minute)")
    ap.add_argument("--budget", type=float, default=None, help=f"seconds (default {BUDGET_S}; smoke 120)")
    ap.add_argument("--out", type=Path, default=None, help="results file stem (default results/training_cuda, "
                                                           "smoke results/training_cpu_smoke)")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device here; run with --smoke for the CPU check")
    sizes = Sizes(smoke=True, clips=16, steps=3, groups=[1, 2], eager_s=5, compile_s=60) if args.smoke else \
        Sizes(smoke=False, clips=256, steps=30, groups=[1, 2, 4, 8], eager_s=20, compile_s=90)
    out = args.out or RESULTS / ("training_cpu_smoke" if args.smoke else "training_cuda")
    res = Results(out, device, args.budget or (120.0 if args.smoke else BUDGET_S), args.smoke)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    store, cache = work / "features.zarr", work / "inductor"  # one Inductor cache: compile once per shape
    build_store(store, sizes.clips)
    bi = load_training_data(store, sizes.config("transformer", 2, device), device)
    section_kernels(res, sizes, device, bi, cache)
    section_changes(res, sizes, device, bi, cache)
    section_seeds(res, sizes, device, bi, cache)
    section_architectures(res, sizes, device, store, cache)
    section_cuda_tests(res, device)
    print(f"wrote {res.md} and {res.json}", flush=True)
    return res.md


if __name__ == "__main__":
    main()
