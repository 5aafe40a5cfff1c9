"""Our vectorised metrics against sed_eval (called as DESED_task calls it), psds_eval and sed_scores_eval."""

import dataclasses

import numpy as np
import pytest
import sed_eval

from evaluation.clip_f1 import clip_counts
from evaluation.counts import f1_from_counts, macro_f1, micro_f1
from evaluation.evaluate import EvaluationConfig, score, tune
from evaluation.event_f1 import event_counts, event_reference
from evaluation.postprocess import postprocess
from evaluation.psds import OPERATING_POINTS, PSDS1, PSDS2, psds_scores, psds_threshold_independent
from evaluation.segment_f1 import segment_counts, segment_reference
from avsed.synthetic.frame_probs import synthetic_predictions
from avsed.core.labels import Event
from avsed.synthetic.field_libraries import (class_counts, psds_eval_values, sed_eval_f1,
                                              sed_eval_segment_duration_bounded)


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
            assert ours[c].tolist() == class_counts(lib, label)


def _past_the_end():
    """Short clips (4-9.9 s) whose last reference event runs 1.3 s past the clip's end, and detections on every
    output frame up to 10 s (unmasked), so both reference and system events run past the end of the clip."""
    preds = synthetic_predictions(30, seed=7, short_fraction=0.6)
    events = []
    for evs in preds.events:
        last = max(range(len(evs)), key=lambda k: evs[k].offset, default=None)
        events.append([Event(e.onset, e.offset + 1.3, e.label) if k == last else e for k, e in enumerate(evs)])
    preds = dataclasses.replace(preds, events=events)
    assert any(e.offset > d for evs, d in zip(preds.events, preds.durations) for e in evs)
    binary = postprocess(preds.frame_probs, np.full(10, 0.5), np.full(10, 3))
    assert any(binary[i, preds.timing.valid_output_frames(d):].any() for i, d in enumerate(preds.durations))
    return preds, binary


def test_segment_f1_equals_desed_task_call_with_events_past_the_clip_end():
    """DESED_task calls sed_eval's SegmentBasedMetrics without evaluated_length_seconds: segments up to the last
    event offset count. Ours (the default convention) gives the same counts; the duration-bounded option gives
    sed_eval's counts with evaluated_length_seconds = duration, and here the two conventions differ."""
    preds, binary = _past_the_end()
    desed = segment_counts(binary, segment_reference(preds.events, preds.durations, preds.classes, preds.timing))
    bounded = segment_counts(binary, segment_reference(preds.events, preds.durations, preds.classes, preds.timing,
                                                       evaluated_length="duration"))
    lib_desed, _ = sed_eval_f1(preds, binary)
    lib_bounded = sed_eval_segment_duration_bounded(preds, binary)
    for ours, lib in ((desed, lib_desed), (bounded, lib_bounded)):
        assert micro_f1(*ours.T) == pytest.approx(lib.results_overall_metrics()["f_measure"]["f_measure"], abs=1e-12)
        for c, label in enumerate(preds.classes):
            assert ours[c].tolist() == class_counts(lib, label)
    assert micro_f1(*desed.T) != pytest.approx(micro_f1(*bounded.T), abs=1e-4)


def test_scored_sbf1_follows_the_configured_convention():
    """Through tune + score (masked frames: a detection may still end up to one frame past a short clip's end)."""
    preds, _ = _past_the_end()
    for convention, reference in (("desed_task", sed_eval_f1), ("duration", sed_eval_segment_duration_bounded)):
        config = EvaluationConfig(segment_evaluated_length=convention)
        tuning = tune(preds, config)
        binary = postprocess(preds.masked_frame_probs(), tuning.sbf1.thresholds, tuning.sbf1.filter_sizes)
        lib = reference(preds, binary)
        lib = lib[0] if isinstance(lib, tuple) else lib
        assert score(preds, tuning, config).metrics["sbf1"] == pytest.approx(
            lib.results_overall_metrics()["f_measure"]["f_measure"], abs=1e-12)
    with pytest.raises(ValueError, match="unknown"):
        score(preds, tuning, EvaluationConfig(segment_evaluated_length="clip"))


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


def test_helper_lists_are_desed_task_table_lookups(preds):
    """sed_eval_f1 builds the per-file lists directly; DESED_task's table route gives the same counts."""
    from avsed.synthetic.field_libraries import desed_task_sed_eval, detections_frame, ground_truth_frame

    binary = postprocess(preds.masked_frame_probs(), np.full(10, 0.4), np.full(10, 5))
    seg, ev = sed_eval_f1(preds, binary)
    ev_table, seg_table = desed_task_sed_eval(detections_frame(preds, binary), ground_truth_frame(preds))
    for label in preds.classes:
        assert class_counts(seg, label) == class_counts(seg_table, label)
        assert class_counts(ev, label) == class_counts(ev_table, label)
