"""Evaluate a trained run: predict validation and eval from the store, tune on validation, score eval, write outputs.

Outputs in the run's `evaluation/` folder: `result.json` (everything, for `avsed report`), `metrics.md`
(the five metrics per set), `per_class.png`, `psd_roc.png`, example-clip plots, and `predictions/` (the test
set's detections as DESED_task TSVs, sed_scores_eval score tables, ground truth and durations: evaluation/export.py),
and `standardisation.json` (the store's time grid, classes and feature statistics, for `avsed detect`).
The student is scored by default (the paper: "student models after the last training epoch"); `use_teacher`
scores the mean teacher, recorded in `info["teacher"]` and in the model name so reports keep them apart.

A model with learned interpolation weights (training/gate.py) chooses its weights per clip, so no inference audio
weight is tuned for it; its weights on every validation and eval clip are written to `learned_weights.csv` and
plotted by what the video shows (`learned_weights.png`, evaluation/gate_weights.py; give the synthetic set's
truth/videos.tsv as `video_truth` to tell still images and black screens apart), and their mean per video kind
on eval goes into `info["learned_weights"]`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from evaluation.evaluate import METRICS, EvaluationConfig, EvaluationResult, evaluate, tune
from evaluation.export import export_predictions
from evaluation.gate_weights import kind_summary, learned_weights, read_video_truth, write_gate_outputs
from evaluation.plots import plot_example_clip, plot_per_class, plot_psd_roc
from evaluation.predictions import Predictions
from avsed.core.labels import ClipTiming, LabelEncoder
from avsed.core.store import FeatureStore
from training.config import TrainConfig
from training.predict import StoreClips, TrainedModel, load_store_clips, load_trained, predict_clips

# The paper's inference options for the audio interpolation weight (3.2.2), tuned on validation EBF1.
PAPER_AUDIO_WEIGHTS = (0.25, 0.5, 0.75, 0.875)
# What `avsed detect` needs of the store beside the tuned post-processing: its time grid, classes and the
# standardisation statistics of the run's features (the run stays usable once the store is gone).
STANDARDISATION = "standardisation.json"


def write_standardisation(store: str | Path, encoders: Sequence[str], path: Path) -> Path:
    """The store's timing, classes and the (mean, std) of each of `encoders` that has statistics, as JSON."""
    s = FeatureStore.open(store)
    stats = {name: s.stats(name) for name in encoders}
    path.write_text(json.dumps({"timing": dataclasses.asdict(s.timing), "classes": list(s.classes),
                                "stats": {k: {"mean": v[0].tolist(), "std": v[1].tolist()}
                                          for k, v in stats.items() if v is not None}}))
    return path


def read_standardisation(path: Path) -> tuple[ClipTiming, tuple[str, ...], dict[str, tuple[np.ndarray, np.ndarray]]]:
    d = json.loads(Path(path).read_text())
    return (ClipTiming(**d["timing"]), tuple(d["classes"]),
            {k: (np.asarray(v["mean"], dtype=np.float32), np.asarray(v["std"], dtype=np.float32))
             for k, v in d["stats"].items()})


def model_name(config: TrainConfig, teacher: bool = False) -> str:
    """What distinguishes runs that are seeds of the same model (the report averages over those)."""
    streams = "+".join(config.encoders)
    suffix = ", teacher" if teacher else ""
    if len(config.encoders) == 1:
        return f"{config.model.architecture} {streams}{suffix}"
    w = config.interpolation_weights
    weights = "random" if w == "random" else ("equal" if w is None else "/".join(f"{x:g}" for x in w))
    if is_learned(config):
        per = " per-frame" if config.model.gate.mode == "frame" else ""
        weights = f"learned{per}" + ("" if w is None else f", {weights} prior")
    return f"{config.model.architecture} {streams} ({weights} weights){suffix}"


def is_learned(config: TrainConfig) -> bool:
    """The model learns its interpolation weights (a gate over several streams)."""
    return len(config.encoders) > 1 and config.model.gate.mode != "none"


def to_evaluation(p) -> Predictions:
    """training.predict output -> evaluation.Predictions."""
    return Predictions(clip_ids=p.clip_ids, frame_probs=p.frame_probs, clip_probs=p.clip_probs, events=p.events,
                       durations=p.durations, video_available=p.video_available, classes=p.classes, timing=p.timing)


@dataclass
class RunEvaluation:
    result: EvaluationResult
    out_dir: Path | None
    test: Predictions


def select_audio_weight(validation_by_weight: dict[float, Predictions],
                        config: EvaluationConfig = EvaluationConfig()) -> tuple[float, dict[float, float]]:
    """The audio weight whose validation predictions reach the best tuned EBF1 (paper 3.2.2), and every score.

    Ties go to the larger audio weight (the paper: the audio stream is the more salient one).
    """
    scores = {float(w): tune(val, config).ebf1.validation_score for w, val in validation_by_weight.items()}
    best = max(scores, key=lambda w: (scores[w], w))
    return best, scores


def choose_audio_weight(checkpoint: str | Path | TrainedModel, store: str | Path | StoreClips,
                        grid: Sequence[float], config: EvaluationConfig = EvaluationConfig(), device: str = "auto",
                        use_teacher: bool = False, validation_partition: str = "validation") -> tuple[float, dict]:
    """Predict validation at each audio weight of `grid` and pick one with `select_audio_weight`. Given a loaded
    model and clips (training/predict.py), neither is read again (device, use_teacher and the partition are then
    theirs)."""
    model = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained(checkpoint, device, use_teacher)
    clips = store if isinstance(store, StoreClips) else load_store_clips(model, store, [validation_partition])
    return select_audio_weight({float(w): to_evaluation(predict_clips(model, clips, audio_weight=w)) for w in grid},
                               config)


