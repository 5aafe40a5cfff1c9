"""Segment-based F1 (SBF1): micro-averaged F1 over 1 s segments, with sed_eval's SegmentBasedMetrics semantics.

An event covers segments floor(onset) .. ceil(offset) - 1. Which segments of a clip count is a named
convention (`SEGMENT_LENGTHS`):
- "desed_task" (default): DESED_task calls sed_eval without `evaluated_length_seconds`, so every segment up to
  the last event offset (reference or system) counts, even past the clip's duration. Counting up to the later
  of the duration and that offset gives the same TP/FP/FN (the extra segments are empty).
- "duration": only the first ceil(duration) segments count (sed_eval with `evaluated_length_seconds=duration`).
Detections come from binary output frames; a run of frames covers exactly the union of its frames' segments,
so a fixed frame-to-segment incidence matrix turns any binary frame array into segment activity with one product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.classes import class_index
from pipeline.labels import ClipTiming, Event

SEGMENT_LENGTHS: tuple[str, ...] = ("desed_task", "duration")


@dataclass(frozen=True)
class SegmentReference:
    """Ground truth on the segment grid of a set of clips."""

    roll: np.ndarray  # (n, S, C) bool: reference activity
    valid: np.ndarray  # (n, S) bool: segment lies within the clip's evaluated length
    incidence: np.ndarray  # (frames, S) float32: output frame j touches segment k

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
    roll = np.zeros((len(events), n_segments, len(classes)), dtype=bool)
    for i, evs in enumerate(events):
        for ev in evs:
            # sed_eval.util.event_list_to_event_roll
            lo = int(math.floor(ev.onset * 1 / float(segment_seconds)))
            hi = int(math.ceil(ev.offset * 1 / float(segment_seconds)))
            roll[i, lo:hi, class_index(ev.label, classes)] = True
    if evaluated_length == "duration":
        n_eval = np.array([int(math.ceil(d * 1 / float(segment_seconds))) for d in durations], dtype=np.int64)
        valid = np.arange(n_segments)[None, :] < n_eval[:, None]
    else:
        valid = np.ones((len(events), n_segments), dtype=bool)
    incidence = np.zeros((timing.output_frames, n_segments), dtype=np.float32)
    for j in range(timing.output_frames):
        lo = int(math.floor(bounds[j] / segment_seconds))
        hi = int(math.ceil(bounds[j + 1] / segment_seconds))
        incidence[j, lo:hi] = 1.0
    return SegmentReference(roll=roll, valid=valid, incidence=incidence)


def segment_counts(binary: np.ndarray, reference: SegmentReference) -> np.ndarray:
    """(..., C, 3) TP/FP/FN per class for a (..., n, frames, C) binary frame array."""
    binary = np.asarray(binary)
    lead = binary.shape[:-3]
    n, frames, n_classes = binary.shape[-3:]
    b = binary.reshape((-1, n, frames, n_classes)).transpose(0, 1, 3, 2).astype(np.float32)  # (L, n, C, T)
    system = (b @ reference.incidence) > 0  # (L, n, C, S)
    system &= reference.valid[None, :, None, :]
    ref = (reference.roll & reference.valid[:, :, None]).transpose(0, 2, 1)[None]  # (1, n, C, S)
    tp = np.sum(system & ref, axis=(1, 3))
    n_sys = np.sum(system, axis=(1, 3))
    n_ref = np.sum(ref, axis=(1, 3))
    out = np.stack([tp, n_sys - tp, n_ref - tp], axis=-1)
    return out.reshape(lead + (n_classes, 3))
