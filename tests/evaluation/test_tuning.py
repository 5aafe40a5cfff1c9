"""The vectorised search equals a naive search that runs sed_eval (as DESED_task calls it) for every candidate."""

import numpy as np
import pytest

from evaluation.clip_f1 import clip_counts
from evaluation.counts import f1_from_counts
from evaluation.evaluate import tune
from evaluation.postprocess import postprocess
from avsed.synthetic.frame_probs import synthetic_predictions
from evaluation.tuning import FILTER_SIZES, THRESHOLDS
from avsed.synthetic.field_libraries import class_counts, sed_eval_f1


def _micro(counts):
    return float(f1_from_counts(*np.sum(counts, axis=0)))


@pytest.fixture(scope="module")
def setup():
    preds = synthetic_predictions(8, seed=5, events_per_clip=3.0)
    probs = preds.masked_frame_probs()
    n_classes = len(preds.classes)
    seg = np.zeros((len(THRESHOLDS), len(FILTER_SIZES), n_classes, 3), dtype=np.int64)
    ev = np.zeros_like(seg)
    for i, th in enumerate(THRESHOLDS):
        for j, size in enumerate(FILTER_SIZES):
            s, e = sed_eval_f1(preds, postprocess(probs, np.full(n_classes, th), np.full(n_classes, size)))
            for c, label in enumerate(preds.classes):
                seg[i, j, c] = class_counts(s, label)
                ev[i, j, c] = class_counts(e, label)
    return preds, tune(preds), seg.reshape(-1, n_classes, 3), ev.reshape(-1, n_classes, 3)


def _choice(tuned):
    return np.array([THRESHOLDS.index(t) * len(FILTER_SIZES) + FILTER_SIZES.index(f)
                     for t, f in zip(np.round(tuned.thresholds, 1), tuned.filter_sizes)])


def test_event_tuning_equals_naive_argmax_per_class(setup):
    preds, tuning, _, ev = setup
    f1 = f1_from_counts(ev[..., 0], ev[..., 1], ev[..., 2])  # (candidates, C)
    for c in range(len(preds.classes)):
        if np.all(np.isnan(f1[:, c])):
            assert (tuning.ebf1.thresholds[c], tuning.ebf1.filter_sizes[c]) == (0.5, 1)
            continue
        best = next(k for k in range(f1.shape[0]) if f1[k, c] == np.nanmax(f1[:, c]))  # first maximum, naive order
        assert _choice(tuning.ebf1)[c] == best
    picked = ev[_choice(tuning.ebf1), np.arange(len(preds.classes))]
    assert tuning.ebf1.validation_score == pytest.approx(np.nanmean(f1_from_counts(*picked.T)))


def test_segment_tuning_is_a_coordinate_optimum_of_sed_eval_micro_f1(setup):
    preds, tuning, seg, _ = setup
    choice = _choice(tuning.sbf1)
    classes = np.arange(len(preds.classes))
    best = _micro(seg[choice, classes])
    assert tuning.sbf1.validation_score == pytest.approx(best)
    for c in classes:
        for k in range(seg.shape[0]):
            trial = choice.copy()
            trial[c] = k
            assert _micro(seg[trial, classes]) <= best + 1e-12
    # and it is at least as good as tuning every class for its own F1
    own = np.argmax(np.nan_to_num(f1_from_counts(seg[..., 0], seg[..., 1], seg[..., 2]), nan=-1), axis=0)
    assert best >= _micro(seg[own, classes]) - 1e-12


def test_clip_tuning_is_a_coordinate_optimum(setup):
    preds, tuning, _, _ = setup
    weak = preds.weak_targets()
    best = _micro(clip_counts(preds.clip_probs, weak, tuning.cbf1.thresholds))
    assert tuning.cbf1.validation_score == pytest.approx(best)
    for c in range(len(preds.classes)):
        for th in THRESHOLDS:
            trial = tuning.cbf1.thresholds.copy()
            trial[c] = th
            assert _micro(clip_counts(preds.clip_probs, weak, trial)) <= best + 1e-12
