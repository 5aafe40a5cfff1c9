"""Synthetic predictions with known ground truth, for tests, benchmarks and smoke runs of evaluation.

Events of random classes, onsets and lengths; frame probabilities are the encoded ground truth blurred
and mixed with noise, so that thresholds and median filters matter as they do on real model output.
"""

from __future__ import annotations

import numpy as np

from evaluation.predictions import Predictions
from avsed.core.classes import DESED_CLASSES
from avsed.core.labels import ClipTiming, Event, LabelEncoder


def synthetic_predictions(n_clips: int, seed: int = 0, events_per_clip: float = 2.5, noise: float = 0.15,
                          short_fraction: float = 0.1, video_fraction: float = 0.7,
                          classes: tuple[str, ...] = DESED_CLASSES, timing: ClipTiming = ClipTiming()) -> Predictions:
    rng = np.random.default_rng(seed)
    encoder = LabelEncoder(classes, timing)
    durations = np.where(rng.random(n_clips) < short_fraction, rng.uniform(4.0, 9.9, n_clips), timing.clip_seconds)
    events: list[list[Event]] = []
    for i in range(n_clips):
        evs: list[Event] = []
        for _ in range(rng.poisson(events_per_clip)):
            label = classes[rng.integers(len(classes))]
            length = float(np.clip(rng.lognormal(0.3, 0.9), 0.1, durations[i]))
            onset = float(rng.uniform(0, max(durations[i] - length, 1e-3)))
            ev = Event(round(onset, 3), round(min(onset + length, durations[i]), 3), label)
            # same-class events must not overlap or touch (psds_eval and sed_scores_eval refuse them)
            if ev.offset > ev.onset and all(o.label != label or ev.offset < o.onset or ev.onset > o.offset for o in evs):
                evs.append(ev)
        events.append(sorted(evs, key=lambda e: (e.onset, e.label)))
    strong = np.stack([encoder.encode_strong(evs) for evs in events])
    kernel = np.array([0.25, 0.5, 0.25])
    blurred = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="same"), 1, strong)
    shift = rng.integers(-2, 3, size=(n_clips, 1, len(classes)))
    blurred = np.take_along_axis(blurred, np.clip(np.arange(timing.output_frames)[None, :, None] + shift, 0,
                                                  timing.output_frames - 1), axis=1)
    logits = 4.0 * (blurred - 0.5) + rng.normal(0, noise * 6, blurred.shape)
    frame_probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    clip_probs = np.clip(frame_probs.max(axis=1) * 0.8 + rng.uniform(0, 0.2, (n_clips, len(classes))), 0, 1)
    return Predictions(
        clip_ids=np.array([f"Ysynth{i:06d}_0.000_10.000.wav" for i in range(n_clips)]),
        frame_probs=frame_probs, clip_probs=clip_probs.astype(np.float32), events=events, durations=durations,
        video_available=rng.random(n_clips) < video_fraction, classes=classes, timing=timing,
    )
