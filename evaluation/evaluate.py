"""Evaluation of a model's predictions: tune post-processing on validation, report the five metrics on test.

`evaluate(validation, test)` is what `avsed evaluate` calls. With `split_by_availability` the test
clips are also scored separately with and without video; `audio_only_test` (predictions made with
the audio interpolation weight forced to 1) adds the "with video, forced audio-only" column of the
paper's Table 7.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from evaluation.clip_f1 import clip_counts
from evaluation.counts import f1_from_counts, macro_f1, micro_f1
from evaluation.event_f1 import EventF1Config, event_counts, event_reference
from evaluation.postprocess import postprocess
from evaluation.predictions import Predictions
from evaluation.psds import OPERATING_POINTS, PSDS1, PSDS2, PSDSScenario, psds_scores, psds_threshold_independent
from evaluation.segment_f1 import segment_counts, segment_reference
from evaluation.tuning import TunedPostprocessing, TuningGrid, sed_candidate_counts, tune_clip, tune_sed

METRICS: tuple[str, ...] = ("cbf1", "sbf1", "ebf1", "psds1", "psds2")


@dataclass(frozen=True)
class EvaluationConfig:
    """The paper's evaluation settings (3.1.3, 3.1.4, Table 4) as defaults."""

    grid: TuningGrid = field(default_factory=TuningGrid)
    event: EventF1Config = field(default_factory=EventF1Config)
    segment_seconds: float = 1.0
    # which segments count for SBF1: "desed_task" (DESED_task's call of sed_eval) or "duration" (segment_f1.py)
    segment_evaluated_length: str = "desed_task"
    scenarios: tuple[PSDSScenario, ...] = (PSDS1, PSDS2)
    operating_points: tuple[float, ...] = OPERATING_POINTS
    psds_median_filter: int = 1
    # sed_scores_eval's exact, threshold-independent PSDS beside the 50-point one (~2 s per scenario and set)
    threshold_independent_psds: bool = False


@dataclass
class Tuning:
    cbf1: TunedPostprocessing
    sbf1: TunedPostprocessing
    ebf1: TunedPostprocessing

    def to_dict(self) -> dict:
        return {k: getattr(self, k).to_dict() for k in ("cbf1", "sbf1", "ebf1")}

    @classmethod
    def from_dict(cls, d: dict) -> "Tuning":
        return cls(**{k: TunedPostprocessing.from_dict(d[k]) for k in ("cbf1", "sbf1", "ebf1")})


