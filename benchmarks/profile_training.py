"""Where a training step's GPU time goes: the kernels and ops of one seed's step by device time, and the CNN
front-end alone (forward + backward at batch 128) in its variants (as is, channels_last, torch.compile), so the
step's cost can be split between the front-end and the attention model before anything is changed.

    .venv/bin/python benchmarks/profile_training.py --device cuda      # GPU (the point of it)
    .venv/bin/python benchmarks/profile_training.py --device cpu --clips 32 --steps 1   # smoke run

Writes benchmarks/results/profile_training[_<device>].json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_training import build_store, config_for, device_name  # noqa: E402
from training.cnn import CNNFrontEnd  # noqa: E402
from training.train import load_training_data, prepare_group, resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_profile(store: Path, arch: str, streams: int, device: torch.device, steps: int, top: int) -> dict:
    """Top ops (self device time) and top kernels of `steps` eager steps of one seed."""
    config = config_for(arch, streams, device)
    data = load_training_data(store, config, device)
    group = prepare_group(config, [0], data, device)
    for step in range(3):
        group.before_step(step)
        group.step_fn()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for step in range(3, 3 + steps):
            group.before_step(step)
            group.step_fn()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in prof.key_averages())
    rows = [{"name": e.key, "ms_per_step": getattr(e, key) / 1e3 / steps, "calls_per_step": e.count / steps}
            for e in ops[:top]]
    kernels = []
    if device.type == "cuda":
        by_name: dict[str, list[float]] = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                by_name.setdefault(e.name, []).append(e.device_time_total if hasattr(e, "device_time_total")
                                                      else e.cuda_time_total)
        kernels = sorted(({"name": n[:140], "ms_per_step": sum(t) / 1e3 / steps, "launches_per_step": len(t) / steps}
                          for n, t in by_name.items()), key=lambda r: r["ms_per_step"], reverse=True)[:top]
    return {"architecture": arch, "streams": streams, "total_self_ms_per_step": total / 1e3 / steps,
            "ops": rows, "kernels": kernels}


def cnn_variants(device: torch.device, batch: int, repeats: int) -> list[dict]:
    """Forward + backward of the CNN front-end alone, as the model has it and in two variants."""
    from training.config import CNNConfig

    out = []
    x = torch.randn(batch, 512, 64, device=device)
    bf16 = device.type == "cuda"
    variants = [("as is", False, False), ("channels_last", True, False)]
    if device.type == "cuda":
        variants.append(("torch.compile", False, True))
    for name, channels_last, compiled in variants:
        torch.manual_seed(0)
        net = CNNFrontEnd(CNNConfig(), 128).to(device).train()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        fn = torch.compile(net) if compiled else net

        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = fn(x)
            y.float().square().mean().backward()

        t0 = time.perf_counter()
        try:
            run()
            _sync(device)
            first = time.perf_counter() - t0
            for _ in range(2):
                run()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                run()
            _sync(device)
            out.append({"variant": name, "ms_fwd_bwd": (time.perf_counter() - t0) / repeats * 1e3,
                        "first_call_s": first})
        except Exception as e:  # a variant that fails is reported, the others still run
            out.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(out[-1], flush=True)
    return out


def markdown(r: dict) -> str:
    lines = [f"# Training step profile ({r['device']}, {r['date']})", ""]
    for p in r["profiles"]:
        lines += [f"## {p['architecture']}, {p['streams']} streams: ops by self device time "
                  f"(total {p['total_self_ms_per_step']:.1f} ms / step, eager)", "",
                  "| op | ms / step | calls / step |", "|---|---:|---:|"]
        lines += [f"| `{o['name']}` | {o['ms_per_step']:.2f} | {o['calls_per_step']:.0f} |" for o in p["ops"]]
        if p["kernels"]:
            lines += ["", "| kernel | ms / step | launches / step |", "|---|---:|---:|"]
            lines += [f"| `{k['name']}` | {k['ms_per_step']:.2f} | {k['launches_per_step']:.0f} |"
                      for k in p["kernels"]]
        lines.append("")
    lines += ["## CNN front-end alone (batch 128, forward + backward)", "", "| variant | ms | first call s |",
              "|---|---:|---:|"]
    for v in r["cnn"]:
        lines.append(f"| {v['variant']} | {v.get('ms_fwd_bwd', float('nan')):.2f} | "
                     f"{v.get('first_call_s', float('nan')):.1f} | " + (v.get("error", "")))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--configs", default="transformer:2,conformer:2", help="architecture:streams, comma separated")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    store = Path(tempfile.mkdtemp(prefix="profile_training_")) / "features.zarr"
    build_store(store, args.clips)
    result = {"device": device_name(device), "date": date.today().isoformat(), "torch": torch.__version__,
              "profiles": [], "cnn": []}
    result["cnn"] = cnn_variants(device, 128, 10 if device.type == "cuda" else 1)
    for spec in args.configs.split(","):
        arch, streams = spec.split(":")
        p = step_profile(store, arch, int(streams), device, args.steps, args.top)
        result["profiles"].append(p)
        print(f"{arch} {streams}: {p['total_self_ms_per_step']:.1f} ms/step", flush=True)
        for o in p["ops"][:12]:
            print(f"  {o['ms_per_step']:7.2f} ms {o['calls_per_step']:5.0f}x  {o['name']}", flush=True)
        for k in p["kernels"][:12]:
            print(f"  {k['ms_per_step']:7.2f} ms {k['launches_per_step']:5.0f}x  {k['name'][:100]}", flush=True)
    out = args.out or RESULTS / ("profile_training" + ("_cuda" if device.type == "cuda" else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
