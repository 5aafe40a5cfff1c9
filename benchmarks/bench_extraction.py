"""Extraction benchmark: download (yt-dlp via the loopback server) + decode (64 frames) + log-mel on synthetic clips.

Writes benchmarks/results/extraction.json and .md: clips/s overall and per stage, and each stage's share of time.
Usage: python benchmarks/bench_extraction.py [--clips 48] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from pipeline.download import DownloadConfig
from pipeline.extract import (ExtractConfig, decode_videos, download_videos, extract_audio_features,
                              plan_extraction)
from pipeline.serve import VideoServerProcess
from pipeline.synth import SynthConfig, make_synthetic_dataset

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "desed"
        t = time.perf_counter()
        make_synthetic_dataset(data, SynthConfig(clips=args.clips, seed=0, missing_fraction=0.155), progress=True)
        synth_s = time.perf_counter() - t
        with VideoServerProcess(data / "videos") as server:  # its own process, like a remote host
            # "openl3" is listed so that the plan contains the video jobs; only download and decode are timed.
            cfg = ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"),
                                store=str(Path(tmp) / "f.zarr"), features=("logmel", "openl3"),
                                allow_random_weights=True,
                                download=DownloadConfig(url_template=server.url_template, concurrency=args.concurrency))
            t0 = time.perf_counter()
            plan = plan_extraction(cfg)
            t1 = time.perf_counter()
            extract_audio_features(cfg, plan.audio_jobs, plan.audio_features, progress=True)
            t2 = time.perf_counter()
            downloads = download_videos(cfg, plan.video_jobs, progress=True)
            t3 = time.perf_counter()
            decoded = decode_videos(cfg, plan.video_jobs, downloads)
            t4 = time.perf_counter()
    stages = {"plan": t1 - t0, "logmel (read+resample+mel+write)": t2 - t1, "download": t3 - t2, "decode": t4 - t3}
    total = sum(stages.values())
    n_videos = sum(r.status == "available" for r in downloads)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "clips": len(plan.audio_jobs), "videos_downloaded": n_videos, "videos_decoded": len(decoded),
        "download_concurrency": args.concurrency, "synth_seconds": synth_s,
        "stage_seconds": stages, "stage_share": {k: v / total for k, v in stages.items()},
        "clips_per_second": len(plan.audio_jobs) / total,
        "per_stage_clips_per_second": {
            "logmel": len(plan.audio_jobs) / stages["logmel (read+resample+mel+write)"],
            "download": n_videos / stages["download"] if n_videos else None,
            "decode": len(decoded) / stages["decode"] if decoded else None},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extraction.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Extraction benchmark ({result['date']}, {result['machine']})", "",
             f"{result['clips']} clips, {n_videos} videos; {result['clips_per_second']:.2f} clips/s overall "
             "(download + decode + log-mel, no image CNN)", "",
             "| stage | seconds | share | clips/s |", "|---|---:|---:|---:|"]
    per = {"logmel (read+resample+mel+write)": "logmel", "download": "download", "decode": "decode"}
    for k, v in stages.items():
        rate = result["per_stage_clips_per_second"].get(per.get(k, ""), None)
        lines.append(f"| {k} | {v:.2f} | {100 * v / total:.0f}% | {'' if rate is None else f'{rate:.1f}'} |")
    (RESULTS / "extraction.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
