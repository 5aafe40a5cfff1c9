"""`avsed demo`: the mission end to end on a synthetic DESED-shaped set, on a laptop-class CPU in minutes.

1. `avsed synth`: audio, DESED tsv metadata, videos whose picture shows the active classes (quiet events are
   visible but hard to hear); some videos absent, some a still image or black. Half of the strongly labelled
   training clips are recordings with video (DESED 2020's are all audio-only soundscapes), so that the
   visual stream gets frame-level supervision within a few hundred CPU steps.
2. The videos are served on 127.0.0.1 and the Prefect flow `extract-features` downloads them with yt-dlp,
   records the missing ones and writes log-mel and OpenL3 (random weights: no weights can be downloaded
   here; the store records `weights: random`) into the Zarr store.
3. Four models are trained on the cached store, side by side: audio-only, bi-encoder with fixed interpolation
   weights, bi-encoder with random interpolation weights during training, and (beyond the paper) a bi-encoder
   whose gate learns the weights per clip from what the encoders see (training/gate.py).
4. Each is evaluated (tuned on validation, five metrics on eval), split by video availability (Table 7),
   with the paper's claim printed as differences to the audio-only model; the learned bi-encoder's visual
   weight per eval clip is printed and plotted by what the video shows (content, still image, black screen,
   absent: the synthetic set's truth/videos.tsv).
5. A few more served videos are deleted and the extraction rerun: only the re-check happens, the newly
   missing videos are recorded, the cached features are kept.
6. `avsed detect` (detection/) with the fixed-weight bi-encoder on a long recording built from eval clips joined
   end to end (37 s, its picture ending after 30 s): detect/detections.tsv, a JSON of each window's weights and a
   PNG timeline.

Every number printed comes from this run. The model is the paper's conformer, narrower, without dropout,
with a faster teacher and a higher learning rate, so that it learns in a few hundred CPU steps; the paper's settings are the defaults of
`avsed train`. The conformer rather than the transformer: its relative-position cross-attention lets a
decoder frame find the same moment in the visual memory early in training, where the transformer's learned
absolute positions did not within 800 steps (the video then only helped its clip-level output).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

LEARNED = "learned"  # DEMO_MODELS' weights for a model whose gate learns them (model.gate.mode clip)
DEMO_MODELS = {
    # name: (encoders, interpolation weights during training)
    "audio-only": (["logmel"], None),
    # 0.75 / 0.25: one of the paper's grid values, biased towards the more salient audio as the paper advises
    "bi-encoder (fixed weights)": (["logmel", "openl3"], [0.75, 0.25]),
    "bi-encoder (random weights)": (["logmel", "openl3"], "random"),
    # beyond the paper: a gate chooses the weights per clip (equal weights are its prior: they mask missing video)
    "bi-encoder (learned weights)": (["logmel", "openl3"], LEARNED),
}


@dataclass(frozen=True)
class DemoConfig:
    clips: int = 500
    seed: int = 0
    # Above DESED's 15.5% so that the eval clips without video are numerous enough for stable numbers.
    missing_fraction: float = 0.3
    # synthetic (strong), weak, unlabelled, validation, eval: about 195 training clips, 105 for tuning and 200 for
    # evaluation, so that the split by video availability rests on about 140 and 60 clips (evaluation is cheap,
    # training time does not depend on the number of clips)
    partition_fractions: tuple[float, ...] = (0.12, 0.18, 0.09, 0.21, 0.40)
    strong_video_fraction: float = 0.5  # see the module docstring
    architecture: str = "conformer"
    # 300 steps (450 with three models): four models training at once on 2 cores must fit the demo's 10 minutes.
    # The CPU step is compute-bound: four models at 400 steps and batch (6, 6, 12) took 13 min 26 s, at 350 steps
    # and batch (6, 6, 6) 10 min 19 s.
    steps: int = 300
    # RAdam at 1e-2, x0.1 after 3/4 of the steps (the paper: 1e-3, x0.1 every 10k of 25k steps). A run this
    # short is learning-rate bound: at 3e-3 the audio-only model recalled 57% of the loud eval frames at
    # threshold 0.5, at 1e-2 77% (PSDS1 40 -> 47), and the bi-encoder found 40% of the quiet events instead of 3%.
    learning_rate: float = 1e-2
    lr_decay_at: float = 0.75
    # strong, weak, unlabelled. Not the paper's 1:1:2: the set has 46 unlabelled clips (each would be seen ~90
    # times in a run), and a quarter less work per step (0.55-0.63 s instead of 0.65-0.87 s per bi-encoder step
    # on a free core) keeps the labelled clips per step.
    batch: tuple[int, int, int] = (6, 6, 6)
    image_size: int = 64  # the synthetic videos are 64 px; frames and OpenL3's input stay at that size
    vanish: int = 3  # served videos deleted before the incremental rerun
    use_prefect: bool = True

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(clips=24, steps=4, batch=(2, 2, 2), vanish=2)


def demo_train_config(encoders: list[str], weights, cfg: DemoConfig, seed: int):
    from training.config import CNNConfig, GateConfig, ModelConfig, TrainConfig

    # The paper's structure (7 CNN blocks, 3 + 3 attention blocks, 3 heads) at a width a 2-core CPU trains in
    # a few minutes; no dropout (a quarter of a CPU step is drawing its masks, and a run of a few hundred
    # steps does not overfit) and a faster teacher suit a short run.
    model = ModelConfig(architecture=cfg.architecture, d_model=32, heads=3, d_head=16, ff_dim=64, dropout=0.0,
                        cnn=CNNConfig(filters=[4, 8, 16, 32, 32, 32, 32], dropout=0.0),
                        gate=GateConfig(mode="clip" if weights == LEARNED else "none"))
    weights = None if weights == LEARNED else weights
    strong, weak, unlabelled = cfg.batch
    return TrainConfig(model=model, encoders=list(encoders), interpolation_weights=weights,
                       batch_strong=strong, batch_weak=weak, batch_unlabelled=unlabelled, epochs=1,
                       steps_per_epoch=cfg.steps, learning_rate=cfg.learning_rate,
                       lr_decay_every=max(1, int(cfg.lr_decay_at * cfg.steps)), ema_decay=0.98,
                       seed=seed, device="cpu", log_every=max(1, cfg.steps // 10), checkpoint_every=cfg.steps,
                       progress=True).validate()


def demo_extract_config(data: Path, store: Path, url_template: str, cfg: DemoConfig):
    """The demo's extraction: log-mel and OpenL3 (random weights) at the synthetic videos' size."""
    from pipeline.download import DownloadConfig
    from pipeline.extract import ExtractConfig

    return ExtractConfig(
        metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
        features=("logmel", "openl3"), allow_random_weights=True, frame_size=cfg.image_size,
        extractor_configs={"openl3": {"input_size": cfg.image_size}},
        download=DownloadConfig(url_template=url_template, concurrency=4), batch_clips=16)


def demo_synth_config(cfg: DemoConfig):
    from avsed.synthetic.dataset import SynthConfig

    return SynthConfig(clips=cfg.clips, seed=cfg.seed, missing_fraction=cfg.missing_fraction,
                       partition_fractions=cfg.partition_fractions, strong_video_fraction=cfg.strong_video_fraction)


def _extract(extract_cfg, use_prefect: bool) -> dict:
    if use_prefect:
        from flows.extract import extract_features

        return extract_features(config=extract_cfg)
    from pipeline.extract import run_extraction

    return run_extraction(extract_cfg).to_dict()


def run_demo(out_dir: str | Path = "demo-out", quick: bool = False, config: DemoConfig | None = None) -> int:
    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import in_process_defaults

    in_process_defaults()
    import torch

    from avsed.synthetic.video_host import VideoServerProcess
    from pipeline.status import format_status, store_status
    from avsed.synthetic.dataset import make_synthetic_dataset

    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"[demo] {name}: {timings[name]:.1f} s", flush=True)

    # 1. data
    t0 = time.perf_counter()
    data = out / "data"
    make_synthetic_dataset(data, demo_synth_config(cfg), workers=cpus)
    stage("synthetic data", t0)

    # 2. extraction through Prefect, videos served on loopback
    store = out / "features.zarr"
    # its own process, as YouTube is another machine: a thread of this busy process answers too late
    server = VideoServerProcess(data / "videos")
    server.start()
    try:
        extract_cfg = demo_extract_config(data, store, server.url_template, cfg)
        t0 = time.perf_counter()
        first = _extract(extract_cfg, cfg.use_prefect)
        stage("extract-features", t0)
        status = store_status(store)
        print(format_status(status))

        # 3. training and 4. evaluation (split by video availability)
        t0 = time.perf_counter()
        checkpoints, results = _train_and_evaluate(out, store, data / "truth" / "videos.tsv", cfg, cpus, timings)
        stage("train and evaluate (all models)", t0)
        paths = _write_demo_report(results, checkpoints, out / "report")

        # 5. videos vanish; the rerun records them and keeps the features
        t0 = time.perf_counter()
        vanished = vanish_videos(store, data / "videos", cfg.vanish, cfg.seed)
        # Months later, in real use: cached videos are re-checked once they were last checked 30 days ago. The demo's
        # rerun comes minutes later, so it asks for the re-check now.
        second = _extract(extract_cfg.model_copy(update={"recheck_after_days": 0}), cfg.use_prefect)
        stage("incremental rerun", t0)
        after = store_status(store)
    finally:
        server.stop()

    # 6. the trained bi-encoder on a long recording of eval clips joined end to end, video for its first 30 s
    t0 = time.perf_counter()
    detected = detect_long_recording(out, checkpoints["bi-encoder (fixed weights)"], cfg)
    stage("detect (long recording)", t0)

    timings["total"] = round(time.perf_counter() - t_all, 2)
    summary_json = {
        "config": dataclasses.asdict(cfg), "timings_seconds": timings,
        "data": {"clips": status["clips"], "partitions": status["partitions"], "videos": status["videos"]},
        "first_extraction": first, "rerun": {
            "vanished_videos": vanished, "new_clips": second["new_clips"],
            "audio_computed": second["audio_computed"], "video_computed": second["video_computed"],
            "videos_downloaded": second["videos_downloaded"], "newly_missing_cached": second["newly_missing_cached"],
            "videos_after": after["videos"]},
        "results": {name: {s: r.sets[s].metrics for s in r.sets} for name, r in results.items()},
        "learned_weights": {name: r.info["learned_weights"] for name, r in results.items() if "learned_weights" in r.info},
        "detect": detected,
    }
    (out / "summary.json").write_text(json.dumps(summary_json, indent=2, default=float))
    _print_summary(paths, results, vanished, second, after, detected, out, timings["total"])
    return 0


def _train_and_evaluate(out: Path, store: Path, truth: Path, cfg: DemoConfig, cpus: int,
                        timings: dict[str, float]) -> tuple[dict[str, Path], dict]:
    """Every demo model trained and evaluated, side by side where there are cores for it: each model is evaluated
    in its training process as soon as it is trained, while the others train. Returns (run dirs, results)."""
    from evaluation.evaluate import EvaluationResult

    runs = out / "runs"
    checkpoints = {name: runs / run_dir_name(name) for name in DEMO_MODELS}
    for wave in training_waves(list(DEMO_MODELS), cpus):
        threads = max(1, cpus // len(wave))
        jobs = [(str(store), demo_train_config(*DEMO_MODELS[name], cfg, cfg.seed).to_dict(),
                 str(checkpoints[name]), threads, name, k, str(truth)) for k, name in enumerate(wave)]
        for name, (train_s, eval_s) in zip(wave, run_side_by_side(jobs)):
            timings[f"train {name}"], timings[f"evaluate {name}"] = round(train_s, 2), round(eval_s, 2)
            print(f"[demo] train {name}: {train_s:.1f} s ({threads} thread{'s' * (threads > 1)}, "
                  f"{len(wave)} model{'s' * (len(wave) > 1)} at once), evaluate: {eval_s:.1f} s", flush=True)
    results = {name: EvaluationResult.load(run_dir / "evaluation" / "result.json")
               for name, run_dir in checkpoints.items()}
    return checkpoints, results


def _write_demo_report(results: dict, checkpoints: dict[str, Path], report: Path) -> dict:
    """report/: the evaluation report of all models, PSD-ROC curves, the split by video availability (table and
    plot) and the learned model's weights. Returns write_report's paths."""
    from evaluation.plots import plot_psd_roc
    from evaluation.report import write_report

    paths = write_report(list(results.values()), report)
    plot_psd_roc(results, report / "psd_roc.png")
    plot_split(results, report / "split_by_video.png")
    (report / "split_by_video.md").write_text(
        f"# Split by video availability (eval partition), values in %\n\n{split_markdown(results)}\n\n"
        f"# Bi-encoder minus audio-only, points\n\n{claim_markdown(results)}\n\n"
        f"# Learned visual weight by what the video shows (eval partition)\n\n{learned_markdown(results)}\n")
    for name in results:
        if "learned_weights" in results[name].info:
            shutil.copyfile(checkpoints[name] / "evaluation" / "learned_weights.png", report / "learned_weights.png")
    return paths


def _print_summary(paths: dict, results: dict, vanished: list, second: dict, after: dict, detected: dict, out: Path,
                   total_seconds: float) -> None:
    """What the demo ends with on the terminal: the report, the split, the claim, the rerun and the detection."""
    print()
    print(paths["markdown"].read_text())
    print("\nsplit by video availability (eval partition), values in %:")
    print(split_markdown(results))
    print("\nthe paper's claim, bi-encoder minus audio-only in points (better with video, about equal without):")
    print(claim_markdown(results))
    print("\nthe learned bi-encoder's visual weight (1 - audio weight) by what the eval clip's video shows:")
    print(learned_markdown(results))
    print(f"\nincremental rerun after deleting {len(vanished)} served videos: {second['new_clips']} new clips, "
          f"audio computed {second['audio_computed'] or 0}, video features computed {second['video_computed'] or 0}, "
          f"videos downloaded {second['videos_downloaded']}, newly missing (features kept) "
          f"{second['newly_missing_cached']}; ledger now: {after['videos']}")
    print(f"\navsed detect on {detected['recording']} ({detected['seconds']:.0f} s, video for its first "
          f"{detected['video_seconds']:.0f} s): {detected['found']} events found of {detected['truth']} in it; "
          f"{detected['tsv']} and its timeline {detected['png']}")
    print(f"\noutputs in {out}: report/report.md, report/*.png, runs/*/evaluation/, detect/, summary.json "
          f"(total {total_seconds:.0f} s)")


def training_waves(names: list[str], cpus: int) -> list[list[str]]:
    """Which demo models train at the same time: with two cores or more, all of them, one thread each (several
    to a model where there are more cores than models); with one core, one after the other.

    A CPU step of these small models is mostly short kernels that two threads barely share (measured here: 0.31 s
    per bi-encoder step with 2 threads, 0.50 s with 1, and 0.50 s each for two 1-thread runs side by side), so
    1-thread runs do the most work per second. With four models on two cores, waves (the three bi-encoders, then
    the audio-only model on both cores; or two and two) leave a core idle or use the less efficient 2-thread run,
    while four processes at once keep both cores busy with 1-thread runs until the last one ends."""
    if cpus < 2:
        return [[n] for n in names]
    return [list(names)]


def run_dir_name(name: str) -> str:
    """A demo model's run directory: "bi-encoder (fixed weights)" -> "bi-encoder_fixed_weights"."""
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def evaluate_demo_run(run_dir: str | Path, store: str | Path, name: str, video_truth: str | Path):
    """Evaluate the run of demo model `name` as the paper does (post-processing tuned on validation; for a
    bi-encoder with fixed or random training weights also the inference audio weight from the paper's grid; a
    learned one chooses its own per clip), split by video availability, into <run>/evaluation/result.json."""
    from evaluation.run import PAPER_AUDIO_WEIGHTS, evaluate_checkpoint

    run_dir = Path(run_dir)
    grid = PAPER_AUDIO_WEIGHTS if len(DEMO_MODELS[name][0]) > 1 else None
    ev = evaluate_checkpoint(run_dir, store, run_dir / "evaluation", split_by_availability=True,
                             audio_weight_grid=grid, device="cpu", video_truth=video_truth)
    ev.result.info["model"] = name
    ev.result.save(run_dir / "evaluation" / "result.json")
    return ev.result


