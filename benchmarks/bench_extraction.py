"""Extraction benchmark: the whole streaming pipeline (plan -> log-mel -> yt-dlp downloads from a loopback host ->
decoder processes -> embedding worker -> writer) on synthetic clips, with seconds per stage and clips/s.

    .venv/bin/python benchmarks/bench_extraction.py                       # CPU: OpenL3 at 32 px (a smoke figure)
    .venv/bin/python benchmarks/bench_extraction.py --device cuda --cnns openl3,vgg16,tce --clips 400
        # GPU: all three CNNs at 224 px, bf16, GPU utilisation sampled during the video stage

Random weights. Writes benchmarks/results/extraction[_cuda].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_visual import GpuUtilisation, contextlib_null  # noqa: E402
from pipeline.download import DownloadConfig  # noqa: E402
from pipeline.extract import ExtractConfig, run_extraction  # noqa: E402
from avsed.synthetic.video_host import VideoServerProcess  # noqa: E402
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4, help="downloads at once")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cnns", default="openl3", help="image CNNs, comma separated")
    ap.add_argument("--size", type=int, default=None, help="frame and network input size (default 32 CPU, 224 GPU)")
    ap.add_argument("--batch", type=int, default=None, help="frames per forward pass (default 64 CPU, 256 GPU)")
    ap.add_argument("--batch-clips", type=int, default=None, help="clips per upload (default 4 CPU, 16 GPU)")
    ap.add_argument("--decode-workers", type=int, default=None, help="default: the machine's cores")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/extraction[_cuda])")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    size = args.size or (224 if cuda else 32)
    cnns = tuple(c for c in args.cnns.split(",") if c)
    settings = {name: {"device": args.device, "input_size": None if size == 224 else size,
                       "batch_size": args.batch or (256 if cuda else 64), "autocast": "bf16" if cuda else "none"}
                for name in cnns}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "desed"
        t = time.perf_counter()
        make_synthetic_dataset(data, SynthConfig(clips=args.clips, seed=0, missing_fraction=0.155), progress=True)
        synth_s = time.perf_counter() - t
        with VideoServerProcess(data / "videos") as server:  # its own process, like a remote host
            cfg = ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"),
                                store=str(Path(tmp) / "f.zarr"), features=("logmel",) + cnns, frame_size=size,
                                allow_random_weights=True, extractor_configs=settings,
                                batch_clips=args.batch_clips or (16 if cuda else 4), decode_workers=args.decode_workers,
                                download=DownloadConfig(url_template=server.url_template, concurrency=args.concurrency))
            with GpuUtilisation() if cuda else contextlib_null() as util:
                report = run_extraction(cfg, progress=True)
    stages = {k: round(v, 3) for k, v in report.stage_seconds.items()}
    n_videos = report.videos_downloaded
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
        "machine": (torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, "
                    f"{len(os.sched_getaffinity(0))} cores (shared; CPU figures)"),
        "clips": report.clips, "videos_downloaded": n_videos, "video_rows": report.video_computed,
        "cnns": list(cnns), "size": size, "settings": settings, "download_concurrency": args.concurrency,
        "synth_seconds": synth_s, "seconds": report.seconds, "stage_seconds": stages,
        "clips_per_second": report.clips / report.seconds,
        "videos_per_second_in_video_stage": n_videos / report.stage_seconds["video"] if n_videos else None,
        **(util.summary() if util is not None else {}),
    }
    stem = Path(args.out) if args.out else RESULTS / ("extraction_cuda" if cuda else "extraction")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    where = "GPU" if cuda else "CPU (shared 2-core machine: a smoke figure, not the GPU target)"
    lines = [f"# Extraction benchmark ({result['date']}, {result['machine']}, {where})", "",
             f"{result['clips']} clips, {n_videos} videos; {', '.join(cnns)} at {size} px; "
             f"{result['clips_per_second']:.2f} clips/s overall, {result['seconds']:.1f} s"
             + (f"; GPU busy {result['gpu_utilisation_mean']:.0f}% on average over the run"
                if result.get("gpu_utilisation_mean") is not None else ""), "",
             "| stage | seconds |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in stages.items()] + [
             "", "`video` is the streamed stage (downloads, decoders, embedding worker and writer overlap); `(busy)` "
                 "rows are the time each part worked, summed over its workers."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
