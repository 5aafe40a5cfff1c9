"""Model outputs of one data partition, with the ground truth needed to evaluate them.

`Predictions` is the hand-over from the training stage to evaluation: frame and clip probabilities
per clip, the strong ground truth, clip durations and whether the clip's video was available.
Overlapping ground-truth events of the same class are merged into one, with a warning that names the clips
and events: psds_eval and sed_scores_eval refuse such annotations, and the frame targets already see their union.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from evaluation.events import flatten_events
from avsed.core.classes import DESED_CLASSES, class_index
from avsed.core.labels import ClipTiming, Event, LabelEncoder


class PredictionsError(ValueError):
    """Inconsistent prediction arrays or ground truth (the message names the clip)."""


class OverlappingEventsWarning(UserWarning):
    """Ground-truth events of one class overlapped in a clip and were merged (the message names them)."""


def merge_overlapping(events: list[Event]) -> tuple[list[Event], list[tuple[list[Event], Event]]]:
    """Merge same-class events that overlap (strictly, as psds_eval's test: touching events stay apart).

    Returns the events (order kept, a merged group in place of its first member) and the merges made,
    each as (original events, merged event).
    """
    by_label: dict[str, list[int]] = {}
    for k, ev in enumerate(events):
        by_label.setdefault(ev.label, []).append(k)
    replace: dict[int, Event] = {}
    drop: set[int] = set()
    merges = []
    for label, idx in by_label.items():
        idx = sorted(idx, key=lambda k: (events[k].onset, events[k].offset))
        group = [idx[0]]
        for k in idx[1:] + [None]:
            end = max(events[g].offset for g in group)
            if k is not None and events[k].onset < end:
                group.append(k)
                continue
            if len(group) > 1:
                merged = Event(min(events[g].onset for g in group), end, label)
                replace[min(group)] = merged
                drop.update(g for g in group if g != min(group))
                merges.append(([events[g] for g in group], merged))
            if k is not None:
                group = [k]
    return [replace.get(k, ev) for k, ev in enumerate(events) if k not in drop], merges


@dataclass
class Predictions:
    """Probabilities and ground truth of n clips.

    frame_probs: (n, output_frames, C) float32 on the `ClipTiming` output-frame grid.
    clip_probs: (n, C) float32 clip-level (tagging) probabilities.
    events: per clip, the strong ground-truth events in seconds.
    durations: (n,) clip durations in seconds (10 s for most DESED clips, shorter ones exist).
    video_available: (n,) bool, whether the clip's video was available to the model.
    """

    clip_ids: np.ndarray
    frame_probs: np.ndarray
    clip_probs: np.ndarray
    events: list[list[Event]]
    durations: np.ndarray
    video_available: np.ndarray
    classes: tuple[str, ...] = DESED_CLASSES
    timing: ClipTiming = field(default_factory=ClipTiming)

    def __post_init__(self) -> None:
        self.clip_ids = np.asarray(self.clip_ids, dtype=str)
        self.frame_probs = np.asarray(self.frame_probs, dtype=np.float32)
        self.clip_probs = np.asarray(self.clip_probs, dtype=np.float32)
        self.durations = np.asarray(self.durations, dtype=np.float64)
        self.video_available = np.asarray(self.video_available, dtype=bool)
        self.events = [list(evs) for evs in self.events]
        n, n_classes, frames = len(self.clip_ids), len(self.classes), self.timing.output_frames
        if self.frame_probs.shape != (n, frames, n_classes):
            raise PredictionsError(f"frame_probs has shape {self.frame_probs.shape}, expected {(n, frames, n_classes)}")
        if self.clip_probs.shape != (n, n_classes):
            raise PredictionsError(f"clip_probs has shape {self.clip_probs.shape}, expected {(n, n_classes)}")
        for name in ("durations", "video_available"):
            if getattr(self, name).shape != (n,):
                raise PredictionsError(f"{name} has shape {getattr(self, name).shape}, expected {(n,)}")
        if len(self.events) != n:
            raise PredictionsError(f"events has {len(self.events)} clip lists, expected {n}")
        if len(set(self.clip_ids.tolist())) != n:
            raise PredictionsError("duplicate clip ids in predictions")
        for clip_id, evs, duration in zip(self.clip_ids, self.events, self.durations):
            if not duration > 0:
                raise PredictionsError(f"clip {clip_id}: duration {duration} is not positive")
            for ev in evs:
                class_index(ev.label, self.classes)  # raises UnknownClassError naming the label
                if not ev.offset >= ev.onset:
                    raise PredictionsError(f"clip {clip_id}: event {ev} has offset before onset")
        self._merge_overlapping_events()
        for name in ("frame_probs", "clip_probs"):
            arr = getattr(self, name)
            if not np.all(np.isfinite(arr)):
                bad = self.clip_ids[~np.isfinite(arr).reshape(n, -1).all(axis=1)][0]
                raise PredictionsError(f"clip {bad}: {name} holds NaN or inf")

    def _merge_overlapping_events(self) -> None:
        notes = []
        for i, evs in enumerate(self.events):
            merged, merges = merge_overlapping(evs)
            if merges:
                self.events[i] = merged
                notes += [f"clip {self.clip_ids[i]}: " + " + ".join(_fmt(e) for e in group) + f" -> {_fmt(into)}"
                          for group, into in merges]
        if notes:
            shown = "; ".join(notes[:5]) + (f"; and {len(notes) - 5} more" if len(notes) > 5 else "")
            warnings.warn(f"{len(notes)} groups of overlapping ground-truth events of the same class were merged into "
                          f"one event each (psds_eval refuses them; fix the metadata to silence this): {shown}",
                          OverlappingEventsWarning, stacklevel=3)

    @property
    def n_clips(self) -> int:
        return len(self.clip_ids)

    @property
    def encoder(self) -> LabelEncoder:
        return LabelEncoder(self.classes, self.timing)

    def weak_targets(self) -> np.ndarray:
        """(n, C) clip-level ground truth: a class is present if any of its events is."""
        flat = flatten_events(self.events, self.classes)
        weak = np.zeros((self.n_clips, len(self.classes)), dtype=np.float32)
        weak[flat.clip, flat.cls] = 1.0
        return weak

    def valid_frame_mask(self) -> np.ndarray:
        """(n, frames) True for output frames that carry real audio (shorter clips are padded)."""
        # ClipTiming.valid_output_frames for every clip at once
        valid = np.minimum(self.timing.output_frames, np.ceil(self.durations / self.timing.output_frame_seconds))
        return np.arange(self.timing.output_frames)[None, :] < valid[:, None]

    def masked_frame_probs(self) -> np.ndarray:
        """Frame probabilities with padding frames set to 0, so no detection starts after a clip's end."""
        return self.frame_probs * self.valid_frame_mask()[:, :, None]

    def subset(self, mask: np.ndarray) -> "Predictions":
        """The clips where `mask` (bool (n,) or indices) holds, e.g. `video_available`."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        return Predictions(
            clip_ids=self.clip_ids[idx], frame_probs=self.frame_probs[idx], clip_probs=self.clip_probs[idx],
            events=[self.events[i] for i in idx], durations=self.durations[idx],
            video_available=self.video_available[idx], classes=self.classes, timing=self.timing,
        )


def _fmt(ev: Event) -> str:
    return f"{ev.label} {ev.onset:g}-{ev.offset:g} s"
