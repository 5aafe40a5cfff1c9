"""Training-stage benchmark: data-loader clips/s and training samples/s at the paper's model size and batch.

Builds a synthetic store (or uses --store), loads it into resident tensors (store -> tensors clips/s),
assembles batches (sampler + batched indexing + mixup, clips/s) and times training steps (student forward +
backward + teacher forward + RAdam + EMA) at batch 128 (32 strong / 32 weak / 64 unlabelled) for each
architecture with audio only and with one visual encoder. Writes benchmarks/results/training.json and .md.

    .venv/bin/python benchmarks/bench_training.py                 # CPU, a few steps
    .venv/bin/python benchmarks/bench_training.py --steps 200 --bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import FeatureStore  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import BatchComposer  # noqa: E402
from training.fusion import resolve_weights  # noqa: E402
from training.mixup import maybe_mixup  # noqa: E402
from training.synthetic_store import SyntheticStoreSpec, build_synthetic_store  # noqa: E402
from training.train import load_training_data, resolve_device, sample_training_weights, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="existing store (default: build a synthetic one)")
    ap.add_argument("--clips", type=int, default=256, help="training clips of the synthetic store")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 on CPU, 100 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 on CPU, 10 on CUDA)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--architectures", default="transformer,conformer")
    ap.add_argument("--out", type=Path, default=RESULTS / "training")
    args = ap.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (100 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    store_path = args.store
    if store_path is None:
        n = args.clips
        store_path = work / "features.zarr"
        t = time.perf_counter()
        build_synthetic_store(store_path, SyntheticStoreSpec(
            clips={"synthetic": n // 4, "weak": n // 4, "unlabelled": n // 2, "validation": 8, "eval": 8},
            visual={"openl3": 512}, missing_fraction=0.155))
        print(f"built synthetic store ({n} training clips) in {time.perf_counter() - t:.1f} s")
    results: dict = {"device": device_name(device), "torch": torch.__version__, "bf16": args.bf16,
                     "compile": args.compile, "timed_steps": steps, "warmup_steps": warmup,
                     "batch": 128, "store_clips": FeatureStore.open(store_path).n_clips, "runs": []}

    base = TrainConfig(encoders=["logmel", "openl3"], device=str(device), bf16=args.bf16, compile=args.compile,
                       progress=False, log_every=10 ** 9, checkpoint_every=10 ** 9)
    # Store -> resident tensors.
    t = time.perf_counter()
    data = load_training_data(store_path, base, device)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    n_loaded = len(data.tensors)
    results["loader"] = {"clips": n_loaded, "store_to_tensors_s": load_s, "store_to_tensors_clips_per_s": n_loaded / load_s}
    # Batch assembly (what the loop does per step before the forward pass).
    composer = BatchComposer(data.tensors.kind.cpu().numpy(), [32, 32, 64], seed=0)
    rng = np.random.default_rng(0)
    n_batches = 200
    t = time.perf_counter()
    for step in range(n_batches):
        batch = data.tensors.take(torch.from_numpy(composer.indices(step)).to(device))
        batch, _ = maybe_mixup(batch, composer.slices, rng, 0.33, 0.2)
        resolve_weights(sample_training_weights(base, rng).to(device), batch.available)
    if cuda:
        torch.cuda.synchronize()
    batch_s = (time.perf_counter() - t) / n_batches
    results["loader"].update({"batch_assembly_ms": batch_s * 1e3, "batch_assembly_clips_per_s": 128 / batch_s})
    print(f"loader: store->tensors {n_loaded / load_s:.0f} clips/s; batch assembly {batch_s * 1e3:.2f} ms "
          f"({128 / batch_s:.0f} clips/s)")

    for arch in args.architectures.split(","):
        for encoders in (["logmel"], ["logmel", "openl3"]):
            config = TrainConfig.from_dict({**base.to_dict(), "encoders": encoders})
            config.model.architecture = arch
            config.epochs, config.steps_per_epoch = 1, warmup + steps
            run_dir = work / f"{arch}_{len(encoders)}"
            sub = data if len(encoders) == 2 else type(data)(
                rows=data.rows, clip_ids=data.clip_ids, partitions=data.partitions, durations=data.durations,
                tensors=type(data.tensors)(data.tensors.logmel, [], [], data.tensors.available[:, :1],
                                           data.tensors.strong, data.tensors.weak, data.tensors.kind),
                encoders=["logmel"], provenance={"logmel": data.provenance["logmel"]})
            train(store_path, config, run_dir, stop_after=warmup, data=sub)
            res = train(store_path, config, run_dir, resume=True, data=sub)
            sps = res.samples_per_second
            full_run_min = 25000 * 128 / sps / 60  # the paper schedule: 100 epochs x 250 batches of 128
            run = {"architecture": arch, "encoders": encoders, "samples_per_second": sps,
                   "step_ms": 128 / sps * 1e3, "projected_paper_schedule_min": full_run_min}
            if cuda:
                run["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            results["runs"].append(run)
            print(f"{arch:12s} {'+'.join(encoders):15s} {sps:8.1f} samples/s  {128 / sps * 1e3:8.1f} ms/step  "
                  f"25k steps: {full_run_min:.1f} min")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [f"# Training benchmark ({results['device']})", "",
             f"torch {results['torch']}, batch 128 (32 strong / 32 weak / 64 unlabelled), paper-sized models, "
             f"bf16 {args.bf16}, compile {args.compile}, {steps} timed steps after {warmup} warm-up.", "",
             f"- store -> resident tensors: {results['loader']['store_to_tensors_clips_per_s']:.0f} clips/s "
             f"({n_loaded} clips in {load_s:.2f} s)",
             f"- batch assembly (sampler + batched indexing + mixup): {batch_s * 1e3:.2f} ms/batch = "
             f"{128 / batch_s:.0f} clips/s", "",
             "| architecture | encoders | samples/s | ms/step | 25k steps (min) |", "|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['architecture']} | {'+'.join(r['encoders'])} | {r['samples_per_second']:.1f} | "
                     f"{r['step_ms']:.1f} | {r['projected_paper_schedule_min']:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