def _train_job(store: str, config: dict, run_dir: str, threads: int, name: str, position: int,
               video_truth: str) -> tuple[float, float]:
    """Train demo model `name`, then evaluate it (evaluate_demo_run). Returns the seconds of each."""
    import torch

    from training.train import train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train(store, config, run_dir, resume=True, progress_desc=f"train {name}", progress_position=position)
    t1 = time.perf_counter()
    evaluate_demo_run(run_dir, store, name, video_truth)
    return t1 - t0, time.perf_counter() - t1


def run_side_by_side(jobs: list[tuple]) -> list[tuple[float, float]]:
    """Run `_train_job`s, one process each when there are several (spawned: a forked torch with threads is
    unsafe); returns each job's seconds of training and of evaluation."""
    if len(jobs) == 1:
        return [_train_job(*jobs[0])]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_train_job, *zip(*jobs)))


def vanish_videos(store_path: Path, video_dir: Path, n: int, seed: int) -> list[str]:
    """Delete `n` served videos of clips whose features are cached (as YouTube takes videos down)."""
    from avsed.core.store import FeatureStore

    store = FeatureStore.open(store_path)
    ids = [y for y, p in zip(store.strings("youtube_id"), store.present("openl3")) if p and y]
    chosen = sorted(random.Random(seed).sample(sorted(ids), min(n, len(ids))))
    for youtube_id in chosen:
        (video_dir / f"{youtube_id}.mp4").unlink(missing_ok=True)
    return chosen