@dataclass
class SetResult:
    """The five metrics, class-wise F1s and PSD-ROC curves of one set of clips."""

    n_clips: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]  # metric -> class -> F1
    psd_roc: dict[str, dict]  # scenario -> PSDSResult.to_dict()
    threshold_independent: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluationResult:
    tuning: Tuning
    sets: dict[str, SetResult]
    classes: tuple[str, ...]
    config: dict
    info: dict = field(default_factory=dict)  # e.g. model name, seed, checkpoint

    def to_dict(self) -> dict:
        return {"tuning": self.tuning.to_dict(), "sets": {k: v.to_dict() for k, v in self.sets.items()},
                "classes": list(self.classes), "config": self.config, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluationResult":
        return cls(Tuning.from_dict(d["tuning"]), {k: SetResult(**v) for k, v in d["sets"].items()},
                   tuple(d["classes"]), d["config"], d.get("info", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(self.to_dict()), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _finite(obj):
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def tune(validation: Predictions, config: EvaluationConfig = EvaluationConfig()) -> Tuning:
    """Class-wise post-processing settings for CBF1, SBF1 and EBF1, chosen on the validation predictions."""
    probs = validation.masked_frame_probs()
    seg_ref = segment_reference(validation.events, validation.durations, validation.classes, validation.timing,
                                config.segment_seconds, config.segment_evaluated_length)
    ev_ref = event_reference(validation.events, validation.classes, config.event)
    counts = sed_candidate_counts(probs, seg_ref, ev_ref, validation.timing, config.grid, config.event)
    sed = tune_sed(counts)
    clip = tune_clip(validation.clip_probs, validation.weak_targets(), config.grid)
    return Tuning(cbf1=clip, sbf1=sed["sbf1"], ebf1=sed["ebf1"])


def score(predictions: Predictions, tuning: Tuning, config: EvaluationConfig = EvaluationConfig()) -> SetResult:
    """The five metrics of `predictions` with fixed (tuned) post-processing."""
    p, classes = predictions, predictions.classes
    probs = p.masked_frame_probs()
    clip = clip_counts(p.clip_probs, p.weak_targets(), tuning.cbf1.thresholds)
    seg_ref = segment_reference(p.events, p.durations, classes, p.timing, config.segment_seconds,
                                config.segment_evaluated_length)
    seg = segment_counts(postprocess(probs, tuning.sbf1.thresholds, tuning.sbf1.filter_sizes), seg_ref)
    ev_ref = event_reference(p.events, classes, config.event)
    ev = event_counts(postprocess(probs, tuning.ebf1.thresholds, tuning.ebf1.filter_sizes), ev_ref, p.timing, config.event)
    psds = psds_scores(probs, p.events, p.durations, classes, p.timing, config.scenarios, config.operating_points,
                       config.psds_median_filter)
    metrics = {"cbf1": micro_f1(*clip.T), "sbf1": micro_f1(*seg.T), "ebf1": macro_f1(*ev.T)}
    metrics.update({name: r.value for name, r in psds.items()})
    per_class = {name: dict(zip(classes, f1_from_counts(*c.T).tolist())) for name, c in
                 (("cbf1", clip), ("sbf1", seg), ("ebf1", ev))}
    exact = {}
    if config.threshold_independent_psds:
        exact = {f"{sc.name}_threshold_independent": psds_threshold_independent(
            probs, p.events, p.durations, p.clip_ids, classes, p.timing, sc) for sc in config.scenarios}
    return SetResult(p.n_clips, metrics, per_class, {k: v.to_dict() for k, v in psds.items()}, exact)


def availability_sets(test: Predictions, audio_only_test: Predictions | None = None) -> dict[str, Predictions]:
    """Named test subsets of Table 7: all clips, with video, without video, with video but audio only."""
    sets = {"all": test, "with_video": test.subset(test.video_available),
            "without_video": test.subset(~test.video_available)}
    if audio_only_test is not None:
        if not np.array_equal(audio_only_test.clip_ids, test.clip_ids):
            raise ValueError("audio-only predictions must cover the same clips, in the same order, as the test set")
        sets["with_video_audio_only"] = audio_only_test.subset(test.video_available)
    return sets


def evaluate_sets(validation: Predictions, sets: dict[str, Predictions], config: EvaluationConfig = EvaluationConfig(),
                  tuning: Tuning | None = None, info: dict | None = None) -> EvaluationResult:
    """Tune on `validation` (unless `tuning` is given) and score every named set with that tuning."""
    tuning = tuning or tune(validation, config)
    results = {name: score(preds, tuning, config) for name, preds in sets.items() if preds.n_clips}
    return EvaluationResult(tuning, results, validation.classes, _config_dict(config), dict(info or {}))


def evaluate(validation: Predictions, test: Predictions, config: EvaluationConfig = EvaluationConfig(),
             split_by_availability: bool = False, audio_only_test: Predictions | None = None,
             info: dict | None = None) -> EvaluationResult:
    """Tune on validation, report on test (and its availability split when asked)."""
    sets = availability_sets(test, audio_only_test) if split_by_availability or audio_only_test is not None \
        else {"all": test}
    return evaluate_sets(validation, sets, config, info=info)


def _config_dict(config: EvaluationConfig) -> dict:
    d = asdict(config)
    d["scenarios"] = [asdict(s) for s in config.scenarios]
    return d
