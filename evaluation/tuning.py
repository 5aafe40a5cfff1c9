"""Tuning of post-processing on the validation partition (paper 3.1.3).

CBF1: one clip threshold per class from {0.1, ..., 0.9}. SBF1 and EBF1, separately: per class a
threshold from {0.1, ..., 0.9} and a median filter size from {1, 3, ..., 31} (output frames).

Every candidate's TP/FP/FN per class is computed once (one thresholding per threshold, one cumulative
sum shared by all 16 filter sizes, all clips at once). Selection then works on these counts:
- EBF1 is macro-averaged, so each class takes the candidate that maximises its own F1.
- CBF1 and SBF1 are micro-averaged: the counts are additive over classes, so we maximise the micro F1
  by coordinate ascent over classes, starting from each class's own best and sweeping classes in order
  (classes without references take part too: their false positives count in the micro sums),
  each taking the candidate that maximises the micro F1 with the others fixed, until a sweep changes
  nothing. Ties go to the first candidate in (threshold, filter size) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluation.clip_f1 import clip_counts
from evaluation.counts import f1_from_counts
from evaluation.event_f1 import EventF1Config, EventReference, event_counts_from_runs
from evaluation.postprocess import frame_runs, median_filter_binary
from evaluation.segment_f1 import SegmentReference, segment_counts_from_runs
from avsed.core.labels import ClipTiming

THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(1, 10) * 0.1, 1).tolist())
FILTER_SIZES: tuple[int, ...] = tuple(range(1, 32, 2))


@dataclass(frozen=True)
class TuningGrid:
    thresholds: tuple[float, ...] = THRESHOLDS
    filter_sizes: tuple[int, ...] = FILTER_SIZES
    clip_thresholds: tuple[float, ...] = THRESHOLDS
    # a class without references in the validation set has no F1 to tune: it keeps these
    default_threshold: float = 0.5
    default_filter_size: int = 1


@dataclass
class TunedPostprocessing:
    """Class-wise settings chosen on validation, and the validation score they reach."""

    thresholds: np.ndarray  # (C,)
    filter_sizes: np.ndarray  # (C,) int; all 1 for clip-level
    validation_score: float

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds.tolist(), "filter_sizes": self.filter_sizes.tolist(),
                "validation_score": self.validation_score}

    @classmethod
    def from_dict(cls, d: dict) -> "TunedPostprocessing":
        return cls(np.asarray(d["thresholds"], dtype=np.float64), np.asarray(d["filter_sizes"], dtype=np.int64),
                   float(d["validation_score"]))


@dataclass
class CandidateCounts:
    """TP/FP/FN of every candidate: (thresholds, filter_sizes, C, 3)."""

    segment: np.ndarray
    event: np.ndarray
    grid: TuningGrid = field(default_factory=TuningGrid)


def sed_candidate_counts(frame_probs: np.ndarray, segment_ref: SegmentReference, event_ref: EventReference,
                         timing: ClipTiming, grid: TuningGrid = TuningGrid(),
                         event_config: EventF1Config = EventF1Config()) -> CandidateCounts:
    seg, ev = [], []
    # time as the last, contiguous axis: the median filter and the run search then read rows without strides
    probs = np.ascontiguousarray(np.swapaxes(frame_probs, -1, -2))  # (n, C, frames)
    for threshold in grid.thresholds:
        binary = probs > threshold
        filtered = median_filter_binary(binary, list(grid.filter_sizes), axis=-1)  # (F, n, C, frames)
        runs = frame_runs(filtered, time_axis=-1)  # shared by both metrics
        seg.append(segment_counts_from_runs(runs, len(grid.filter_sizes), segment_ref))
        ev.append(event_counts_from_runs(runs, len(grid.filter_sizes), event_ref, timing, event_config))
    return CandidateCounts(np.stack(seg), np.stack(ev), grid)


def select_macro(counts: np.ndarray) -> np.ndarray:
    """Per class, the flat candidate index maximising the class's F1 (first on ties; -1 if undefined)."""
    flat = counts.reshape(-1, counts.shape[-2], 3)
    f1 = f1_from_counts(flat[..., 0], flat[..., 1], flat[..., 2])  # (K, C)
    defined = ~np.all(np.isnan(f1), axis=0)
    best = np.argmax(np.nan_to_num(f1, nan=-1.0), axis=0)
    return np.where(defined, best, -1)


