"""Ground-truth events of a set of clips as flat arrays (clip, onset, offset, class index), in clip order.

The one place where per-clip event lists become arrays for the metrics (segment roll, event reference, PSDS
ground truth, clip tags): one Python pass over the events, the rest is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avsed.core.classes import class_index
from avsed.core.labels import Event


@dataclass(frozen=True)
class FlatEvents:
    clip: np.ndarray  # (E,) int64, non-decreasing
    onset: np.ndarray  # (E,) float64
    offset: np.ndarray  # (E,) float64
    cls: np.ndarray  # (E,) int64 class index
    n_clips: int

    def __len__(self) -> int:
        return len(self.clip)

    def select(self, keep: np.ndarray) -> "FlatEvents":
        return FlatEvents(self.clip[keep], self.onset[keep], self.offset[keep], self.cls[keep], self.n_clips)


def flatten_events(events: list[list[Event]], classes: tuple[str, ...]) -> FlatEvents:
    """Every clip's events, clip by clip and in list order; an unknown label raises UnknownClassError."""
    index = {c: i for i, c in enumerate(classes)}
    flat = [(i, ev.onset, ev.offset, ev.label) for i, evs in enumerate(events) for ev in evs]
    cls = [index[label] if label in index else class_index(label, classes) for *_, label in flat]
    return FlatEvents(clip=np.array([f[0] for f in flat], dtype=np.int64),
                      onset=np.array([f[1] for f in flat], dtype=np.float64),
                      offset=np.array([f[2] for f in flat], dtype=np.float64),
                      cls=np.array(cls, dtype=np.int64), n_clips=len(events))


def rank_in_group(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element, its position among the elements with the same key (in input order), and the stable
    order that sorts by key."""
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.r_[True, sorted_key[1:] != sorted_key[:-1]] if len(key) else np.zeros(0, dtype=bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0)) if len(key) else np.zeros(0, np.int64)
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(len(key)) - first
    return rank, order
