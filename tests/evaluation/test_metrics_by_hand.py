"""Metric values worked out by hand on tiny clips."""

import warnings

import numpy as np
import pytest

from evaluation.clip_f1 import clip_counts
from evaluation.counts import macro_f1, micro_f1
from evaluation.event_f1 import event_counts, event_reference
from evaluation.predictions import OverlappingEventsWarning, Predictions
from evaluation.psds import OPERATING_POINTS, PSDS1, psds_scores
from evaluation.segment_f1 import segment_counts, segment_reference
from avsed.core.classes import DESED_CLASSES
from avsed.core.labels import ClipTiming, Event
from avsed.synthetic.field_libraries import psds_eval_values

T = ClipTiming()
DOG, CAT = DESED_CLASSES.index("Dog"), DESED_CLASSES.index("Cat")


def _one_clip():
    binary = np.zeros((1, 64, 10), dtype=bool)
    binary[0, 6:19, DOG] = True  # 0.939 s .. 2.9735 s: matches Dog [1.0, 3.0]
    binary[0, 40:42, DOG] = True  # 6.26 s .. 6.573 s: a false alarm
    events = [[Event(1.0, 3.0, "Dog"), Event(5.0, 6.0, "Cat")]]
    return binary, events


def test_event_based_f1_by_hand():
    binary, events = _one_clip()
    counts = event_counts(binary, event_reference(events, DESED_CLASSES), T)
    assert counts[DOG].tolist() == [1, 1, 0]  # onset off by 0.061 <= 0.2; offset by 0.0265 <= max(0.2, 0.4)
    assert counts[CAT].tolist() == [0, 0, 1]
    # Dog F1 = 2/3, Cat F1 = 0 (no output), the 8 classes without references are left out
    assert macro_f1(*counts.T) == pytest.approx(1 / 3)


def test_event_offset_collar_is_twenty_percent_of_length_at_least_the_collar():
    binary = np.zeros((1, 64, 10), dtype=bool)
    binary[0, 6:38, DOG] = True  # 0.939 .. 5.947 s
    reference = event_reference([[Event(1.0, 6.5, "Dog")]], DESED_CLASSES)
    # 5.5 s event: offset collar max(0.2, 1.1) = 1.1 >= |6.5 - 5.947| = 0.553 -> hit
    assert event_counts(binary, reference, T)[DOG].tolist() == [1, 0, 0]
    binary[:] = False
    binary[0, 6:12, DOG] = True  # 0.939 .. 1.878 s against [1.0, 1.5]: offset collar 0.2 < 0.378 -> miss
    reference = event_reference([[Event(1.0, 1.5, "Dog")]], DESED_CLASSES)
    assert event_counts(binary, reference, T)[DOG].tolist() == [0, 1, 1]


def test_segment_based_f1_by_hand():
    binary, events = _one_clip()
    counts = segment_counts(binary, segment_reference(events, np.array([10.0]), DESED_CLASSES, T))
    # Dog reference covers segments 1, 2; output covers 0, 1, 2 and 6; Cat [5, 6] covers segment 5
    assert counts[DOG].tolist() == [2, 2, 0]
    assert counts[CAT].tolist() == [0, 0, 1]
    assert micro_f1(*counts.T) == pytest.approx(4 / 7)


def test_segment_evaluated_length_conventions():
    binary = np.zeros((1, 64, 10), dtype=bool)
    binary[0, 40:64, DOG] = True  # 6.26 .. 10 s in a clip only 7.2 s long
    events = [[Event(6.5, 8.4, "Cat")]]  # the reference also runs past the end
    # DESED_task (default): every segment up to the last offset, 6..9 for Dog and 6..8 for Cat
    counts = segment_counts(binary, segment_reference(events, np.array([7.2]), DESED_CLASSES, T))
    assert counts[DOG].tolist() == [0, 4, 0] and counts[CAT].tolist() == [0, 0, 3]
    # duration-bounded: only segments 6, 7 (ceil 7.2 = 8 segments)
    counts = segment_counts(binary, segment_reference(events, np.array([7.2]), DESED_CLASSES, T,
                                                      evaluated_length="duration"))
    assert counts[DOG].tolist() == [0, 2, 0] and counts[CAT].tolist() == [0, 0, 2]


def test_clip_based_f1_by_hand():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    truth = np.array([[1, 0], [0, 1], [1, 1]])
    counts = clip_counts(probs, truth, np.array([0.5, 0.5]))
    assert counts.tolist() == [[1, 1, 1], [2, 0, 0]]
    assert micro_f1(*counts.T) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # candidate thresholds for all classes at once
    many = clip_counts(probs, truth, np.array([[0.05], [0.95]]))
    assert many[0].tolist() == [[2, 1, 0], [2, 1, 0]] and many[1].tolist() == [[0, 0, 2], [0, 0, 2]]


