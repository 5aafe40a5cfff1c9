"""Our vectorised metrics against sed_eval, psds_eval and sed_scores_eval on the same detections."""

import numpy as np
import pytest
import sed_eval

from evaluation.clip_f1 import clip_counts
from evaluation.counts import f1_from_counts, macro_f1, micro_f1
from evaluation.event_f1 import event_counts, event_reference
from evaluation.postprocess import postprocess
from evaluation.psds import OPERATING_POINTS, PSDS1, PSDS2, psds_scores, psds_threshold_independent
from evaluation.segment_f1 import segment_counts, segment_reference
from evaluation.synthetic import synthetic_predictions
from tests.evaluation.field_libraries import psds_eval_values, sed_eval_f1


@pytest.fixture(scope="module")
def preds():
    return synthetic_predictions(40, seed=3, short_fraction=0.3)


@pytest.mark.parametrize("setting", [(0.5, 1), (0.3, 7), (0.7, 3)])
def test_segment_and_event_f1_equal_sed_eval(preds, setting):
    threshold, size = setting
    rng = np.random.default_rng(size)
    thresholds = np.clip(threshold + rng.choice([-0.1, 0, 0.1], 10), 0.1, 0.9)
    binary = postprocess(preds.masked_frame_probs(), thresholds, np.full(10, size))
    seg = segment_counts(binary, segment_reference(preds.events, preds.durations, preds.classes, preds.timing))
    ev = event_counts(binary, event_reference(preds.events, preds.classes), preds.timing)
    seg_ref, ev_ref = sed_eval_f1(preds, binary)
    assert micro_f1(*seg.T) == pytest.approx(seg_ref.results_overall_metrics()["f_measure"]["f_measure"], abs=1e-12)
    assert macro_f1(*ev.T) == pytest.approx(ev_ref.results_class_wise_average_metrics()["f_measure"]["f_measure"], abs=1e-12)
    for c, label in enumerate(preds.classes):
        for ours, lib in ((seg, seg_ref), (ev, ev_ref)):
            cw = lib.class_wise[label]
            assert ours[c].tolist() == [cw["Ntp"], cw["Nfp"], cw["Nfn"]]


def test_clip_f1_equals_sed_eval_audio_tagging(preds):
    thresholds = np.linspace(0.3, 0.7, 10)
    counts = clip_counts(preds.clip_probs, preds.weak_targets(), thresholds)
    tagging = sed_eval.audio_tag.AudioTaggingMetrics(tags=list(preds.classes))
    ref = [{"filename": c, "tags": [e.label for e in evs]} for c, evs in zip(preds.clip_ids, preds.events)]
    est = [{"filename": c, "tags": [l for l, p, t in zip(preds.classes, probs, thresholds) if p > t]}
           for c, probs in zip(preds.clip_ids, preds.clip_probs)]
    tagging.evaluate(reference_tag_list=ref, estimated_tag_list=est)
    assert micro_f1(*counts.T) == pytest.approx(tagging.results_overall_metrics()["f_measure"]["f_measure"], abs=1e-12)
    per_class = f1_from_counts(*counts.T)
    for c, label in enumerate(preds.classes):
        lib = tagging.results_class_wise_metrics()[label]["f_measure"]["f_measure"]
        assert per_class[c] == pytest.approx(lib, abs=1e-12, nan_ok=True)


def test_psds_equals_psds_eval_on_50_operating_points():
    preds = synthetic_predictions(16, seed=4, short_fraction=0.3, events_per_clip=3.0)
    probs = preds.masked_frame_probs()
    ours = psds_scores(probs, preds.events, preds.durations, preds.classes, preds.timing)
    ref = psds_eval_values(preds, probs, (PSDS1, PSDS2), OPERATING_POINTS)
    assert ref["psds1"] > 0 and ref["psds2"] > 0
    for name in ("psds1", "psds2"):
        assert ours[name].value == pytest.approx(ref[name], abs=1e-6)


def test_psds_equals_sed_scores_eval_on_scores_rounded_to_the_grid(preds):
    """sed_scores_eval on scores rounded down onto the 50-point grid reproduces the 50-point PSDS."""
    probs = preds.masked_frame_probs().astype(np.float64)
    grid = np.asarray(OPERATING_POINTS)
    idx = np.searchsorted(grid, probs, side="left") - 1  # largest grid point strictly below the score
    rounded = np.where(idx >= 0, grid[np.maximum(idx, 0)] + 1e-6, 0.0)
    ours = psds_scores(probs, preds.events, preds.durations, preds.classes, preds.timing)
    for sc in (PSDS1, PSDS2):
        exact = psds_threshold_independent(rounded, preds.events, preds.durations, preds.clip_ids, preds.classes,
                                           preds.timing, sc)
        assert ours[sc.name].value == pytest.approx(exact, abs=1e-6)
