"""Clip timing and the label encoder: the one place that converts between seconds and frames.

Every other module (feature extraction, training targets, post-processing, metrics) asks a
`ClipTiming` for frame counts and frame times instead of doing its own arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avsed.core.classes import DESED_CLASSES, class_index


@dataclass(frozen=True)
class ClipTiming:
    """Time grid of a clip. Defaults are the paper's (section 3.1.2).

    Audio: 16 kHz, window 1024, hop 313 -> 512 log-mel frames for 10 s (centred STFT: 1 + 160000 // 313).
    Model output: the CNN front-end pools time by 8 -> 64 frames, each 8 * 313 / 16000 = 0.1565 s.
    Video: 64 frames spread evenly over the 10 s clip (6.4 fps), one per output frame.
    """

    clip_seconds: float = 10.0
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 313
    n_mels: int = 64
    pooling: int = 8
    video_frames: int = 64

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def mel_frames(self) -> int:
        # torch.stft(center=True) yields 1 + n // hop frames
        return 1 + self.clip_samples // self.hop_length

    @property
    def output_frames(self) -> int:
        return self.mel_frames // self.pooling

    @property
    def output_frame_seconds(self) -> float:
        """Duration of one model output frame (0.1565 s by default)."""
        return self.hop_length * self.pooling / self.sample_rate

    @property
    def video_fps(self) -> float:
        return self.video_frames / self.clip_seconds

    def video_frame_times(self) -> np.ndarray:
        """Centre times (s) of the sampled video frames: evenly spread over the clip."""
        step = self.clip_seconds / self.video_frames
        return (np.arange(self.video_frames) + 0.5) * step

    def valid_mel_frames(self, duration: float) -> int:
        """How many log-mel frames carry real audio for a clip of `duration` seconds (the rest is padding)."""
        samples = min(int(round(duration * self.sample_rate)), self.clip_samples)
        return min(self.mel_frames, 1 + samples // self.hop_length)

    def valid_video_frames(self, duration: float) -> int:
        """How many of the evenly spread video frame times fall inside a video of `duration` seconds."""
        return int(np.count_nonzero(self.video_frame_times() < duration))

    def valid_output_frames(self, duration: float) -> int:
        return min(self.output_frames, int(math.ceil(duration / self.output_frame_seconds)))

    def time_to_frame(self, seconds: float | np.ndarray) -> np.ndarray:
        """Output-frame index containing `seconds` (clipped to the grid)."""
        idx = np.floor(np.asarray(seconds, dtype=np.float64) / self.output_frame_seconds + 1e-9)
        return np.clip(idx, 0, self.output_frames).astype(np.int64)

    def frame_to_time(self, frames: int | np.ndarray) -> np.ndarray:
        """Start time (s) of output frame `frames`; frame `output_frames` maps to the clip end."""
        t = np.asarray(frames, dtype=np.float64) * self.output_frame_seconds
        return np.minimum(t, self.clip_seconds)


@dataclass(frozen=True)
class Event:
    onset: float
    offset: float
    label: str


@dataclass(frozen=True)
class LabelEncoder:
    """Many-hot encoder between (onset, offset, label) events and frame / clip targets."""

    classes: tuple[str, ...] = DESED_CLASSES
    timing: ClipTiming = field(default_factory=ClipTiming)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode_weak(self, labels: list[str] | tuple[str, ...]) -> np.ndarray:
        y = np.zeros(self.n_classes, dtype=np.float32)
        for label in labels:
            y[class_index(label, self.classes)] = 1.0
        return y

    def encode_strong(self, events: list[Event] | tuple[Event, ...]) -> np.ndarray:
        """(output_frames, n_classes) targets: a frame is active if the event overlaps it."""
        y = np.zeros((self.timing.output_frames, self.n_classes), dtype=np.float32)
        for ev in events:
            c = class_index(ev.label, self.classes)
            start = int(self.timing.time_to_frame(ev.onset))
            stop = int(np.ceil(min(ev.offset, self.timing.clip_seconds) / self.timing.output_frame_seconds - 1e-9))
            stop = min(max(stop, start + 1), self.timing.output_frames)
            y[start:stop, c] = 1.0
        return y

    def decode_strong(self, binary: np.ndarray) -> list[Event]:
        """Turn a (frames, classes) binary matrix into events (onset/offset in seconds)."""
        binary = np.asarray(binary, dtype=bool)
        events: list[Event] = []
        padded = np.zeros((binary.shape[0] + 2, binary.shape[1]), dtype=np.int8)
        padded[1:-1] = binary
        change = np.diff(padded, axis=0)
        for c in range(binary.shape[1]):
            starts = np.flatnonzero(change[:, c] == 1)
            stops = np.flatnonzero(change[:, c] == -1)
            for s, e in zip(starts, stops):
                events.append(Event(float(self.timing.frame_to_time(s)), float(self.timing.frame_to_time(e)), self.classes[c]))
        events.sort(key=lambda ev: (ev.onset, ev.label))
        return events
