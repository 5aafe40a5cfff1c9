"""A small synthetic feature store for tests, benchmarks and the demo, written through the FeatureStore API.

Each clip has 1-2 sound events of the 10 DESED classes. Log-mel: noise plus a class-specific band of mel
bins while an event sounds, except that `confusable` pairs of classes share one band, so audio alone cannot
tell them apart. Visual embedding (per video frame): a noisy one-hot of the active classes, projected to
`dim` by a fixed random matrix, so video disambiguates what audio cannot. A fraction of clips has no video
(absent rows, masks False); strong (synthetic) clips may be audio-only as in DESED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avsed.core.labels import Event
from avsed.core.manifest import TRAINING_PARTITIONS, Clip, YouTubeSegment
from avsed.core.stats import update_feature_stats
from avsed.core.store import FeatureStore

SUPERVISION = {"synthetic": "strong", "weak": "weak", "unlabelled": "unlabelled", "validation": "strong", "eval": "strong"}


@dataclass
class SyntheticStoreSpec:
    clips: dict[str, int] = field(default_factory=lambda: {"synthetic": 48, "weak": 32, "unlabelled": 48,
                                                            "validation": 32, "eval": 48})
    visual: dict[str, int] = field(default_factory=lambda: {"openl3": 512})
    missing_fraction: float = 0.3
    strong_with_video: bool = False  # DESED's synthetic soundscapes have no video
    confusable: tuple[tuple[int, int], ...] = ((5, 6), (7, 8))
    band_gain: float = 3.0
    visual_noise: float = 0.3
    seed: int = 0


def _events(rng: np.random.Generator, classes: tuple[str, ...]) -> tuple[Event, ...]:
    out = []
    for c in rng.choice(len(classes), size=int(rng.integers(1, 3)), replace=False):
        onset = float(rng.uniform(0.0, 6.5))
        out.append(Event(round(onset, 3), round(min(10.0, onset + float(rng.uniform(1.5, 3.5))), 3), classes[int(c)]))
    return tuple(sorted(out, key=lambda e: (e.onset, e.label)))


def build_synthetic_store(path: str | Path, spec: SyntheticStoreSpec = SyntheticStoreSpec()) -> FeatureStore:
    rng = np.random.default_rng(spec.seed)
    store = FeatureStore.create_or_open(path)
    timing, classes = store.timing, store.classes
    band_of = list(range(len(classes)))
    for a, b in spec.confusable:
        band_of[b] = band_of[a]
    clips, has_video = [], []
    for partition, n in spec.clips.items():
        for i in range(n):
            events = _events(rng, classes)
            video = partition != "synthetic" or spec.strong_with_video
            name = f"Y{partition[:3]}{i:08d}_0.000_10.000.wav" if video else f"{partition}_{i}.wav"
            segment = YouTubeSegment(name[1:12], 0.0, 10.0) if video else None
            weak = tuple(sorted({e.label for e in events})) if SUPERVISION[partition] != "unlabelled" else ()
            clips.append(Clip(name, partition, SUPERVISION[partition], Path(name), segment, weak,
                              events if SUPERVISION[partition] == "strong" else ()))
            has_video.append(video and rng.random() >= spec.missing_fraction)
            clips[-1] = (clips[-1], events)
    rows = store.add_clips([c for c, _ in clips])
    store.set_durations(np.asarray(rows), np.full(len(rows), timing.clip_seconds, dtype=np.float32))

    store.ensure_feature("logmel", timing.mel_frames, timing.n_mels, "float32",
                         {"extractor": "synthetic-logmel", "version": 1, "config": {}, "weights": "none"})
    projections = {name: rng.normal(size=(len(classes), dim)).astype(np.float32) for name, dim in spec.visual.items()}
    for name, dim in spec.visual.items():
        store.ensure_feature(name, timing.video_frames, dim, "float32",
                             {"extractor": f"synthetic-{name}", "version": 1, "config": {}, "weights": "random"})
    mel_t = np.arange(timing.mel_frames) * timing.hop_length / timing.sample_rate
    vid_t = timing.video_frame_times()
    width = timing.n_mels // len(classes)
    for row, (clip, events), video in zip(rows, clips, has_video):
        logmel = rng.normal(-4.0, 1.0, size=(timing.mel_frames, timing.n_mels)).astype(np.float32)
        active_v = np.zeros((timing.video_frames, len(classes)), dtype=np.float32)
        for ev in events:
            c = classes.index(ev.label)
            on = (mel_t >= ev.onset) & (mel_t < ev.offset)
            band = slice(band_of[c] * width, band_of[c] * width + width)
            logmel[on, band] += spec.band_gain
            active_v[(vid_t >= ev.onset) & (vid_t < ev.offset), c] = 1.0
        store.write_row("logmel", row, logmel, np.ones(timing.mel_frames, dtype=bool))
        if video:
            for name, proj in projections.items():
                noisy = active_v + rng.normal(0.0, spec.visual_noise, size=active_v.shape).astype(np.float32)
                store.write_row(name, row, noisy @ proj, np.ones(timing.video_frames, dtype=bool))
    # The extraction's own statistics step (training partitions, real frames), for every feature.
    training = np.isin(store.partitions(), TRAINING_PARTITIONS)
    for name in ["logmel", *spec.visual]:
        if (training & store.present(name)).any():
            update_feature_stats(store, name)
    return store
