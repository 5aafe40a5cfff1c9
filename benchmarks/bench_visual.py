"""Throughput of the visual embeddings (OpenL3, VGG16, TCE): frames/s through `embed` (preprocessing included),
FLOPs per frame counted with torch's FlopCounterMode, and the fraction of the machine's peak FLOP/s that
this is; plus the cost and the gain of computing identical frames once (still-image videos); plus the
extraction's embedding worker (all three CNNs on one upload of whole clips, the next batch packed while the device
computes): seconds for DESED's 17.8k clips x 64 frames through all three, and the GPU's utilisation meanwhile
(sampled with nvidia-smi).

    .venv/bin/python benchmarks/bench_visual.py                 # this CPU, fp32
    .venv/bin/python benchmarks/bench_visual.py --device cuda   # a GPU, bf16 autocast, GPU named in the output

Random weights (the numbers do not depend on the values). Writes benchmarks/results/visual[_<device>].json/.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.base import build_extractor  # noqa: E402
from features.embedding_worker import EmbeddingWorker, distinct_frames  # noqa: E402
from features.frame_dedup import unique_frames  # noqa: E402

EXTRACTORS = ("openl3", "vgg16", "tce")
DESED_VIDEO_CLIPS = 17_800  # DESED 2020 clips with a YouTube id (of ~20.4k)
FRAMES_PER_CLIP = 64
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_peak() -> dict:
    """Theoretical fp32 peak of the CPUs torch uses: cores x clock x FLOPs/cycle for the widest FMA vectors.

    FLOPs/cycle assumes two FMA units per core (Intel Xeon Skylake-SP and later Gold/Platinum, AMD Zen 4 via
    double-pumped 256-bit units): 2 units x lanes (16 fp32 for AVX-512, 8 for AVX2) x 2 (multiply + add).
    The clock is lscpu's max MHz when the hypervisor exposes it, else the TSC rate (BogoMIPS / 2), which on
    these VMs is the nominal clock; turbo may run above it, so the fraction can be slightly overstated.
    """
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = lambda k: (re.search(rf"^{k}:\s*(.+)$", text, re.M) or [None, None])[1]  # noqa: E731
    flags = field("Flags") or ""
    cores = len(os.sched_getaffinity(0))
    if field("CPU max MHz"):
        ghz, clock_src = float(field("CPU max MHz")) / 1000, "lscpu CPU max MHz"
    else:
        ghz, clock_src = float(field("BogoMIPS")) / 2000, "BogoMIPS / 2 (TSC rate)"
    if "avx512f" in flags.split():
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags.split():
        lanes, isa = 8, "AVX2"
    else:
        lanes, isa = 4, "SSE"
    fma = 2 if "fma" in flags.split() or isa == "AVX-512" else 1
    per_cycle = 2 * lanes * fma
    return {"model": field("Model name"), "cores": cores, "ghz": ghz, "clock_source": clock_src, "isa": isa,
            "flops_per_cycle_per_core": per_cycle, "peak_flops": cores * ghz * 1e9 * per_cycle,
            "how": f"{cores} cores x {ghz:.2f} GHz ({clock_src}) x {per_cycle} fp32 FLOP/cycle "
                   f"(2 FMA units x {lanes} {isa} lanes x 2)"}


GPU_BF16_DENSE_PEAK = {  # vendor datasheets, dense (no sparsity) bf16 tensor-core FLOP/s
    "H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12,
}


def gpu_peak() -> dict:
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_BF16_DENSE_PEAK.items() if k in name), None)
    return {"model": name, "peak_flops": peak, "how": "vendor datasheet, dense bf16 tensor-core peak"
            if peak else "unknown GPU: no datasheet peak; see measured matmul peak"}


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of a square matmul: what the BLAS actually reaches here (a practical ceiling)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_frame(ex) -> int:
    ex.load()
    size = ex.config.input_size or ex.input_size
    x = torch.zeros(1, 3, size, size, device=ex.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        ex._net(x)
    return int(counter.get_total_flops())


def bench_extractor(name: str, device: str, batch: int, repeats: int, autocast: str, frames: np.ndarray,
                    input_size: int | None = None) -> dict:
    ex = build_extractor(name, allow_random_weights=True, device=device, batch_size=batch, autocast=autocast,
                         dedup_identical_frames=False, input_size=input_size)
    t0 = time.perf_counter()
    ex.load()
    load_s = time.perf_counter() - t0
    flops = flops_per_frame(ex)
    ex.embed(frames[:batch])  # warm-up (allocator, cuDNN/oneDNN algorithm choice)
    sync(ex.device)
    t = time.perf_counter()
    for _ in range(repeats):
        ex.embed(frames[:batch])
    sync(ex.device)
    elapsed = time.perf_counter() - t
    fps = repeats * batch / elapsed
    return {"extractor": name, "dim": ex.dim, "batch": batch, "frames": repeats * batch, "seconds": elapsed,
            "frames_per_s": fps, "flops_per_frame": flops, "achieved_flops": fps * flops, "build_s": load_s,
            "autocast": autocast}


class GpuUtilisation:
    """Samples the GPU's utilisation (nvidia-smi, every 0.2 s) while a block runs: the share of time a kernel ran."""

    def __init__(self, index: int = 0):
        self.index, self.samples, self._stop = index, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = (float(v) for v in out.stdout.strip().split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> "GpuUtilisation":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_utilisation_mean": None, "gpu_memory_used_mb_max": None, "samples": 0}
        utils = [u for u, _ in self.samples]
        return {"gpu_utilisation_mean": sum(utils) / len(utils), "gpu_utilisation_min": min(utils),
                "gpu_memory_used_mb_max": max(m for _, m in self.samples), "samples": len(utils)}


def bench_worker(names: list[str], device: str, batch: int, autocast: str, clips: int, batch_clips: int,
                 input_size: int | None, flops: dict[str, int]) -> dict:
    """All CNNs through one EmbeddingWorker, as the extraction runs them: upload batches of `batch_clips` whole clips
    (64 distinct frames each: no de-duplication gain), the next batch packed while the device computes."""
    size = input_size or 224
    cnns = [build_extractor(n, allow_random_weights=True, device=device, batch_size=batch, autocast=autocast,
                            input_size=input_size) for n in names]
    worker = EmbeddingWorker(cnns, batch_clips * FRAMES_PER_CLIP, size).load()
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (FRAMES_PER_CLIP, size, size, 3), dtype=np.uint8) for _ in range(4)]
    valid = np.ones(FRAMES_PER_CLIP, bool)

    def run(n_clips: int) -> None:
        batch_, pending = worker.new_batch(), None
        for k in range(n_clips):
            clip = distinct_frames(k, pool[k % len(pool)], valid, dedup=False)
            if not batch_.fits(clip):
                launched = worker.launch(batch_)
                if pending is not None:
                    pending.result()
                pending, batch_ = launched, worker.new_batch()
            batch_.add(clip)
        if pending is not None:
            pending.result()
        worker.launch(batch_).result()

    run(batch_clips)  # warm-up: cuDNN / oneDNN algorithm choice for the fixed shapes, allocator
    sync(worker.device)
    with GpuUtilisation() if worker.device.type == "cuda" else contextlib_null() as util:
        t = time.perf_counter()
        run(clips)
        sync(worker.device)
        seconds = time.perf_counter() - t
    frames = clips * FRAMES_PER_CLIP
    fps = frames / seconds
    flop = sum(flops[n] for n in names)
    out = {"extractors": names, "clips": clips, "batch_clips": batch_clips, "batch": batch, "input_size": size,
           "autocast": autocast, "seconds": seconds, "frames_per_s": fps, "flops_per_frame_all": flop,
           "achieved_flops": fps * flop,
           "desed_seconds_estimate": DESED_VIDEO_CLIPS * FRAMES_PER_CLIP / fps,
           "desed_estimate_how": f"{DESED_VIDEO_CLIPS:,} clips x {FRAMES_PER_CLIP} frames / measured frames/s, no "
                                 f"de-duplication gain (still images would make it faster)"}
    if util is not None:
        out.update(util.summary())
    return out