def select_micro(counts: np.ndarray, max_sweeps: int = 20) -> np.ndarray:
    """Per class, flat candidate indices maximising the micro F1 by coordinate ascent (see module doc)."""
    flat = counts.reshape(-1, counts.shape[-2], 3).astype(np.int64)  # (K, C, 3)
    n_classes = flat.shape[1]
    choice = select_macro(counts)
    # classes without references still add false positives to the micro counts, so they are tuned too
    choice = np.where(choice >= 0, choice, 0)
    for _ in range(max_sweeps):
        changed = False
        for c in range(n_classes):
            others = flat[choice, np.arange(n_classes)].sum(axis=0) - flat[choice[c], c]
            total = others[None, :] + flat[:, c]  # (K, 3)
            f1 = np.nan_to_num(f1_from_counts(total[:, 0], total[:, 1], total[:, 2]), nan=-1.0)
            best = int(np.argmax(f1))
            if f1[best] > f1[choice[c]]:
                choice[c], changed = best, True
        if not changed:
            break
    return choice


def _micro_score(counts: np.ndarray, choice: np.ndarray) -> float:
    flat = counts.reshape(-1, counts.shape[-2], 3)
    picked = flat[choice, np.arange(flat.shape[1])]
    return float(f1_from_counts(*picked.sum(axis=0)))


def _macro_score(counts: np.ndarray, choice: np.ndarray) -> float:
    flat = counts.reshape(-1, counts.shape[-2], 3)
    picked = flat[np.maximum(choice, 0), np.arange(flat.shape[1])][choice >= 0]
    f1 = f1_from_counts(picked[:, 0], picked[:, 1], picked[:, 2])
    return float(np.nanmean(f1)) if np.any(~np.isnan(f1)) else float("nan")


def _settings(choice: np.ndarray, thresholds: tuple, filter_sizes: tuple, grid: TuningGrid) -> tuple[np.ndarray, np.ndarray]:
    th_idx, f_idx = np.divmod(np.maximum(choice, 0), len(filter_sizes))
    th = np.where(choice >= 0, np.asarray(thresholds)[th_idx], grid.default_threshold)
    fs = np.where(choice >= 0, np.asarray(filter_sizes)[f_idx], grid.default_filter_size)
    return th.astype(np.float64), fs.astype(np.int64)


def tune_sed(counts: CandidateCounts) -> dict[str, TunedPostprocessing]:
    """Settings for SBF1 (micro) and EBF1 (macro) from the candidates' counts."""
    grid = counts.grid
    out = {}
    for name, arr, select, score in (("sbf1", counts.segment, select_micro, _micro_score),
                                     ("ebf1", counts.event, select_macro, _macro_score)):
        choice = select(arr)
        th, fs = _settings(choice, grid.thresholds, grid.filter_sizes, grid)
        out[name] = TunedPostprocessing(th, fs, score(arr, choice))
    return out


def tune_clip(clip_probs: np.ndarray, weak_targets: np.ndarray, grid: TuningGrid = TuningGrid()) -> TunedPostprocessing:
    """Class-wise clip thresholds maximising the micro CBF1 on validation."""
    counts = clip_counts(clip_probs, weak_targets, np.asarray(grid.clip_thresholds)[:, None])  # (K, C, 3)
    choice = select_micro(counts[:, None])
    th, fs = _settings(choice, grid.clip_thresholds, (1,), grid)
    return TunedPostprocessing(th, fs, _micro_score(counts[:, None], choice))
