"""Throughput of the visual embeddings (OpenL3, VGG16, TCE): frames/s through `embed` (preprocessing included),
FLOPs per frame counted with torch's FlopCounterMode, and the fraction of the machine's peak FLOP/s that
this is; plus the cost and the gain of computing identical frames once (still-image videos).

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
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.base import build_extractor  # noqa: E402
from features.image_batching import unique_frames  # noqa: E402

EXTRACTORS = ("openl3", "vgg16", "tce")
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
    x = torch.zeros(1, 3, ex.input_size, ex.input_size, device=ex.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        ex._net(x)
    return int(counter.get_total_flops())


def bench_extractor(name: str, device: str, batch: int, repeats: int, autocast: str, frames: np.ndarray) -> dict:
    ex = build_extractor(name, allow_random_weights=True, device=device, batch_size=batch, autocast=autocast,
                         dedup_identical_frames=False)
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


def bench_dedup(device: str, frames: np.ndarray) -> dict:
    """A still-image clip (64 identical frames) with and without dedup, and the hashing cost on distinct frames."""
    clip = np.repeat(frames[:1], 64, axis=0)
    out = {}
    for dedup in (False, True):
        ex = build_extractor("openl3", allow_random_weights=True, device=device, dedup_identical_frames=dedup)
        ex.embed(frames[:2])
        sync(ex.device)
        t = time.perf_counter()
        ex.embed(clip)
        sync(ex.device)
        out["still_clip_s_dedup" if dedup else "still_clip_s_plain"] = time.perf_counter() - t
    distinct = np.ascontiguousarray(frames[:64])
    t = time.perf_counter()
    for _ in range(5):
        unique_frames(distinct)
    out["hash_us_per_frame"] = (time.perf_counter() - t) / (5 * len(distinct)) * 1e6
    out["still_clip_speedup"] = out["still_clip_s_plain"] / out["still_clip_s_dedup"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="frames per batch (default 16 on CPU, 128 on GPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed batches (default 2 on CPU, 20 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all CPUs)")
    p.add_argument("--extractors", default=",".join(EXTRACTORS))
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/visual[_cuda])")
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
    for name in args.extractors.split(","):
        r = bench_extractor(name, args.device, batch, repeats, autocast, frames)
        if machine.get("peak_flops"):
            r["fraction_of_peak"] = r["achieved_flops"] / machine["peak_flops"]
        r["fraction_of_matmul"] = r["achieved_flops"] / machine["measured_matmul_flops"]
        rows.append(r)
        print(f"{name:7s} {r['frames_per_s']:9.1f} frames/s  {r['flops_per_frame'] / 1e9:6.2f} GFLOP/frame  "
              f"{r['achieved_flops'] / 1e9:8.1f} GFLOP/s  {100 * r.get('fraction_of_peak', float('nan')):5.1f}% of peak",
              flush=True)
    dedup = bench_dedup(args.device, frames)
    print(f"dedup: still-image clip of 64 frames {dedup['still_clip_s_plain']:.2f} s -> "
          f"{dedup['still_clip_s_dedup']:.3f} s; hashing {dedup['hash_us_per_frame']:.0f} us/frame", flush=True)

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": args.device,
              "machine": machine, "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
              "extractors": rows, "dedup": dedup}
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
    d = r["dedup"]
    lines += ["", f"Identical frames computed once (OpenL3): a still-image clip of 64 frames takes "
                  f"{d['still_clip_s_plain']:.2f} s without and {d['still_clip_s_dedup']:.3f} s with deduplication "
                  f"({d['still_clip_speedup']:.0f}x); the hashing costs {d['hash_us_per_frame']:.0f} us per "
                  f"224x224 frame on clips with no repeats.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
