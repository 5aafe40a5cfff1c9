"""Clip-based F1 (CBF1, audio tagging): micro-averaged F1 of thresholded clip probabilities.

sed_eval's AudioTaggingMetrics gives the same counts but scales as classes x clips^2; these are a few
lines of numpy over (clip, class) decisions.
"""

from __future__ import annotations

import numpy as np


def clip_counts(clip_probs: np.ndarray, weak_targets: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(..., C, 3) TP/FP/FN per class for thresholds shaped (..., C) or (...,) broadcast over classes.

    `thresholds` of shape (K, 1) evaluates K candidate thresholds for every class at once.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    decisions = clip_probs[None] > thresholds.reshape(-1, 1, thresholds.shape[-1] if thresholds.ndim else 1)
    truth = np.asarray(weak_targets, dtype=bool)[None]
    tp = np.sum(decisions & truth, axis=1)
    fp = np.sum(decisions & ~truth, axis=1)
    fn = np.sum(~decisions & truth, axis=1)
    out = np.stack([tp, fp, fn], axis=-1)
    return out.reshape(thresholds.shape[:-1] + out.shape[1:]) if thresholds.ndim else out[0]
