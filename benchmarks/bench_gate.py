"""Learned interpolation weights on the demo's synthetic set over several seeds (issue #16's acceptance).

Trains the demo's four models (audio-only, bi-encoder with fixed 0.75/0.25, random and learned weights; the demo's
settings, conformer, with its steps and batch unless --steps / --batch say otherwise; training/gate.py for the
learned one) for each seed, evaluates each as the demo
does (tuned on validation; inference audio weight from the paper's grid for fixed and random; eval split by video
availability) and reports:
- the learned bi-encoder's mean visual weight on eval clips whose video is a black screen or a still image vs
  clips whose video shows the events (the synthetic set's truth/videos.tsv), per seed and mean ± std over seeds;
- CBF1 and PSDS2 of learned vs fixed vs random weights on eval clips with video, and every metric of learned vs
  audio-only on eval clips without video (mean ± std over seeds).

The demo's store is used as it is (`--demo-out`, the folder `avsed demo` wrote; made here the demo's way, without
Prefect, if it has no store). Seed 0 is the demo's own runs (<demo-out>/runs) when they are there, which must then
have the same steps and batch (a resume with other settings refuses). One training process at a time
(the seeds of a model together, training/group.py), all threads of the machine.

    .venv/bin/python benchmarks/bench_gate.py --demo-out demo-out [--seeds 0,1,2] [--steps 450 --batch 6,6,12]

Writes benchmarks/results/gate.json, gate.md and gate.png; runs go to <demo-out>/gate_bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avsed.demo import (DEMO_MODELS, DemoConfig, demo_extract_config, demo_synth_config, demo_train_config,  # noqa: E402
                        evaluate_demo_run, run_dir_name)
from evaluation.evaluate import METRICS, EvaluationResult  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEARNED = "bi-encoder (learned weights)"
FIXED, RANDOM, AUDIO = "bi-encoder (fixed weights)", "bi-encoder (random weights)", "audio-only"
SHOWS_EVENTS, SHOWS_NOTHING = ("content",), ("still", "black")


def ensure_store(demo_out: Path, cfg: DemoConfig) -> tuple[Path, Path]:
    """The demo's store and video truth; made as the demo makes them (without Prefect) when missing."""
    store, truth = demo_out / "features.zarr", demo_out / "data" / "truth" / "videos.tsv"
    if store.exists() and truth.exists():
        return store, truth
    from pipeline.extract import run_extraction
    from avsed.synthetic.video_host import VideoServerProcess
    from avsed.synthetic.dataset import make_synthetic_dataset

    make_synthetic_dataset(demo_out / "data", demo_synth_config(cfg), workers=os.cpu_count() or 1)
    server = VideoServerProcess(demo_out / "data" / "videos")
    server.start()
    try:
        run_extraction(demo_extract_config(demo_out / "data", store, server.url_template, cfg))
    finally:
        server.stop()
    return store, truth


def run_dirs(demo_out: Path, name: str, seeds: list[int], cfg: DemoConfig) -> dict[int, Path]:
    """seed -> run directory: the demo's own run for its seed, gate_bench/<model>/seed<k> for the others."""
    return {s: demo_out / "runs" / run_dir_name(name) if s == cfg.seed else
            demo_out / "gate_bench" / run_dir_name(name) / f"seed{s}" for s in seeds}


def train_all(store: Path, demo_out: Path, seeds: list[int], cfg: DemoConfig) -> dict[str, float]:
    """Each model's unfinished seeds, trained together; returns the seconds per model."""
    import torch

    from training.train import train_group

    torch.set_num_threads(os.cpu_count() or 1)
    seconds = {}
    for name, (encoders, weights) in DEMO_MODELS.items():
        t0 = time.perf_counter()
        config = demo_train_config(encoders, weights, cfg, cfg.seed)
        config.progress = False
        train_group(store, config, run_dirs(demo_out, name, seeds, cfg), resume=True)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"[gate] trained {name}: {seconds[name]} s", flush=True)
    return seconds


def evaluate_all(store: Path, truth: Path, demo_out: Path, seeds: list[int], cfg: DemoConfig
                 ) -> dict[str, dict[int, EvaluationResult]]:
    """Each run evaluated as the demo does (an evaluation of the same checkpoint file is reused)."""
    out: dict[str, dict[int, EvaluationResult]] = {}
    for name in DEMO_MODELS:
        out[name] = {}
        for seed, run in run_dirs(demo_out, name, seeds, cfg).items():
            path = run / "evaluation" / "result.json"
            stamp = (run / "checkpoint.pt").stat().st_mtime
            if path.exists() and path.stat().st_mtime > stamp and \
                    (name != LEARNED or "learned_weights" in EvaluationResult.load(path).info):
                out[name][seed] = EvaluationResult.load(path)
                continue
            out[name][seed] = evaluate_demo_run(run, store, name, truth)
            print(f"[gate] evaluated {name} seed {seed}", flush=True)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "values": [float(x) for x in v]}


