"""Post-processing of frame probabilities into detections: thresholding, median filtering, event runs.

As in the DESED baseline: strict thresholding (`p > threshold`), then a median filter over time on the
binary decisions (scipy's `median_filter` with its default `reflect` border). For odd window sizes the
median of a binary sequence is a majority vote, which we compute with cumulative sums so that all
filter sizes share one pass per threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avsed.core.labels import Event, LabelEncoder


def binarize(probs: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Strict thresholding; `threshold` may be a scalar or one value per class (last axis)."""
    return np.asarray(probs) > np.asarray(threshold)


def median_filter_binary(binary: np.ndarray, sizes: int | np.ndarray | list[int], axis: int = -2) -> np.ndarray:
    """Median filter of odd `sizes` along `axis` (time) of a boolean array, scipy `reflect` borders.

    With one size, returns an array shaped like `binary`; with a sequence of sizes, stacks the results
    on a new leading axis. The cumulative sum is built once for all sizes.
    """
    many = np.ndim(sizes) > 0
    size_list = [int(s) for s in np.atleast_1d(sizes)]
    if any(s < 1 or s % 2 == 0 for s in size_list):
        raise ValueError(f"median filter sizes must be odd and positive, got {size_list}")
    binary = np.moveaxis(np.asarray(binary, dtype=bool), axis, -1)
    length = binary.shape[-1]
    half = max(size_list) // 2
    # scipy.ndimage 'reflect' (d c b a | a b c d | d c b a) is numpy's 'symmetric' padding
    padded = np.pad(binary, [(0, 0)] * (binary.ndim - 1) + [(half, half)], mode="symmetric")
    csum = np.zeros(padded.shape[:-1] + (padded.shape[-1] + 1,), dtype=np.int16)
    np.cumsum(padded, axis=-1, out=csum[..., 1:])
    out = []
    for size in size_list:
        h = size // 2
        start = half - h
        window = csum[..., start + size: start + size + length] - csum[..., start: start + length]
        out.append(np.moveaxis(window > h, -1, axis))
    return np.stack(out) if many else out[0]


@dataclass(frozen=True)
class Runs:
    """Contiguous active frames ("events" in frame units) of a (..., clips, frames, classes) binary array.

    `lead` indexes the flattened leading (candidate) axes, `clip`, `cls` the clip and class,
    `start` the first active frame and `stop` one past the last one.
    """

    lead: np.ndarray
    clip: np.ndarray
    cls: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def frame_runs(binary: np.ndarray, time_axis: int = -2) -> Runs:
    """All runs of a (..., clips, frames, classes) boolean array, ordered by lead, clip, class, start.

    `time_axis=-1` takes a (..., clips, classes, frames) array instead, which saves a transposed copy.
    """
    binary = np.asarray(binary, dtype=bool)
    if time_axis == -2:
        n, frames, n_classes = binary.shape[-3:]
        b = binary.reshape((-1, n, frames, n_classes)).transpose(0, 1, 3, 2)  # (L, n, C, T)
    elif time_axis == -1:
        n, n_classes, frames = binary.shape[-3:]
        b = binary.reshape((-1, n, n_classes, frames))
    else:
        raise ValueError(f"time_axis must be -2 (clips, frames, classes) or -1 (clips, classes, frames), got {time_axis}")
    padded = np.zeros(b.shape[:-1] + (frames + 2,), dtype=bool)
    padded[..., 1:-1] = b
    # one flat search for value changes: within a row they alternate start, stop, start, ... and no run
    # crosses a row (both ends are padded), so even positions are starts and odd ones stops
    change = np.flatnonzero(padded[..., 1:] != padded[..., :-1])
    row, start = np.divmod(change[0::2], frames + 1)
    stop = change[1::2] - row * (frames + 1)
    lead, rest = np.divmod(row, n * n_classes)
    clip, cls = np.divmod(rest, n_classes)
    return Runs(lead=lead, clip=clip, cls=cls, start=start, stop=stop)


def decode_events(binary: np.ndarray, encoder: LabelEncoder) -> list[list[Event]]:
    """Per-clip events in seconds from an (n, frames, classes) binary array (the label encoder converts)."""
    return [encoder.decode_strong(b) for b in np.asarray(binary, dtype=bool)]


def postprocess(frame_probs: np.ndarray, thresholds: np.ndarray, filter_sizes: np.ndarray) -> np.ndarray:
    """Class-wise threshold then class-wise median filter: (n, frames, C) probs -> (n, frames, C) bool."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    filter_sizes = np.asarray(filter_sizes, dtype=np.int64)
    binary = binarize(frame_probs, thresholds)
    out = np.empty_like(binary)
    for c in range(binary.shape[-1]):
        out[..., c] = median_filter_binary(binary[..., c:c + 1], int(filter_sizes[c]))[..., 0]
    return out
