"""`avsed evaluate` and `avsed report`: argument handling around evaluation.run and evaluation.report.

`avsed report` reads only result files: it imports neither torch nor the training stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.evaluate import EvaluationResult
from evaluation.plots import plot_psd_roc
from evaluation.report import ReportError, group_by_model, load_results, write_report


def run_evaluate(args: argparse.Namespace) -> int:
    from evaluation.run import PAPER_AUDIO_WEIGHTS, evaluate_checkpoint, metrics_markdown

    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.out) if args.out else run_dir / "evaluation"
    grid = None if args.audio_weight is not None else PAPER_AUDIO_WEIGHTS if args.tune_audio_weight else None
    ev = evaluate_checkpoint(ckpt, args.store, out, audio_weight=args.audio_weight,
                             split_by_availability=args.split_by_availability, audio_weight_grid=grid,
                             use_teacher=getattr(args, "teacher", False),
                             video_truth=getattr(args, "video_truth", None))
    print(f"{ev.result.info['model']} (seed {ev.result.info['seed']}), values in %:")
    print(metrics_markdown(ev.result))
    print(f"written to {out} (predictions for other tools in {out / 'predictions'})")
    return 0


def _result_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in items:
        p = Path(item)
        for candidate in (p, p / "result.json", p / "evaluation" / "result.json"):
            if candidate.is_file():
                paths.append(candidate)
                break
        else:
            raise SystemExit(f"avsed report: no evaluation result in {p} (run `avsed evaluate` on it first)")
    return paths


def run_report(args: argparse.Namespace) -> int:
    results = load_results(_result_paths(args.runs))
    try:
        paths = write_report(results, args.out, baseline=getattr(args, "baseline", None))
        groups = group_by_model(results)
    except ReportError as e:
        raise SystemExit(f"avsed {e}") from None
    # One PSD-ROC curve per model: its first seed's curve (the table carries the mean ± std).
    firsts: dict[str, EvaluationResult] = {name: rs[0] for name, rs in groups.items()}
    plot_psd_roc(firsts, Path(args.out) / "psd_roc.png")
    print(paths["markdown"].read_text())
    return 0
