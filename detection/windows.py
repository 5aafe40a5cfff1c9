"""Cutting a recording of any length into the model's windows and putting their outputs back on one timeline.

Window starts lie on the model's output-frame grid (a hop of `round(hop_seconds / frame)` output frames, 32 for
5 s), so the frames of overlapping windows coincide exactly and are averaged frame by frame; a frame covered by
k windows gets the mean of their k probabilities weighted by how far the frame lies from each window's nearer edge
(a triangle over the window): a frame near an edge was seen with context on one side only, and a window that
straddles two different scenes is least sure there. On the detection tests' bi-encoders (four seeds; 8 recordings
of 4 synthetic eval clips, 2026-12-07), macro EBF1 with the plain mean was 0.41 / 0.38 / 0.33 / 0.40, with the
triangle 0.48 / 0.40 / 0.37 / 0.45 (the same clips one file each: 0.57 / 0.35 / 0.34 / 0.50). The last window
ends with the recording (it starts off the hop, still on the frame grid) instead of reaching past it: seconds of
silence padding at the end of a window made the models' last frames jump in every class (seen on the demo's
bi-encoder). Only a recording shorter than a window is padded with silence, as a short training clip is, and
frames past its end are dropped. All times come from `ClipTiming`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from avsed.core.labels import ClipTiming


@dataclass(frozen=True)
class WindowGrid:
    timing: ClipTiming  # the model's clip timing (10-s windows)
    duration: float  # seconds of the recording
    hop_frames: int  # hop between window starts, in output frames

    @property
    def frame_seconds(self) -> float:
        return self.timing.output_frame_seconds

    @property
    def window_frames(self) -> int:
        return self.timing.output_frames

    @property
    def n_frames(self) -> int:
        """Output frames of the recording's timeline (the last one may reach a little past its end)."""
        return max(1, int(math.ceil(self.duration / self.frame_seconds - 1e-9)))

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    @property
    def starts(self) -> np.ndarray:
        """First output frame of each window on the recording's timeline: every hop while a window ends before
        the recording does, then one that ends with it."""
        regular = np.arange(0, max(0, self.n_frames - self.window_frames), self.hop_frames, dtype=np.int64)
        return np.append(regular, max(0, self.n_frames - self.window_frames)).astype(np.int64)

    def start_seconds(self, windows: np.ndarray | None = None) -> np.ndarray:
        starts = self.starts if windows is None else self.starts[windows]
        return starts * self.frame_seconds

    def start_samples(self, windows: np.ndarray | None = None) -> np.ndarray:
        starts = self.starts if windows is None else self.starts[windows]
        return starts * (self.timing.hop_length * self.timing.pooling)

    def recording_timing(self) -> ClipTiming:
        """The timing of the whole recording as one clip: events decoded with it end at the recording's end."""
        return replace(self.timing, clip_seconds=float(self.duration))


def window_grid(timing: ClipTiming, duration: float, hop_seconds: float = 5.0) -> WindowGrid:
    if duration <= 0:
        raise ValueError(f"a recording of {duration} s has no windows")
    hop = int(round(hop_seconds / timing.output_frame_seconds))
    if not 1 <= hop <= timing.output_frames:
        raise ValueError(f"hop {hop_seconds} s must be between one output frame ({timing.output_frame_seconds:.4f} s) "
                         f"and the window ({timing.clip_seconds:g} s)")
    return WindowGrid(timing, float(duration), hop)


def cut_windows(waveform: np.ndarray, grid: WindowGrid, windows: np.ndarray) -> np.ndarray:
    """(len(windows), clip_samples) float32: the windows' samples, zero-padded past the recording's end."""
    n = grid.timing.clip_samples
    out = np.zeros((len(windows), n), dtype=np.float32)
    for row, start in enumerate(grid.start_samples(np.asarray(windows)).tolist()):
        piece = waveform[start:start + n]
        out[row, :len(piece)] = piece
    return out


def edge_weights(window_frames: int) -> np.ndarray:
    """(W,) a frame's weight in its window: its distance to the window's nearer edge (frame centres, so every
    frame, the first and the last too, has a weight above 0), 1 at the middle."""
    centre = np.arange(window_frames) + 0.5
    weights = np.minimum(centre, window_frames - centre)
    return weights / weights.max()


def overlap_average(window_probs: np.ndarray, grid: WindowGrid) -> np.ndarray:
    """(n_frames, C) timeline: every frame the mean of the windows that cover it, weighted by `edge_weights`
    (a frame that one window alone covers takes that window's value). window_probs (n_windows, W, C)."""
    window_probs = np.asarray(window_probs, dtype=np.float64)
    if window_probs.shape[:2] != (grid.n_windows, grid.window_frames):
        raise ValueError(f"expected ({grid.n_windows}, {grid.window_frames}, C) window outputs, got {window_probs.shape}")
    weights = edge_weights(grid.window_frames)
    total = grid.starts[-1] + grid.window_frames
    sums = np.zeros((total, window_probs.shape[2]))
    totals = np.zeros(total)
    for start, probs in zip(grid.starts.tolist(), window_probs):
        sums[start:start + grid.window_frames] += probs * weights[:, None]
        totals[start:start + grid.window_frames] += weights
    return (sums / totals[:, None])[: grid.n_frames].astype(np.float32)
