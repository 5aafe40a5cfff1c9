"""Speed of `avsed detect`: seconds per hour of audio through detection.detect.detect_recording (reading and
resampling the file, log-mel per window, model forward passes in batches of windows, overlap-averaging and
post-processing), for the paper-sized transformer and conformer audio-only models and for an audio + video
transformer bi-encoder (log-mel + OpenL3 on decoded frames at 224 px, and at the demo's 64 px).

    .venv/bin/python benchmarks/bench_detect.py                # this CPU
    .venv/bin/python benchmarks/bench_detect.py --device cuda  # a GPU

Untrained weights (speed does not depend on their values); synthetic noise recordings, the audio+video ones with
a picture that changes every frame (no identical frames to skip). Times are scaled linearly from the recording's
length to an hour (the work is per window). The machine's load average is recorded before and after each
measurement, and the CPU time this process used (all its threads; ffmpeg's decoding of frames runs in a child
process and is not in it): on a shared machine they say how much of the CPU the benchmark had. Writes
benchmarks/results/detect[_<device>].json/.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.detect import detect_recording  # noqa: E402
from detection.detector import Detector  # noqa: E402
from features.logmel import LogMel  # noqa: E402
from features.openl3 import OpenL3, OpenL3Config  # noqa: E402
from avsed.core.classes import DESED_CLASSES  # noqa: E402
from avsed.core.labels import ClipTiming  # noqa: E402
from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.models import build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def detector(architecture: str, video: bool, frame_size: int, device: str) -> Detector:
    """A paper-sized model (the config's defaults) with untrained weights, as a run would give it."""
    encoders = ["logmel", "openl3"] if video else ["logmel"]
    config = TrainConfig(model=ModelConfig(architecture=architecture), encoders=encoders, device=device)
    model = build_model(config.model, [512] if video else []).to(device).eval()
    n = len(DESED_CLASSES)
    stats = {"logmel": (np.full(64, -4.0, np.float32), np.full(64, 2.0, np.float32)),
             "openl3": (np.zeros(512, np.float32), np.ones(512, np.float32))}
    visual = [OpenL3(OpenL3Config(allow_random_weights=True, device=device, input_size=frame_size,
                                  batch_size=64))] if video else []
    weights = torch.tensor([0.75, 0.25] if video else [1.0])
    return Detector(Path("untrained"), config, model, DESED_CLASSES, ClipTiming(), np.full(n, 0.5),
                    np.ones(n, np.int64), weights, LogMel(), visual, stats, frame_size,
                    ["float16"] if video else [], postprocessing={"source": "benchmark"})


def make_recording(path: Path, seconds: float, frame_size: int | None) -> Path:
    rate = 44100
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * rate)).astype(np.float32)
    if frame_size is None:
        sf.write(path, audio, rate, subtype="PCM_16")
        return path
    wav = path.with_suffix(".wav")
    sf.write(wav, audio, rate, subtype="PCM_16")
    # a moving test pattern at 12.8 fps (every frame differs), h264 + aac, as a downloaded video would be
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
           f"testsrc2=size={frame_size}x{frame_size}:rate=12.8:duration={seconds}", "-i", str(wav),
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


def measure(name: str, det: Detector, path: Path, hop: float, batch: int) -> dict:
    load_before = os.getloadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    rec = detect_recording(det, path, path.name, hop_seconds=hop, batch_windows=batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    load_after = os.getloadavg()
    row = {"model": name, "recording_seconds": round(rec.duration, 1), "windows": rec.grid.n_windows,
           "windows_with_video": int(rec.window_video.sum()), "hop_seconds": hop, "batch_windows": batch,
           "seconds": round(seconds, 2), "seconds_per_hour_of_audio": round(seconds * 3600 / rec.duration, 1),
           "cpu_seconds_per_hour_of_audio": round(cpu * 3600 / rec.duration, 1),
           "load_average_1min_before": round(load_before[0], 2), "load_average_1min_after": round(load_after[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--audio-minutes", type=float, default=10.0, help="length of the audio-only recording")
    p.add_argument("--video-minutes", type=float, default=2.0, help="length of the audio + video recordings")
    p.add_argument("--hop", type=float, default=5.0)
    p.add_argument("--batch-windows", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = make_recording(Path(tmp) / "audio.wav", args.audio_minutes * 60, None)
        for arch in ("transformer", "conformer"):
            rows.append(measure(f"{arch} audio-only", detector(arch, False, 224, args.device), audio, args.hop,
                                args.batch_windows))
        for size in (224, 64):
            video = make_recording(Path(tmp) / f"video{size}.mp4", args.video_minutes * 60, size)
            rows.append(measure(f"transformer logmel+openl3, {size} px frames", detector("transformer", True, size,
                                                                                          args.device),
                                video, args.hop, args.batch_windows))
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
            "torch_threads": torch.get_num_threads(), "rows": rows}
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"detect{suffix}.json").write_text(json.dumps(info, indent=1))
    lines = [f"# `avsed detect` speed ({info['device']}, {info['machine']}, {info['torch_threads']} torch threads, "
             f"{info['date']})", "",
             "Paper-sized models, untrained weights; 10-s windows every 5 s, 16 windows per batch. Seconds per hour "
             "of audio scaled from the recording's length. Load average (1 min) before / after: how busy the shared "
             "machine was.", "",
             "| model | recording | windows | seconds | s per hour of audio | CPU s per hour of audio | load before / after |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['recording_seconds']:.0f} s | {r['windows']} | {r['seconds']:.1f} | "
                     f"{r['seconds_per_hour_of_audio']:.1f} | {r['cpu_seconds_per_hour_of_audio']:.1f} | "
                     f"{r['load_average_1min_before']:.1f} / "
                     f"{r['load_average_1min_after']:.1f} |")
    (RESULTS / f"detect{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
