"""Training-step benchmark at the paper's sizes: FLOPs, kernels and host syncs per step (any device), and on a GPU
the step time eager vs captured in a CUDA graph and the throughput of seeds trained together.

Per architecture (transformer, conformer) and stream count (1: log-mel; 2: + OpenL3 512-d; 3: + OpenL3 + TCE
2048-d), at batch 128 (32 strong / 32 weak / 64 unlabelled) and the paper's model:
- FLOPs per step: student forward + backward + teacher forward (torch.utils.flop_counter).
- kernels per step: on the CPU, leaf compute ops of the profiler (ops without child ops, views and allocations
  excluded): each is one kernel launch when the step runs eagerly on a GPU; on a GPU, the CUDA kernels recorded.
- host syncs per step: profiler events that read a value back or make a tensor from host data
  (`aten::_local_scalar_dense`, `aten::item`, `aten::is_nonzero`, `aten::lift_fresh`) in a steady-state step, and,
  for reference, those of one step of torch.optim.RAdam without `capturable` over the same parameters.
- GPU only (clearly absent otherwise): ms per step eager vs captured (bf16 autocast + TF32, as CUDA runs default
  to), seconds per 25k-step seed, and seed-steps/s for groups of 1, 4, 8 and 20 seeds (captured), with peak memory.

    .venv/bin/python benchmarks/bench_training.py                      # CPU: counts only (a few paper-size steps)
    .venv/bin/python benchmarks/bench_training.py --device cuda        # adds the GPU timings

Writes benchmarks/results/training.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig  # noqa: E402
from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store  # noqa: E402
from training.train import load_training_data, prepare_group, resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = {1: ["logmel"], 2: ["logmel", "openl3"], 3: ["logmel", "openl3", "tce"]}
SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::lift_fresh")
# Profiler leaves that launch no kernel: views, shape changes and allocations.
NO_KERNEL = {"aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::transpose", "aten::t", "aten::expand",
             "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::reshape",
             "aten::alias", "aten::detach", "aten::empty", "aten::empty_strided", "aten::empty_like",
             "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh", "aten::split", "aten::chunk",
             "aten::unbind", "aten::narrow", "aten::movedim", "aten::_reshape_alias", "aten::view_as",
             "aten::numpy_T", "aten::contiguous", "aten::result_type", "aten::is_nonzero", "aten::item"}
PAPER_STEPS = 25_000


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def config_for(arch: str, streams: int, device: torch.device, compile_step: bool = False) -> TrainConfig:
    config = TrainConfig(encoders=STREAMS[streams], device=str(device), capture=compile_step, compile=False,
                         progress=False,
                         interpolation_weights="random" if streams > 1 else None)
    config.model.architecture = arch
    return config.resolved(device.type)


def build_store(path: Path, clips: int) -> None:
    build_synthetic_store(path, SyntheticStoreSpec(
        clips={"synthetic": clips // 4, "weak": clips // 4, "unlabelled": clips // 2, "validation": 8, "eval": 8},
        visual={"openl3": 512, "tce": 2048}, missing_fraction=0.155))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_counts(store: Path, arch: str, streams: int, device: torch.device) -> dict:
    """FLOPs, kernels and host syncs of one steady-state step of one seed."""
    config = config_for(arch, streams, device)
    data = load_training_data(store, config, device)
    group = prepare_group(config, [0], data, device)
    group.before_step(0)
    group.step_fn()  # warm-up (first-call allocations)
    _sync(device)
    with FlopCounterMode(display=False) as flops:
        group.step_fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        group.step_fn()
        _sync(device)
    events = prof.events()
    syncs = {name: sum(1 for e in events if e.name == name) for name in SYNC_EVENTS}
    if device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        kernel_note = "CUDA kernels recorded"
    else:
        kernels = _leaf_ops(events)
        kernel_note = ("leaf compute ops of the CPU profile, a multi-tensor (_foreach_) op counted once as on a GPU: "
                       "about one kernel launch each when the step runs eagerly on a GPU")
    reference = radam_reference_syncs(group.student.parameter_list())
    return {"architecture": arch, "streams": streams, "encoders": STREAMS[streams],
            "parameters": sum(p[0].numel() for p in group.student.parameter_list()),
            "gflop_per_step": flops.get_total_flops() / 1e9, "kernels_per_step": kernels, "kernel_count": kernel_note,
            "host_syncs_per_step": sum(syncs.values()), "host_sync_events": syncs,
            "torch_radam_host_syncs_per_step": reference}


def _leaf_ops(events) -> int:
    """Compute ops that call no other op, with views and allocations left out; a `_foreach_` op counts once
    (the CPU runs it as a loop of per-tensor ops, a GPU as a few fused multi-tensor kernels)."""
    def count(e) -> int:
        if e.name.startswith("aten::_foreach_"):
            return 1
        children = [c for c in e.cpu_children if c.name.startswith("aten::")]
        if not children:
            return int(e.name.startswith("aten::") and e.name not in NO_KERNEL)
        return sum(count(c) for c in children)
    return sum(count(e) for e in events if e.cpu_parent is None)


def radam_reference_syncs(params: list[torch.Tensor]) -> int:
    """Host reads of one step of torch.optim.RAdam (capturable=False, the previous optimiser) on these shapes."""
    copies = [torch.zeros_like(p[0], requires_grad=True) for p in params]
    for c in copies:
        c.grad = torch.ones_like(c)
    optimizer = torch.optim.RAdam(copies, lr=1e-3)
    optimizer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimizer.step()
    return sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense")


def gpu_timings(store: Path, arch: str, streams: int, device: torch.device, steps: int, groups: list[int]) -> dict:
    """ms per step eager vs captured (one seed), and seed-steps/s of captured groups."""
    out: dict = {"architecture": arch, "streams": streams}
    data = load_training_data(store, config_for(arch, streams, device), device)
    for name, capture in (("eager", False), ("captured", True)):
        group = prepare_group(config_for(arch, streams, device, capture), [0], data, device)
        out[f"{name}_ms_per_step"] = _time_steps(group, steps, device) * 1e3
    out["seconds_per_paper_seed"] = out["captured_ms_per_step"] * PAPER_STEPS / 1e3
    out["groups"] = []
    for g in groups:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            group = prepare_group(config_for(arch, streams, device, True), list(range(g)), data, device)
            seconds = _time_steps(group, steps, device)
        except torch.OutOfMemoryError:
            out["groups"].append({"seeds": g, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        out["groups"].append({"seeds": g, "seed_steps_per_second": g / seconds, "ms_per_group_step": seconds * 1e3,
                              "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30})
        del group
        torch.cuda.empty_cache()
    return out


def _time_steps(group, steps: int, device: torch.device, warmup: int = 10) -> float:
    for step in range(warmup):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    t0 = time.perf_counter()
    for step in range(warmup, warmup + steps):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def markdown(results: dict) -> str:
    lines = [f"# Training-step benchmark ({results['device']})", "",
             f"Measured {results['date']}, torch {results['torch']}. Paper-sized models, batch 128 (32 strong / 32 weak "
             f"/ 64 unlabelled), random interpolation weights for multi-encoder models, mixup and dropout on. "
             f"Counts are per steady-state step of one seed.", "",
             "| architecture | streams | parameters | GFLOP / step | kernels / step | host syncs / step | "
             "torch RAdam host syncs / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["counts"]:
        lines.append(f"| {r['architecture']} | {r['streams']} | {r['parameters'] / 1e6:.2f} M | "
                     f"{r['gflop_per_step']:.0f} | {r['kernels_per_step']} | {r['host_syncs_per_step']} | "
                     f"{r['torch_radam_host_syncs_per_step']} |")
    lines += ["", f"Kernels: {results['counts'][0]['kernel_count']}. Host syncs: profiler events "
              f"{', '.join(SYNC_EVENTS)}; the last column is one step of torch.optim.RAdam without `capturable` on "
              f"the same parameters (the optimiser this project used before), for comparison.", ""]
    if results.get("gpu"):
        lines += ["## GPU", "", "| architecture | streams | eager ms / step | captured ms / step | s per 25k-step seed | "
                  "seed-steps/s (group of 1 / 4 / 8 / 20) | peak GiB (20) |", "|---|---:|---:|---:|---:|---|---:|"]
        for r in results["gpu"]:
            rates = " / ".join(f"{g['seed_steps_per_second']:.0f}" if "error" not in g else g["error"] for g in r["groups"])
            peak = next((f"{g['max_memory_gib']:.1f}" for g in r["groups"] if g["seeds"] == max(
                x["seeds"] for x in r["groups"]) and "error" not in g), "-")
            lines.append(f"| {r['architecture']} | {r['streams']} | {r['eager_ms_per_step']:.1f} | "
                         f"{r['captured_ms_per_step']:.1f} | {r['seconds_per_paper_seed']:.0f} | {rates} | {peak} |")
        if results.get("paper_grid_hours") is not None:
            lines += ["", f"The paper's grid (per architecture: audio only, 3 fixed and 3 random bi-encoders, 2 "
                      f"tri-encoders; 20 seeds each, groups of 20): {results['paper_grid_hours']:.1f} h of training."]
    else:
        lines += ["## GPU", "", "**Not measured: no GPU was lent.** Run `benchmarks/bench_training.py --device cuda` on "
                  "one for ms per step eager vs captured, seconds per 25k-step seed and seed-steps/s of groups of 1, 4, "
                  "8 and 20 seeds."]
    return "\n".join(lines) + "\n"


def paper_grid_hours(gpu: list[dict]) -> float | None:
    """Training time of the paper's grid from the measured group-of-20 rates (bi-encoders counted at 2 streams)."""
    rate = {(r["architecture"], r["streams"]): next((g["seed_steps_per_second"] for g in r["groups"]
                                                     if g["seeds"] == 20 and "error" not in g), None) for r in gpu}
    runs = {1: 20, 2: 6 * 20, 3: 2 * 20}  # seeds per stream count and architecture
    total = 0.0
    for (arch, streams), r in rate.items():
        if r is None:
            return None
        total += runs[streams] * PAPER_STEPS / r
    return total / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=256, help="training clips of the synthetic store")
    ap.add_argument("--architectures", default="transformer,conformer")
    ap.add_argument("--streams", default="1,2,3")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per GPU measurement")
    ap.add_argument("--groups", default="1,4,8,20")
    ap.add_argument("--out", type=Path, default=RESULTS / "training")
    args = ap.parse_args()

    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    store = work / "features.zarr"
    build_store(store, args.clips)
    archs = [a for a in args.architectures.split(",") if a]
    streams = [int(s) for s in args.streams.split(",")]
    results: dict = {"device": device_name(device), "torch": torch.__version__, "date": date.today().isoformat(),
                     "batch": 128, "counts": [], "gpu": []}
    for arch in archs:
        for s in streams:
            t = time.perf_counter()
            r = step_counts(store, arch, s, device)
            results["counts"].append(r)
            print(f"{arch:11s} {s} streams: {r['gflop_per_step']:.0f} GFLOP, {r['kernels_per_step']} kernels, "
                  f"{r['host_syncs_per_step']} host syncs (torch RAdam: {r['torch_radam_host_syncs_per_step']}) "
                  f"[{time.perf_counter() - t:.0f} s]", flush=True)
    if device.type == "cuda":
        groups = [int(g) for g in args.groups.split(",")]
        for arch in archs:
            for s in streams:
                r = gpu_timings(store, arch, s, device, args.steps, groups)
                results["gpu"].append(r)
                print(f"{arch:11s} {s} streams: eager {r['eager_ms_per_step']:.1f} ms, captured "
                      f"{r['captured_ms_per_step']:.1f} ms, {r['seconds_per_paper_seed']:.0f} s per seed; groups "
                      f"{[round(g.get('seed_steps_per_second', 0)) for g in r['groups']]} seed-steps/s", flush=True)
        results["paper_grid_hours"] = paper_grid_hours(results["gpu"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