def _groups(results: dict) -> dict:
    return {name: [r] for name, r in results.items()}  # one seed per demo model


def split_markdown(results: dict) -> str:
    """Each model's five metrics on the eval clips with and without video (and forced audio-only), in %."""
    from evaluation.report import split_table, to_markdown

    return to_markdown(split_table(_groups(results)), decimals=1, drop=("seeds",)).rstrip("\n")


def claim_markdown(results: dict, baseline: str = "audio-only") -> str:
    """The paper's claim as differences: each bi-encoder minus the audio-only model, in points, on eval clips
    with video and without (the paper: better with video, about equal without)."""
    from evaluation.report import audio_only_baselines, split_differences, to_markdown

    groups = _groups(results)
    rows = split_differences(groups, audio_only_baselines(groups, baseline))
    return to_markdown(rows, decimals=1, drop=("baseline", "seeds", "baseline_seeds")).rstrip("\n")


def learned_markdown(results: dict) -> str:
    """Per model with learned weights: each video kind's eval clips and their mean visual weight ± std."""
    from evaluation.gate_weights import UNINFORMATIVE

    rows = ["| model | video | clips | visual weight |", "|---|---|---:|---:|"]
    for name, r in results.items():
        for kind, s in (r.info.get("learned_weights") or {}).items():
            note = " (shows nothing useful)" if kind in UNINFORMATIVE else ""
            spread = f" ± {s['visual_weight_std']:.3f}" if s["clips"] > 1 else ""
            rows.append(f"| {name} | {kind}{note} | {s['clips']} | {s['visual_weight_mean']:.3f}{spread} |")
    return "\n".join(rows)


