"""Segment-based F1 (SBF1): micro-averaged F1 over 1 s segments, with sed_eval's SegmentBasedMetrics semantics.

An event covers segments floor(onset) .. ceil(offset) - 1. Which segments of a clip count is a named
convention (`SEGMENT_LENGTHS`):
- "desed_task" (default): DESED_task calls sed_eval without `evaluated_length_seconds`, so every segment up to
  the last event offset (reference or system) counts, even past the clip's duration. Counting up to the later
  of the duration and that offset gives the same TP/FP/FN (the extra segments are empty).
- "duration": only the first ceil(duration) segments count (sed_eval with `evaluated_length_seconds=duration`).
Detections come from binary output frames. A run of frames [start, stop) is the event
(bounds[start], bounds[stop]), so it covers segments floor(bounds[start]) .. ceil(bounds[stop]) - 1. Runs of a
(clip, class) row are ordered and their segment ranges only grow, so a row's active segments are the sum of its
runs' ranges less the overlap of each range with the previous one: counting costs O(runs), not O(clips x segments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evaluation.events import flatten_events
from evaluation.postprocess import Runs, frame_runs
from avsed.core.labels import ClipTiming, Event

SEGMENT_LENGTHS: tuple[str, ...] = ("desed_task", "duration")


@dataclass(frozen=True)
class SegmentReference:
    """Ground truth on the segment grid of a set of clips."""

    roll: np.ndarray  # (n, S, C) bool: reference activity
    valid: np.ndarray  # (n, S) bool: segment lies within the clip's evaluated length
    first_segment: np.ndarray  # (frames + 1,) segment holding frame boundary j: floor(bounds[j])
    end_segment: np.ndarray  # (frames + 1,) one past the last segment of an event ending at bounds[j]: ceil(bounds[j])

    def n_ref(self) -> np.ndarray:
        return np.sum(self.roll & self.valid[:, :, None], axis=(0, 1))


def segment_reference(events: list[list[Event]], durations: np.ndarray, classes: tuple[str, ...], timing: ClipTiming,
                      segment_seconds: float = 1.0, evaluated_length: str = "desed_task") -> SegmentReference:
    """The reference roll of every clip; `evaluated_length` is one of `SEGMENT_LENGTHS` (see module doc)."""
    if evaluated_length not in SEGMENT_LENGTHS:
        raise ValueError(f"segment evaluated length {evaluated_length!r} is unknown: use one of {SEGMENT_LENGTHS}")
    durations = np.asarray(durations, dtype=float)
    bounds = timing.frame_to_time(np.arange(timing.output_frames + 1))
    last_offset = max([0.0] + [ev.offset for evs in events for ev in evs])
    # wide enough for every reference event and every detection, wherever they end
    n_segments = int(math.ceil(max([timing.clip_seconds, float(bounds[-1]), last_offset, *durations.tolist()])
                               / segment_seconds))
    # sed_eval.util.event_list_to_event_roll: an event covers floor(onset / s) .. ceil(offset / s) - 1; summed
    # +1 / -1 marks along the segments give the roll of every (clip, class) at once
    flat = flatten_events(events, classes)
    lo = np.maximum(np.floor(flat.onset * 1 / float(segment_seconds)).astype(np.int64), 0)
    hi = np.maximum(np.ceil(flat.offset * 1 / float(segment_seconds)).astype(np.int64), lo)
    marks = np.zeros((len(events), len(classes), n_segments + 1), dtype=np.int64)
    np.add.at(marks, (flat.clip, flat.cls, lo), 1)
    np.add.at(marks, (flat.clip, flat.cls, hi), -1)
    roll = (np.cumsum(marks, axis=-1)[..., :n_segments] > 0).transpose(0, 2, 1)  # (n, S, C)
    if evaluated_length == "duration":
        n_eval = np.array([int(math.ceil(d * 1 / float(segment_seconds))) for d in durations], dtype=np.int64)
        valid = np.arange(n_segments)[None, :] < n_eval[:, None]
    else:
        valid = np.ones((len(events), n_segments), dtype=bool)
    first = np.array([int(math.floor(b / segment_seconds)) for b in bounds], dtype=np.int64)
    end = np.array([int(math.ceil(b / segment_seconds)) for b in bounds], dtype=np.int64)
    return SegmentReference(roll=roll, valid=valid, first_segment=first, end_segment=end)


def segment_counts(binary: np.ndarray, reference: SegmentReference) -> np.ndarray:
    """(..., C, 3) TP/FP/FN per class for a (..., n, frames, C) binary frame array."""
    binary = np.asarray(binary, dtype=bool)
    lead = binary.shape[:-3]
    n_lead = int(np.prod(lead)) if lead else 1
    return segment_counts_from_runs(frame_runs(binary), n_lead, reference).reshape(lead + (binary.shape[-1], 3))


def segment_counts_from_runs(runs: Runs, n_lead: int, reference: SegmentReference) -> np.ndarray:
    """(n_lead, C, 3) TP/FP/FN per class of the runs of a (n_lead, n, frames, C) binary array."""
    n, n_segments, n_classes = reference.roll.shape
    ref = reference.roll & reference.valid[:, :, None]  # (n, S, C)
    # per (clip, class): reference segments before segment k, so a range [lo, hi) holds ref[hi] - ref[lo]
    ref_before = np.zeros((n, n_classes, n_segments + 1), dtype=np.int64)
    np.cumsum(ref.transpose(0, 2, 1), axis=-1, out=ref_before[..., 1:])
    evaluated = np.sum(reference.valid, axis=1)  # (n,) segments that count, a prefix of each clip's
    limit = evaluated[runs.clip]
    lo = np.minimum(reference.first_segment[runs.start], limit)
    hi = np.minimum(reference.end_segment[runs.stop], limit)
    base = (runs.clip * n_classes + runs.cls) * (n_segments + 1)
    flat = ref_before.reshape(-1)
    active = hi - lo
    hits = flat[base + hi] - flat[base + lo]
    # a segment shared with the previous run of the same row counts once
    same_row = np.r_[False, (runs.lead[1:] == runs.lead[:-1]) & (runs.clip[1:] == runs.clip[:-1])
                     & (runs.cls[1:] == runs.cls[:-1])]
    prev_hi = np.r_[0, hi[:-1]]
    shared = same_row & (prev_hi > lo)
    active -= np.where(shared, prev_hi - lo, 0)
    hits -= np.where(shared, flat[base + np.where(shared, prev_hi, lo)] - flat[base + lo], 0)
    key = runs.lead * n_classes + runs.cls
    n_sys = np.bincount(key, weights=active, minlength=n_lead * n_classes).astype(np.int64)
    tp = np.bincount(key, weights=hits, minlength=n_lead * n_classes).astype(np.int64)
    n_ref = np.broadcast_to(np.sum(ref, axis=(0, 1)), (n_lead, n_classes)).reshape(-1)
    return np.stack([tp, n_sys - tp, n_ref - tp], axis=-1).reshape(n_lead, n_classes, 3)