def _pooled(summary: dict, kinds: tuple[str, ...]) -> tuple[float, int]:
    parts = [summary[k] for k in kinds if k in summary]
    clips = sum(p["clips"] for p in parts)
    return (sum(p["clips"] * p["visual_weight_mean"] for p in parts) / clips if clips else float("nan")), clips


def analyse(results: dict[str, dict[int, EvaluationResult]]) -> dict:
    seeds = sorted(results[LEARNED])
    weights = {"shows_events": [], "shows_nothing": [], "per_kind": {}}
    for s in seeds:
        summary = results[LEARNED][s].info["learned_weights"]
        weights["shows_events"].append(_pooled(summary, SHOWS_EVENTS)[0])
        weights["shows_nothing"].append(_pooled(summary, SHOWS_NOTHING)[0])
        for kind, v in summary.items():
            weights["per_kind"].setdefault(kind, {"clips": v["clips"], "per_seed": []})["per_seed"].append(
                v["visual_weight_mean"])
    clips = {"shows_events": _pooled(results[LEARNED][seeds[0]].info["learned_weights"], SHOWS_EVENTS)[1],
             "shows_nothing": _pooled(results[LEARNED][seeds[0]].info["learned_weights"], SHOWS_NOTHING)[1]}
    metrics = {name: {split: {m: _stats([100 * results[name][s].sets[split].metrics[m] for s in seeds])
                              for m in METRICS} for split in ("with_video", "without_video")}
               for name in results}
    with_video = {m: {"learned": metrics[LEARNED]["with_video"][m]["mean"],
                      "best_of_fixed_random": max(metrics[FIXED]["with_video"][m]["mean"],
                                                  metrics[RANDOM]["with_video"][m]["mean"])} for m in ("cbf1", "psds2")}
    without = {m: {"learned": metrics[LEARNED]["without_video"][m]["mean"],
                   "learned_std": metrics[LEARNED]["without_video"][m]["std"],
                   "fixed": metrics[FIXED]["without_video"][m]["mean"],
                   "random": metrics[RANDOM]["without_video"][m]["mean"],
                   "audio_only": metrics[AUDIO]["without_video"][m]["mean"],
                   "audio_only_std": metrics[AUDIO]["without_video"][m]["std"]} for m in METRICS}

    def within(mean: float, v: dict) -> bool:  # at or above audio-only's mean minus its std over seeds
        return bool(mean >= v["audio_only"] - v["audio_only_std"])
    return {
        "seeds": seeds,
        "visual_weight": {"shows_events": _stats(weights["shows_events"]),
                          "shows_nothing": _stats(weights["shows_nothing"]), "clips": clips,
                          "per_kind": {k: {"clips": v["clips"], **_stats(v["per_seed"])}
                                       for k, v in weights["per_kind"].items()}},
        "metrics": metrics,
        "checks": {
            "nothing_below_events_every_seed": all(a < b for a, b in zip(weights["shows_nothing"],
                                                                          weights["shows_events"])),
            "nothing_below_events_mean": bool(np.mean(weights["shows_nothing"]) < np.mean(weights["shows_events"])),
            "with_video_at_least_best_of_fixed_random": {m: bool(v["learned"] >= v["best_of_fixed_random"])
                                                          for m, v in with_video.items()},
            "without_video_within_audio_only_spread": {m: within(v["learned"], v) for m, v in without.items()},
            # Context for the strict check above: the paper's own bi-encoders by the same test, and the looser
            # reading (the learned model's mean ± std overlaps audio-only's).
            "without_video_fixed_within": {m: within(v["fixed"], v) for m, v in without.items()},
            "without_video_random_within": {m: within(v["random"], v) for m, v in without.items()},
            "without_video_spreads_overlap": {
                m: bool(v["learned"] + v["learned_std"] >= v["audio_only"] - v["audio_only_std"]) for m, v in without.items()},
        },
        "with_video_comparison": with_video, "without_video_comparison": without,
    }


def _ms(s: dict, decimals: int = 1) -> str:
    spread = f" ± {s['std']:.{decimals}f}" if np.isfinite(s["std"]) else ""
    return f"{s['mean']:.{decimals}f}{spread}"