class contextlib_null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def bench_dedup(device: str, batch: int, input_size: int | None, autocast: str) -> dict:
    """What computing identical frames once gains in the pipeline: 4 still-image clips (64 copies of one frame each)
    vs 4 clips of 64 distinct frames through an OpenL3 embedding worker (one upload of the 4 clips; each still clip
    contributes one frame, padded passes included); and the hashing cost per 224 x 224 frame."""
    size = input_size or 224
    ex = build_extractor("openl3", allow_random_weights=True, device=device, batch_size=batch, autocast=autocast,
                         input_size=input_size)
    rng = np.random.default_rng(1)
    valid = np.ones(FRAMES_PER_CLIP, bool)
    sets = {"still": [np.repeat(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8), FRAMES_PER_CLIP, axis=0)
                      for _ in range(4)],
            "distinct": [rng.integers(0, 256, (FRAMES_PER_CLIP, size, size, 3), dtype=np.uint8) for _ in range(4)]}
    out = {"batch": batch, "input_size": size}
    worker = EmbeddingWorker([ex], 4 * FRAMES_PER_CLIP, size).load()
    worker.embed_clips([distinct_frames(0, sets["distinct"][0], valid, dedup=True)])  # warm-up
    for name, clips in sets.items():
        computed = ex.frames_computed
        sync(ex.device)
        t = time.perf_counter()
        worker.embed_clips([distinct_frames(i, c, valid, dedup=True) for i, c in enumerate(clips)])
        sync(ex.device)
        out[f"{name}_s"] = time.perf_counter() - t
        out[f"{name}_frames_computed"] = ex.frames_computed - computed
    out["still_speedup"] = out["distinct_s"] / out["still_s"]
    distinct = np.random.default_rng(2).integers(0, 256, (FRAMES_PER_CLIP, 224, 224, 3), dtype=np.uint8)
    t = time.perf_counter()
    for _ in range(5):
        unique_frames(distinct)
    out["hash_us_per_frame"] = (time.perf_counter() - t) / (5 * len(distinct)) * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="frames per batch (default 16 on CPU, 128 on GPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed batches (default 2 on CPU, 20 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all CPUs)")
    p.add_argument("--extractors", default=",".join(EXTRACTORS))
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/visual[_cuda])")
    p.add_argument("--worker-clips", type=int, default=None,
                   help="clips through the embedding worker with all CNNs (default 1 on CPU, 400 on GPU)")
    p.add_argument("--batch-clips", type=int, default=None, help="clips per upload batch (default 1 CPU, 16 GPU)")
    p.add_argument("--input-size", type=int, default=None, help="network input size for a quick smoke run "
                                                               "(default: the models' 224)")
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    batch = args.batch or (128 if cuda else 16)
    repeats = args.repeats or (20 if cuda else 2)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    autocast = "bf16" if cuda else "none"
    device = torch.device(args.device)

    machine = gpu_peak() if cuda else cpu_peak()
    machine["measured_matmul_flops"] = measured_matmul_flops(
        device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 2048, 20 if cuda else 3)
    frames = np.random.default_rng(0).integers(0, 256, (max(batch, 64), 224, 224, 3), dtype=np.uint8)

    rows = []
    names = args.extractors.split(",")
    for name in names:
        r = bench_extractor(name, args.device, batch, repeats, autocast, frames, args.input_size)
        if machine.get("peak_flops"):
            r["fraction_of_peak"] = r["achieved_flops"] / machine["peak_flops"]
        r["fraction_of_matmul"] = r["achieved_flops"] / machine["measured_matmul_flops"]
        rows.append(r)
        print(f"{name:7s} {r['frames_per_s']:9.1f} frames/s  {r['flops_per_frame'] / 1e9:6.2f} GFLOP/frame  "
              f"{r['achieved_flops'] / 1e9:8.1f} GFLOP/s  {100 * r.get('fraction_of_peak', float('nan')):5.1f}% of peak",
              flush=True)
    worker = bench_worker(names, args.device, batch, autocast, args.worker_clips or (400 if cuda else 1),
                          args.batch_clips or (16 if cuda else 1), args.input_size,
                          {r["extractor"]: r["flops_per_frame"] for r in rows})
    if machine.get("peak_flops"):
        worker["fraction_of_peak"] = worker["achieved_flops"] / machine["peak_flops"]
    print(f"worker ({'+'.join(names)}): {worker['frames_per_s']:.1f} frames/s through all; DESED "
          f"{DESED_VIDEO_CLIPS:,} clips x 64 frames: {worker['desed_seconds_estimate']:.0f} s"
          + (f"; GPU busy {worker['gpu_utilisation_mean']:.0f}%" if worker.get("gpu_utilisation_mean") is not None
             else ""), flush=True)
    dedup = bench_dedup(args.device, batch, args.input_size, autocast)
    print(f"dedup: 4 still-image clips {dedup['still_s']:.2f} s vs 4 clips of distinct frames {dedup['distinct_s']:.2f} s"
          f"; hashing {dedup['hash_us_per_frame']:.0f} us/frame", flush=True)

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": args.device,
              "machine": machine, "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
              "extractors": rows, "worker": worker, "dedup": dedup}
    stem = Path(args.out) if args.out else RESULTS / ("visual" if not cuda else "visual_cuda")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem.with_suffix('.json')} and .md")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    peak = f"{m['peak_flops'] / 1e9:,.0f} GFLOP/s" if m.get("peak_flops") else "unknown"
    lines = [
        f"# Visual embeddings throughput ({r['device']}, {r['date']})", "",
        f"Machine: {m['model']}; peak {peak} ({m['how']}); measured matmul "
        f"{m['measured_matmul_flops'] / 1e9:,.0f} GFLOP/s. torch {r['torch']}, {r['threads']} threads, "
        f"autocast {r['extractors'][0]['autocast']}. Random weights; `embed` timed end to end (uint8 frames in, "
        f"float32 embeddings out, preprocessing included), dedup off. 1-min load average at the end: "
        f"{r['load_average_1min']:.1f} (a load above the CPU count means other work shared the cores: "
        f"the frames/s are then lower bounds).", "",
        "| extractor | dim | batch | frames/s | GFLOP/frame | achieved GFLOP/s | % of peak | % of measured matmul |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in r["extractors"]:
        frac = f"{100 * e['fraction_of_peak']:.1f}" if "fraction_of_peak" in e else "n/a"
        lines.append(f"| {e['extractor']} | {e['dim']} | {e['batch']} | {e['frames_per_s']:.1f} | "
                     f"{e['flops_per_frame'] / 1e9:.2f} | {e['achieved_flops'] / 1e9:.1f} | {frac} | "
                     f"{100 * e['fraction_of_matmul']:.1f} |")
    w = r.get("worker")
    if w:
        where = "this GPU" if r["device"] == "cuda" else "this CPU (a CPU figure: DESED's video features need a GPU)"
        util = (f"; GPU busy {w['gpu_utilisation_mean']:.0f}% of the time on average (min "
                f"{w['gpu_utilisation_min']:.0f}%, nvidia-smi every 0.2 s), up to {w['gpu_memory_used_mb_max']:.0f} MB"
                if w.get("gpu_utilisation_mean") is not None else "")
        frac = f", {100 * w['fraction_of_peak']:.1f}% of peak" if "fraction_of_peak" in w else ""
        lines += ["", f"Embedding worker ({'+'.join(w['extractors'])} on one upload, {w['batch_clips']} clips x 64 "
                      f"frames per upload, {w['batch']} frames per forward pass, {w['input_size']} px, autocast "
                      f"{w['autocast']}): {w['clips']} clips in {w['seconds']:.1f} s = {w['frames_per_s']:.1f} frames/s "
                      f"through all of them ({w['achieved_flops'] / 1e9:,.0f} GFLOP/s{frac}){util}. "
                      f"**DESED on {where}: {w['desed_seconds_estimate']:,.0f} s** ({w['desed_estimate_how']}; "
                      f"target on one H100: under 300 s)."]
    d = r["dedup"]
    lines += ["", f"Identical frames computed once (OpenL3 worker, {d['input_size']} px, {d['batch']} frames per pass): "
                  f"4 still-image clips take {d['still_s']:.2f} s ({d['still_frames_computed']} distinct frames, in passes "
                  f"padded to {d['batch']}) against {d['distinct_s']:.2f} s for 4 clips of distinct frames "
                  f"({d['distinct_frames_computed']} frames): {d['still_speedup']:.0f}x; hashing costs "
                  f"{d['hash_us_per_frame']:.0f} us per 224x224 frame (in the decoder processes).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
