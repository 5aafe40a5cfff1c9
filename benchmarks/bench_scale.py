"""Extraction at DESED scale: both engines (plain and the Prefect flow) at 1k, 4k and all ~20.4k clips.

The manifest has DESED 2020's partition sizes (weak 1,578; unlabel_in_domain 14,412; synthetic20 2,584;
validation 1,168; eval public 692), scaled down proportionally for the smaller sizes. Audio files are hard links to
a few synthetic clips; every clip gets log-mel. Video: one recorded clip in `--video-every` (10) carries a YouTube
id (the others are named like soundscapes: audio-only), and a loopback host in its own process serves a few
synthetic videos under 84.5% of those ids (15.5% answer 404, DESED's share of vanished videos); those clips get
OpenL3 at 32 x 32 px (random weights). So every stage's work grows linearly with the clips, at a tenth of DESED's
video rate, which fits this 2-core machine's time.

Each (engine, size) runs in a fresh process (peak RSS is that process's own, `ru_maxrss`; its children, the
decoders and the Prefect API server, are reported apart), then reruns with nothing to do. Writes
benchmarks/results/scale.json and scale.md.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,4000,full] [--engines plain,prefect]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avsed.core.manifest import DESED_2020_PARTITIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DESED_2020_SIZES = {"weak": 1578, "unlabelled": 14412, "synthetic": 2584, "validation": 1168, "eval": 692}
FULL = sum(DESED_2020_SIZES.values())  # 20,434
VANISHED_SHARE = 0.155
FRAME_SIZE = 32


def partition_sizes(n: int) -> dict[str, int]:
    """DESED's partition sizes scaled to n clips (largest remainders, so they sum to n)."""
    exact = {k: v * n / FULL for k, v in DESED_2020_SIZES.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def youtube_id(n: int) -> str:
    return f"s{n:010d}"  # 11 characters, like YouTube's


def served(yid: str) -> bool:
    """84.5% of ids have a video on the host (deterministic)."""
    return zlib.crc32(yid.encode()) % 1000 >= VANISHED_SHARE * 1000


def write_desed(root: Path, n: int, video_every: int, sources: Path) -> dict:
    """A DESED-layout data set of n clips under root (metadata, audio hard links, served videos)."""
    wavs = sorted((sources / "audio").rglob("*.wav"))
    mp4s = sorted((sources / "videos").glob("*.mp4"))
    sizes = partition_sizes(n)
    videos = root / "videos"
    videos.mkdir(parents=True)
    counter = {"ids": 0, "served": 0, "clips": 0}
    for spec in DESED_2020_PARTITIONS:
        lines = {"weak": ["filename\tevent_labels"], "unlabelled": ["filename"]}.get(
            spec.supervision, ["filename\tonset\toffset\tevent_label"])
        audio_dir = root / "audio" / spec.audio
        audio_dir.mkdir(parents=True, exist_ok=True)
        for i in range(sizes[spec.name]):
            k = counter["clips"]
            counter["clips"] += 1
            if spec.name != "synthetic" and i % video_every == 0:
                yid = youtube_id(counter["ids"])
                counter["ids"] += 1
                name = f"{yid}_0_10.wav" if spec.name == "eval" else f"Y{yid}_0.000_10.000.wav"
                if served(yid):
                    os.link(mp4s[k % len(mp4s)], videos / f"{yid}.mp4")
                    counter["served"] += 1
            else:
                name = f"{spec.name[0]}{i:06d}.wav"  # no YouTube id: audio-only, like a soundscape
            os.link(wavs[k % len(wavs)], audio_dir / name)
            if spec.supervision == "weak":
                lines.append(f"{name}\tDog")
            elif spec.supervision == "unlabelled":
                lines.append(name)
            else:
                lines.append(f"{name}\t1.000\t3.500\tDog")
        meta = root / "metadata" / spec.metadata
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("\n".join(lines) + "\n")
    return {"clips": counter["clips"], "with_id": counter["ids"], "served": counter["served"],
            "partitions": sizes}


# --- one run, in a child process ----------------------------------------------------------------------------------

class TreeMemory:
    """Peak RSS of this process plus all its descendants (decoders, ffmpeg, the Prefect API server), sampled every
    0.2 s. (`RUSAGE_CHILDREN` is no use here: a child forked from this large process reports the parent's pages it
    held before its exec.)"""

    def __init__(self):
        import psutil

        self.me, self.peak_mb = psutil.Process(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self.me] + self.me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001 - a process that just ended
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(0.2)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(spec: dict) -> None:
    """Run one extraction (and a rerun) in this process; print one JSON line with the figures."""
    import torch

    torch.set_num_threads(1)  # the decoders and the host share the 2 cores
    from pipeline.download import DownloadConfig
    from pipeline.extract import ExtractConfig

    cfg = ExtractConfig(metadata=spec["metadata"], audio_dir=spec["audio"], store=spec["store"],
                        features=("logmel", "openl3"), allow_random_weights=True, frame_size=FRAME_SIZE,
                        extractor_configs={"openl3": {"input_size": FRAME_SIZE, "batch_size": 64}},
                        batch_clips=8, decode_workers=spec["decode_workers"],
                        download=DownloadConfig(url_template=spec["url_template"], concurrency=4))
    runs = []
    for attempt in ("first", "rerun"):
        t0 = time.perf_counter()
        with TreeMemory() as tree:
            if spec["engine"] == "plain":
                from pipeline.extract import run_extraction

                report = run_extraction(cfg, progress=False).to_dict()
            else:
                from flows import in_process_defaults

                in_process_defaults()
                from flows.extract import extract_features

                report = extract_features(config=cfg.to_dict())
        runs.append({"attempt": attempt, "seconds": time.perf_counter() - t0, "report": report,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "tree_peak_rss_mb": tree.peak_mb})
    files = sum(len(f) for _, _, f in os.walk(spec["store"]))
    print("RESULT " + json.dumps({"runs": runs, "store_files": files}), flush=True)


def run_child(engine: str, data: Path, store: Path, url_template: str, decode_workers: int, tmp: Path) -> dict:
    spec = {"engine": engine, "metadata": str(data / "metadata"), "audio": str(data / "audio"), "store": str(store),
            "url_template": url_template, "decode_workers": decode_workers}
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{engine} run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def summarise(engine: str, n: int, dataset: dict, out: dict) -> dict:
    first, rerun = out["runs"]
    report = first["report"]
    stages = {k: round(v, 2) for k, v in report.get("stage_seconds", {}).items()}
    return {"engine": engine, "clips": n, "clips_with_id": dataset["with_id"], "videos_served": dataset["served"],
            "videos_downloaded": report["videos_downloaded"], "openl3_rows": report["video_computed"].get("openl3", 0),
            "logmel_rows": report["audio_computed"].get("logmel", 0), "wall_seconds": round(first["seconds"], 1),
            # the run's own seconds (without the Prefect engine's temporary API server start)
            "seconds": round(report["seconds"], 1), "clips_per_second": round(n / report["seconds"], 2),
            "ms_per_clip": round(1000 * report["seconds"] / n, 1),
            "stage_seconds": stages, "peak_rss_mb": round(first["peak_rss_mb"]),
            "peak_rss_mb_with_rerun": round(rerun["peak_rss_mb"]),
            "tree_peak_rss_mb": round(max(first["tree_peak_rss_mb"], rerun["tree_peak_rss_mb"])),
            "rerun_seconds": round(rerun["report"]["seconds"], 1),
            "rerun_work": {k: rerun["report"][k] for k in ("new_clips", "audio_computed", "video_computed",
                                                            "videos_downloaded", "newly_missing_cached")},
            "store_files": out["store_files"]}


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# Extraction at DESED scale ({result['date']})", "",
             f"Machine: {result['machine']}. {result['how']}", "",
             "| engine | clips | videos (downloaded / with id) | seconds (wall) | clips/s | ms/clip | peak RSS MB | "
             "process tree peak MB | rerun s | store files |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['clips']:,} | {r['videos_downloaded']} / {r['clips_with_id']} | "
                     f"{r['seconds']} ({r['wall_seconds']}) | {r['clips_per_second']} | {r['ms_per_clip']} | "
                     f"{r['peak_rss_mb']} | {r['tree_peak_rss_mb']} | {r['rerun_seconds']} | {r['store_files']:,} |")
    lines += ["", "seconds: the run's own (its report); wall: the call, with the Prefect engine's temporary API server "
                  "start. Peak RSS: the extracting process (`ru_maxrss`); process tree: it plus its decoders, ffmpeg "
                  "and the Prefect API server, sampled every 0.2 s. Rerun: the same command again, nothing to do."]
    lines += ["", "Seconds per stage (first run; `(busy)`: time a stage's workers spent, summed over them, inside the "
                  "overlapping video stage):", ""]
    names = sorted({k for r in rows for k in r["stage_seconds"]}, key=lambda k: (k.endswith("(busy)"), k))
    lines += ["| engine | clips | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['clips']:,} | " + " | ".join(str(r["stage_seconds"].get(k, ""))
                                                                for k in names) + " |")
    if result.get("checks"):
        lines += ["", "Acceptance (issue #12):", ""] + [f"- {c}" for c in result["checks"]]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def checks(rows: list[dict]) -> list[str]:
    out = []
    for engine in sorted({r["engine"] for r in rows}):
        mine = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["clips"])
        for a, b in zip(mine, mine[1:]):
            out.append(f"{engine}: {b['clips'] / a['clips']:.1f}x the clips ({a['clips']:,} -> {b['clips']:,}): "
                       f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f} ({a['peak_rss_mb']} -> "
                       f"{b['peak_rss_mb']} MB), ms per clip {a['ms_per_clip']} -> {b['ms_per_clip']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,4000,full", help="clip counts, comma separated ('full' = 20,434)")
    p.add_argument("--engines", default="plain,prefect")
    p.add_argument("--video-every", type=int, default=10, help="one recorded clip in this many has a YouTube id")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--workdir", help="where the data sets and stores go (default: a temporary folder)")
    p.add_argument("--out", default=str(RESULTS / "scale"), help="output stem")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    from avsed.synthetic.video_host import VideoServerProcess
    from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset

    sizes = [FULL if s == "full" else int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="avsed-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = work / "sources"
    if not sources.exists():
        make_synthetic_dataset(sources, SynthConfig(clips=24, seed=1, missing_fraction=0.0), progress=False)
    rows = []
    out_stem = Path(args.out)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, shared with "
                         f"other work (load average at start {os.getloadavg()[0]:.1f})",
              "how": (f"Log-mel for every clip; OpenL3 (random weights, {FRAME_SIZE} px frames and input) for the "
                      f"clips with a served video; one recorded clip in {args.video_every} has a YouTube id, 15.5% "
                      f"of ids answer 404; downloads through yt-dlp from a loopback host in its own process "
                      f"(concurrency 4), {args.decode_workers} decoder processes, each engine and size in a fresh "
                      f"process, then a rerun with nothing to do."),
              "rows": rows}
    for n in sizes:
        data = work / f"desed-{n}"
        if data.exists():
            shutil.rmtree(data)
        dataset = write_desed(data, n, args.video_every, sources)
        for engine in args.engines.split(","):
            store = work / f"{engine}-{n}.zarr"
            for leftover in (store, Path(f"{store}.ledger.sqlite"), Path(f"{store}.videos")):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            with VideoServerProcess(data / "videos") as host:
                out = run_child(engine, data, store, host.url_template, args.decode_workers, work)
            rows.append(summarise(engine, n, dataset, out))
            print(json.dumps(rows[-1]), flush=True)
            result["checks"] = checks(rows)
            out_stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
            out_stem.with_suffix(".md").write_text(markdown(result))
            shutil.rmtree(store, ignore_errors=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