def markdown(report: dict) -> str:
    a = report["analysis"]
    vw = a["visual_weight"]
    lines = [f"# Learned interpolation weights on the demo's synthetic set ({report['date']})", "",
             f"{report['machine']}; seeds {', '.join(map(str, a['seeds']))}; the demo's settings (conformer, "
             f"500 clips) with {report['config']['steps']} steps of batch "
             f"{tuple(report['config'].get('batch', ()))} (strong, weak, unlabelled). Values in %, mean ± std over "
             f"seeds.", "",
             "## What the gate gives each kind of video (eval clips)", "",
             "| video | clips | mean visual weight (± std over seeds) | per seed |", "|---|---:|---:|---|"]
    for kind in ("content", "still", "black", "absent"):
        if kind in vw["per_kind"]:
            k = vw["per_kind"][kind]
            lines.append(f"| {kind} | {k['clips']} | {_ms(k, 3)} | {', '.join(f'{x:.3f}' for x in k['values'])} |")
    lines += ["", f"Black screen or still image ({vw['clips']['shows_nothing']} clips): {_ms(vw['shows_nothing'], 3)}; "
                  f"video showing the events ({vw['clips']['shows_events']} clips): {_ms(vw['shows_events'], 3)}.", "",
              "## Eval clips with and without video", "",
              "| model | set | " + " | ".join(m.upper() for m in METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for name, splits in a["metrics"].items():
        for split, ms in splits.items():
            lines.append(f"| {name} | {split.replace('_', ' ')} | " + " | ".join(_ms(ms[m]) for m in METRICS) + " |")
    c = a["checks"]
    lines += ["", "## Acceptance checks", "",
              f"- visual weight lower on black/still than on event-showing videos: mean {c['nothing_below_events_mean']},"
              f" in every seed {c['nothing_below_events_every_seed']}"]
    for m, v in a["with_video_comparison"].items():
        lines.append(f"- with video, {m.upper()}: learned {v['learned']:.1f} vs best of fixed/random "
                     f"{v['best_of_fixed_random']:.1f}: {c['with_video_at_least_best_of_fixed_random'][m]}")
    for m, v in a["without_video_comparison"].items():
        lines.append(f"- without video, {m.upper()}: learned {v['learned']:.1f} vs audio-only {v['audio_only']:.1f}"
                     f" ± {v['audio_only_std']:.1f}: within or above: "
                     f"{c['without_video_within_audio_only_spread'][m]} (spreads overlap: "
                     f"{c['without_video_spreads_overlap'][m]}; by the same test fixed weights {v['fixed']:.1f}: "
                     f"{c['without_video_fixed_within'][m]}, random weights {v['random']:.1f}: "
                     f"{c['without_video_random_within'][m]})")
    trained = {k: v for k, v in report["train_seconds"].items() if v > 5}  # a resumed, finished run takes < 1 s
    lines += ["", (f"Training in this call (unfinished seeds only): {trained} s per model. " if trained else
                   "Every run was trained before this call (resumed as finished). ") + (report.get("note") or "") +
              f" This call: {report['seconds']:.0f} s.", "", "![gate](gate.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report["analysis"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = [k for k in ("content", "still", "black", "absent") if k in a["visual_weight"]["per_kind"]]
    for x, kind in enumerate(kinds):
        k = a["visual_weight"]["per_kind"][kind]
        left.scatter([x] * len(k["values"]), k["values"], color="tab:red" if kind in SHOWS_NOTHING else "tab:blue")
        left.errorbar(x + 0.15, k["mean"], yerr=np.nan_to_num(k["std"]), fmt="o", color="black", capsize=3)
    left.set_xticks(range(len(kinds)), [f"{k}\n({a['visual_weight']['per_kind'][k]['clips']} clips)" for k in kinds])
    left.set_ylabel("mean visual weight of the eval clips (per seed)")
    left.set_title("learned bi-encoder: visual weight by what the video shows", fontsize=9)
    models = list(a["metrics"])
    labels = [f"{m}\n{s.replace('_', ' ')}" for s in ("with_video", "without_video") for m in models]
    x = np.arange(len(labels))
    for j, metric in enumerate(("cbf1", "psds2")):
        vals = [a["metrics"][m][s][metric] for s in ("with_video", "without_video") for m in models]
        right.bar(x + (j - 0.5) * 0.4, [v["mean"] for v in vals], 0.4, yerr=[np.nan_to_num(v["std"]) for v in vals],
                  capsize=2, label=metric.upper())
    right.set_xticks(x, [lbl.replace("bi-encoder ", "") for lbl in labels], fontsize=6, rotation=30, ha="right")
    right.set_ylabel("%")
    right.legend(fontsize=7)
    right.set_title("eval clips with and without video (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-out", default="demo-out", help="the folder `avsed demo` wrote (its store is reused)")
    p.add_argument("--seeds", default="0,1,2", help="comma separated")
    p.add_argument("--results", default=str(RESULTS), help="where gate.json, gate.md and gate.png go")
    p.add_argument("--steps", type=int, default=DemoConfig().steps,
                   help="training steps per run (default: the demo's; runs of another length are not reused)")
    p.add_argument("--batch", default=",".join(map(str, DemoConfig().batch)),
                   help="strong,weak,unlabelled clips per batch (default: the demo's)")
    p.add_argument("--note", default="", help="a sentence for gate.md on how the runs were trained (kept in gate.json)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cfg = DemoConfig(steps=args.steps, batch=tuple(int(b) for b in args.batch.split(",")))
    demo_out = Path(args.demo_out)
    seeds = [int(s) for s in args.seeds.split(",")]
    store, truth = ensure_store(demo_out, cfg)
    train_seconds = train_all(store, demo_out, seeds, cfg)
    results = evaluate_all(store, truth, demo_out, seeds, cfg)
    report = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, no GPU" if not _cuda() else "GPU", "config": {"steps": cfg.steps, "batch": list(cfg.batch)},
              "train_seconds": train_seconds, "note": args.note, "analysis": analyse(results), "seconds": time.perf_counter() - t0}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "gate.png")
    (out / "gate.md").write_text(markdown(report))
    print((out / "gate.md").read_text())
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
