"""Event-based F1 (EBF1): macro-averaged over classes, sed_eval EventBasedMetrics semantics.

A detected event matches a reference event of its class when |onset difference| <= t_collar (0.2 s)
and |offset difference| <= max(t_collar, percentage_of_length x reference length); the count of true
positives is a maximum one-to-one (bipartite) matching, as sed_eval's 'optimal' matching. Nearly every
(clip, class) graph is a set of disjoint pairs, counted with array operations; the rare ones with a
vertex of degree > 1 are solved exactly with augmenting paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.events import flatten_events, rank_in_group
from evaluation.postprocess import Runs, frame_runs
from avsed.core.labels import ClipTiming, Event


@dataclass(frozen=True)
class EventF1Config:
    t_collar: float = 0.2
    percentage_of_length: float = 0.2


@dataclass(frozen=True)
class EventReference:
    """Reference events padded per (clip, class)."""

    onset: np.ndarray  # (n, C, R)
    offset: np.ndarray  # (n, C, R)
    offset_collar: np.ndarray  # (n, C, R)
    valid: np.ndarray  # (n, C, R) bool

    def n_ref(self) -> np.ndarray:
        return np.sum(self.valid, axis=(0, 2))


def event_reference(events: list[list[Event]], classes: tuple[str, ...], config: EventF1Config = EventF1Config()) -> EventReference:
    n, n_classes = len(events), len(classes)
    flat = flatten_events(events, classes)
    slot, _ = rank_in_group(flat.clip * n_classes + flat.cls)  # each event's place among its clip's class events
    width = int(max(1, slot.max() + 1 if len(slot) else 1))
    onset = np.zeros((n, n_classes, width))
    offset = np.zeros((n, n_classes, width))
    valid = np.zeros((n, n_classes, width), dtype=bool)
    onset[flat.clip, flat.cls, slot] = flat.onset
    offset[flat.clip, flat.cls, slot] = flat.offset
    valid[flat.clip, flat.cls, slot] = True
    collar = np.maximum(config.t_collar, config.percentage_of_length * (offset - onset))
    return EventReference(onset=onset, offset=offset, offset_collar=collar, valid=valid)


def _max_matching(compat: np.ndarray) -> int:
    """Maximum bipartite matching size (Kuhn's augmenting paths) of a small (est, ref) boolean matrix."""
    match_ref = [-1] * compat.shape[1]

    def augment(e: int, seen: list[bool]) -> bool:
        for r in np.flatnonzero(compat[e]):
            if not seen[r]:
                seen[r] = True
                if match_ref[r] < 0 or augment(match_ref[r], seen):
                    match_ref[r] = e
                    return True
        return False

    return sum(augment(e, [False] * compat.shape[1]) for e in range(compat.shape[0]))


def event_counts(binary: np.ndarray, reference: EventReference, timing: ClipTiming,
                 config: EventF1Config = EventF1Config()) -> np.ndarray:
    """(..., C, 3) TP/FP/FN per class for a (..., n, frames, C) binary frame array."""
    binary = np.asarray(binary, dtype=bool)
    lead = binary.shape[:-3]
    n_lead = int(np.prod(lead)) if lead else 1
    counts = event_counts_from_runs(frame_runs(binary), n_lead, reference, timing, config)
    return counts.reshape(lead + (binary.shape[-1], 3))


def event_counts_from_runs(runs: Runs, n_lead: int, reference: EventReference, timing: ClipTiming,
                           config: EventF1Config = EventF1Config()) -> np.ndarray:
    """(n_lead, C, 3) TP/FP/FN per class of the runs of a (n_lead, n, frames, C) binary array."""
    n, n_classes = reference.valid.shape[:2]
    bounds = timing.frame_to_time(np.arange(timing.output_frames + 1))
    # only runs in a (clip, class) with references can match (slot 0 is filled first): the pairwise test
    # runs on those, and only runs with at least one compatible reference take part in the matching
    cand = np.flatnonzero(reference.valid[runs.clip, runs.cls, 0])
    clip, cls = runs.clip[cand], runs.cls[cand]
    on, off = bounds[runs.start[cand]], bounds[runs.stop[cand]]
    compat = (
        reference.valid[clip, cls]
        & (np.abs(reference.onset[clip, cls] - on[:, None]) <= config.t_collar)
        & (np.abs(reference.offset[clip, cls] - off[:, None]) <= reference.offset_collar[clip, cls])
    )
    matched = compat.any(axis=1)
    cand, compat = cand[matched], compat[matched]
    key = (runs.lead[cand] * n + runs.clip[cand]) * n_classes + runs.cls[cand]  # runs are sorted by this key
    tp = np.zeros(n_lead * n_classes, dtype=np.int64)
    if len(key):
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group_of_run = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1
        deg_ref = np.add.reduceat(compat.astype(np.int64), first, axis=0)  # (groups, R)
        ambiguous = (deg_ref > 1).any(axis=1)
        np.logical_or.at(ambiguous, group_of_run, compat.sum(axis=1) > 1)
        edges = np.add.reduceat(compat.sum(axis=1), first)
        group_tp = np.where(ambiguous, 0, edges)
        bounds_of = np.r_[first, len(key)]
        for g in np.flatnonzero(ambiguous):
            group_tp[g] = _max_matching(compat[bounds_of[g]:bounds_of[g + 1]])
        group_key = key[first]
        group_lc = (group_key // (n * n_classes)) * n_classes + group_key % n_classes
        np.add.at(tp, group_lc, group_tp)
    n_sys = np.bincount(runs.lead * n_classes + runs.cls, minlength=n_lead * n_classes)
    n_ref = np.broadcast_to(reference.n_ref(), (n_lead, n_classes)).reshape(-1)
    out = np.stack([tp, n_sys - tp, n_ref - tp], axis=-1)
    return out.reshape(n_lead, n_classes, 3)