def evaluate_checkpoint(checkpoint: str | Path, store: str | Path, out_dir: str | Path | None = None,
                        audio_weight: float | None = None, split_by_availability: bool = False,
                        audio_weight_grid: Sequence[float] | None = None, config: EvaluationConfig = EvaluationConfig(),
                        validation_partition: str = "validation", test_partition: str = "eval",
                        device: str = "auto", example_clips: int = 2, use_teacher: bool = False,
                        video_truth: Mapping[str, str] | str | Path | None = None) -> RunEvaluation:
    """Predict, tune on validation, score the test partition; write everything to `out_dir` when given.
    `video_truth`: what each clip's video shows (clip id -> kind, or a TSV of them such as the synthetic set's
    truth/videos.tsv), for a learned gate's weights."""
    if video_truth is not None and not isinstance(video_truth, Mapping):
        video_truth = read_video_truth(video_truth)
    # The checkpoint and each partition are read once; every prediction below reuses them. (Each partition on its
    # own: both in one read and then split would hold every clip twice.)
    model = load_trained(checkpoint, device, use_teacher)
    train_config = model.config
    info = {"model": model_name(train_config, use_teacher), "seed": train_config.seed, "checkpoint": str(checkpoint),
            "step": model.step, "encoders": list(train_config.encoders), "teacher": bool(use_teacher),
            "architecture": train_config.model.architecture}
    multi = len(train_config.encoders) > 1
    learned = is_learned(train_config)
    if learned:
        info["interpolation_weights"] = f"learned per {train_config.model.gate.mode}"
    val_clips = load_store_clips(model, store, [validation_partition])
    test_clips = load_store_clips(model, store, [test_partition])
    if audio_weight is None and audio_weight_grid and multi and not learned:
        audio_weight, grid_scores = choose_audio_weight(model, val_clips, audio_weight_grid, config)
        info["audio_weight_validation_ebf1"] = grid_scores
    info["audio_weight"] = audio_weight

    def run(partition: StoreClips, weight: float | None) -> Predictions:
        return to_evaluation(predict_clips(model, partition, audio_weight=weight))

    val = run(val_clips, audio_weight)
    test = run(test_clips, audio_weight)
    audio_only = None
    if split_by_availability and multi and audio_weight != 1.0:
        audio_only = run(test_clips, 1.0)
    result = evaluate(val, test, config, split_by_availability=split_by_availability, audio_only_test=audio_only,
                      info=info)
    gate = None
    if learned:
        gate = learned_weights(model, [val_clips, test_clips], video_truth=video_truth)
        result.info["learned_weights"] = kind_summary(gate, test_partition)
    out = None
    if out_dir is not None:
        out = write_outputs(result, test, store, Path(out_dir), example_clips)
        write_standardisation(store, train_config.encoders, out / STANDARDISATION)
        if gate is not None:
            write_gate_outputs(gate, out, f"{info['model']} (seed {info['seed']}): visual weight per {test_partition} "
                                          f"clip")
    return RunEvaluation(result, out, test)


def metrics_markdown(result: EvaluationResult) -> str:
    rows = ["| set | clips | " + " | ".join(m.upper() for m in METRICS) + " |",
            "|---|---:|" + "---:|" * len(METRICS)]
    for name, s in result.sets.items():
        vals = " | ".join("" if s.metrics.get(m) is None else f"{100 * s.metrics[m]:.1f}" for m in METRICS)
        rows.append(f"| {name} | {s.n_clips} | {vals} |")
    return "\n".join(rows)


def write_outputs(result: EvaluationResult, test: Predictions, store: str | Path, out_dir: Path,
                  example_clips: int = 2) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    result.save(out_dir / "result.json")
    (out_dir / "metrics.md").write_text(f"# {result.info.get('model', '')} (seed {result.info.get('seed')})\n\n"
                                        f"Values in %.\n\n{metrics_markdown(result)}\n")
    plot_per_class(result, out_dir / "per_class.png")
    plot_psd_roc({result.info.get("model", "model"): result}, out_dir / "psd_roc.png")
    export_predictions(test, result.tuning, out_dir / "predictions")
    _example_plots(test, store, out_dir, example_clips)
    return out_dir


def _example_plots(test: Predictions, store_path: str | Path, out_dir: Path, n: int) -> None:
    """The clips with the most annotated events, one with video and one without when both exist."""
    if n <= 0 or test.n_clips == 0:
        return
    store = FeatureStore.open(store_path)
    index = store.clip_index()
    encoder = LabelEncoder(store.classes, store.timing)
    video_feature = next((f for f in store.feature_names() if f != "logmel"), None)
    order = np.argsort([-len(e) for e in test.events], kind="stable")
    picks = []
    for want in (True, False):
        picks += [i for i in order if test.video_available[i] == want][:max(1, n // 2)]
    for i in picks[:n]:
        row = index[str(test.clip_ids[i])]
        logmel = store.read_feature("logmel", row)
        video = store.mask(video_feature)[row] if video_feature else np.zeros(store.timing.video_frames, bool)
        plot_example_clip(logmel, encoder.encode_strong(test.events[i]), test.frame_probs[i], video,
                          store.classes, out_dir / f"example_{'video' if test.video_available[i] else 'novideo'}_{i}.png",
                          store.timing, title=f"{test.clip_ids[i]} ({'with' if test.video_available[i] else 'without'} video)")
