"""TP/FP/FN counts and the F1 score computed from them, with sed_eval's conventions.

Counts are additive over clips and (for micro averages) over classes, which is what makes the
post-processing search cheap: a candidate's score is a sum of precomputed per-class counts.
"""

from __future__ import annotations

import numpy as np


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN).

    As sed_eval with `empty_system_output_handling='zero_score'` (the DESED baseline's setting):
    no reference (TP + FN = 0) gives NaN (left out of macro averages), no output but references gives 0.
    """
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return np.where(tp + fn > 0, f1, np.nan)


def macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Mean over classes (last axis) of class-wise F1, ignoring classes without references."""
    f1 = f1_from_counts(tp, fp, fn)
    return float(np.nanmean(f1)) if np.any(~np.isnan(f1)) else float("nan")


def micro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """F1 of counts summed over classes."""
    return float(f1_from_counts(np.sum(tp), np.sum(fp), np.sum(fn)))