def plot_split(results: dict, path: Path, baseline: str = "audio-only") -> Path:
    """evaluation.report.plot_split: the split by video and the differences to the audio-only model."""
    from evaluation.report import audio_only_baselines
    from evaluation.report import plot_split as plot

    groups = _groups(results)
    return plot(groups, path, audio_only_baselines(groups, baseline))


# --- 6. detect on a long recording ---------------------------------------------------------------------------------
@dataclass
class Piece:
    """One clip of a long recording: its name, where it starts in the recording, its length and its events there."""

    clip_id: str
    offset: float
    duration: float
    events: list


def eval_plans(synth, n: int) -> list:
    """The first `n` (or all, if fewer) eval clips of a synthetic set that start at 0 in their video."""
    from avsed.synthetic.dataset import plan_dataset

    return [p for p in plan_dataset(synth) if p.partition.name == "eval" and p.start == 0.0 and p.failure is None][:n]


def render_pieces(synth, plans: list, last_seconds: float | None = None) -> tuple[list, list, list[Piece]]:
    """Audio (at the set's rate) and video frames of each clip, the last one cut to `last_seconds`; every clip's
    video is rendered showing its events (whatever its kind in the set), and the events shifted onto the
    recording's time line."""
    from avsed.core.labels import Event
    from avsed.synthetic.dataset import render_audio, render_video_frames

    audio, frames, pieces, t = [], [], [], 0.0
    for k, plan in enumerate(plans):
        last = last_seconds is not None and k == len(plans) - 1
        duration = min(plan.duration, last_seconds) if last else plan.duration
        shown = dataclasses.replace(plan, video_kind="content", video_seconds=plan.duration)
        audio.append(render_audio(plan, synth)[: int(round(duration * synth.sample_rate))])
        frames.append(render_video_frames(shown, synth)[: int(round(duration * synth.video_fps))])
        pieces.append(Piece(plan.clip_id, t, duration, [Event(e.onset + t, min(e.offset, duration) + t, e.label)
                                                        for e in plan.events if e.onset < duration]))
        t += duration
    return audio, frames, pieces