def test_psds1_by_hand():
    """One class. Event on frames 10..20 of clip 0 scored 0.3; a false alarm scored 0.5 in clip 1; 5 clips of 10 s.

    Operating points <= 0.29: TPR 1 and one FP in 50 s = 72 per hour; 0.31..0.49: TPR 0, FPR 72; above: nothing.
    The PSD-ROC is 0 up to eFPR 72 then 1 up to 100: PSDS1 = (100 - 72) / 100 = 0.28 (std over one class is 0).
    """
    classes = ("Dog",)
    probs = np.zeros((5, 64, 1), dtype=np.float32)
    probs[0, 10:20, 0] = 0.3
    probs[1, 30:33, 0] = 0.5
    onset, offset = (float(x) for x in T.frame_to_time(np.array([10, 20])))
    events = [[Event(onset, offset, "Dog")], [], [], [], []]
    res = psds_scores(probs, events, np.full(5, 10.0), classes, T, scenarios=(PSDS1,))
    assert res["psds1"].value == pytest.approx(0.28)


def test_predictions_reject_bad_input():
    with pytest.raises(ValueError, match="frame_probs"):
        Predictions(["a"], np.zeros((1, 10, 10)), np.zeros((1, 10)), [[]], [10.0], [True])
    with pytest.raises(ValueError, match="clip b"):
        Predictions(["b"], np.zeros((1, 64, 10)), np.zeros((1, 10)), [[Event(2.0, 1.0, "Dog")]], [10.0], [True])


def test_overlapping_same_class_events_are_merged_with_a_warning():
    """psds_eval refuses overlapping same-class ground truth; we merge each group into one event and say which."""
    events = [[Event(1.0, 3.0, "Dog"), Event(2.0, 2.5, "Cat"), Event(2.0, 4.0, "Dog"), Event(4.0, 5.0, "Dog")],
              [Event(0.5, 1.0, "Cat"), Event(0.5, 1.0, "Cat")], [Event(1.0, 2.0, "Cat")]]
    classes = ("Cat", "Dog")  # psds_eval needs ground truth for every class it is given
    probs = np.zeros((3, 64, 2), dtype=np.float32)
    probs[0, 6:26, 1] = 0.8
    probs[1, 3:7, 0] = 0.6
    with pytest.warns(OverlappingEventsWarning, match=r"2 groups .*clip a: Dog 1-3 s \+ Dog 2-4 s -> Dog 1-4 s; "
                                                      r"clip b: Cat 0.5-1 s \+ Cat 0.5-1 s -> Cat 0.5-1 s"):
        p = Predictions(["a", "b", "c"], probs, np.zeros((3, 2)), events, [10.0] * 3, [True] * 3, classes)
    # touching events (4.0) stay apart, as psds_eval counts them; other classes and clips are untouched
    assert p.events == [[Event(1.0, 4.0, "Dog"), Event(2.0, 2.5, "Cat"), Event(4.0, 5.0, "Dog")],
                        [Event(0.5, 1.0, "Cat")], [Event(1.0, 2.0, "Cat")]]
    # psds_eval accepts the merged ground truth and agrees with ours
    ref = psds_eval_values(p, p.masked_frame_probs(), (PSDS1,), OPERATING_POINTS[::5])
    ours = psds_scores(p.masked_frame_probs(), p.events, p.durations, p.classes, T, (PSDS1,), OPERATING_POINTS[::5])
    assert ref["psds1"] > 0 and ours["psds1"].value == pytest.approx(ref["psds1"], abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Predictions(["c"], probs[:1], np.zeros((1, 2)), [events[2]], [10.0], [True], classes)  # nothing to merge: silent


def test_segment_counts_with_several_runs_in_one_segment():
    binary = np.zeros((1, 64, 10), dtype=bool)
    binary[0, [0, 2, 4], DOG] = True  # three short runs inside segment 0
    binary[0, 6:8, DOG] = True  # 0.939 .. 1.252 s: segments 0 and 1, 0 shared with the runs before
    binary[0, 6, CAT] = True  # 0.939 .. 1.096 s: segments 0 and 1
    events = [[Event(0.5, 1.5, "Dog"), Event(1.2, 1.8, "Cat")]]
    for length in ("desed_task", "duration"):
        counts = segment_counts(binary, segment_reference(events, np.array([10.0]), DESED_CLASSES, T,
                                                          evaluated_length=length))
        assert counts[DOG].tolist() == [2, 0, 0] and counts[CAT].tolist() == [1, 1, 0]
    # a 0.9 s clip: only segment 0 counts when bounded by the duration
    counts = segment_counts(binary, segment_reference(events, np.array([0.9]), DESED_CLASSES, T,
                                                      evaluated_length="duration"))
    assert counts[DOG].tolist() == [1, 0, 0] and counts[CAT].tolist() == [0, 1, 0]
