import numpy as np
import scipy.ndimage

from evaluation.postprocess import binarize, decode_events, frame_runs, median_filter_binary, postprocess
from avsed.core.labels import LabelEncoder


def test_median_filter_matches_scipy_for_every_size():
    rng = np.random.default_rng(0)
    binary = rng.random((7, 64, 3)) > 0.6
    sizes = list(range(1, 32, 2))
    ours = median_filter_binary(binary, sizes)
    for k, size in enumerate(sizes):
        ref = scipy.ndimage.median_filter(binary.astype(np.uint8), size=(1, size, 1)) > 0
        np.testing.assert_array_equal(ours[k], ref)
    np.testing.assert_array_equal(median_filter_binary(binary, 5), ours[2])


def test_threshold_is_strict_and_median_after_threshold_commutes():
    probs = np.array([[0.5, 0.6, 0.5, 0.7, 0.2]]).T[None]  # (1, 5, 1)
    assert binarize(probs, 0.5)[0, :, 0].tolist() == [False, True, False, True, False]
    # median of thresholded == threshold of medians (odd windows), the DESED baseline's equivalence
    rng = np.random.default_rng(1)
    p = rng.random((4, 64, 2))
    med = scipy.ndimage.median_filter(p, size=(1, 7, 1))
    np.testing.assert_array_equal(postprocess(p, np.array([0.4, 0.6]), np.array([7, 7])), med > np.array([0.4, 0.6]))


def test_frame_runs_agree_with_label_encoder():
    rng = np.random.default_rng(2)
    binary = rng.random((2, 5, 64, 10)) > 0.5
    runs = frame_runs(binary)
    encoder = LabelEncoder()
    bounds = encoder.timing.frame_to_time(np.arange(65))
    for lead in range(2):
        decoded = decode_events(binary[lead], encoder)
        for clip in range(5):
            sel = (runs.lead == lead) & (runs.clip == clip)
            ours = sorted((float(bounds[s]), float(bounds[e]), encoder.classes[c])
                          for s, e, c in zip(runs.start[sel], runs.stop[sel], runs.cls[sel]))
            assert ours == sorted((ev.onset, ev.offset, ev.label) for ev in decoded[clip])