def write_long_recording(synth, plans: list, path: Path, video_clips: int) -> list[Piece]:
    """An mp4 (H.264 + AAC) of `plans` joined end to end (the last clip cut to 7 s), with a picture for the first
    `video_clips` clips only; returns the pieces (their events are the recording's truth)."""
    import subprocess

    import imageio_ffmpeg
    import numpy as np
    import soundfile as sf

    audio, frames, pieces = render_pieces(synth, plans, last_seconds=7.0)
    wav = path.with_suffix(".wav")
    sf.write(wav, np.concatenate(audio), synth.sample_rate, subtype="PCM_16")
    video = np.concatenate(frames[:video_clips])
    n, h, w, _ = video.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{synth.video_fps:g}", "-i", "-", "-i", str(wav), "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(video).tobytes(), capture_output=True, check=True)
    wav.unlink()
    return pieces


def detect_long_recording(out: Path, run_dir: Path, cfg: DemoConfig) -> dict:
    """`avsed detect` (detection.detect) with the demo's bi-encoder on four eval clips joined into one recording
    (37 s), whose picture ends after three of them: the last windows take the audio-only path."""
    from detection.detect import detect

    plans = eval_plans(demo_synth_config(cfg), 4)  # fewer in the quick demo's 24 clips
    n = len(plans)
    recording = out / "detect" / "kitchen_and_garden.mp4"
    recording.parent.mkdir(parents=True, exist_ok=True)
    pieces = write_long_recording(demo_synth_config(cfg), plans, recording, video_clips=max(1, n - 1))
    summary = detect(run_dir, [str(recording)], out / "detect", progress=False, echo=print)
    rec = summary.recordings[0]
    return {"recording": str(recording), "seconds": round(rec.duration, 1),
            "video_seconds": round(sum(p.duration for p in pieces[: max(1, n - 1)]), 1),
            "found": len(rec.events), "truth": sum(len(p.events) for p in pieces),
            "tsv": str(out / "detect" / "detections.tsv"), "png": str(rec.outputs.get("png"))}
