"""Window cutting, overlap-averaging, and the padding and clipping of recordings shorter than a window."""

from __future__ import annotations

import numpy as np
import pytest

from detection.windows import cut_windows, edge_weights, overlap_average, window_grid
from evaluation.postprocess import postprocess
from avsed.core.labels import ClipTiming, LabelEncoder

TIMING = ClipTiming()


def test_a_37_s_recording_in_windows_of_10_s_every_5_s():
    grid = window_grid(TIMING, 37.0, 5.0)
    assert grid.hop_frames == 32  # 5 s on the 0.1565-s output grid: starts coincide with output frames
    assert grid.n_frames == int(np.ceil(37.0 / TIMING.output_frame_seconds))  # 237
    # every 32 frames while a window ends before the recording, then one that ends with it (not past it)
    assert grid.n_windows == 7 and grid.starts.tolist() == [0, 32, 64, 96, 128, 160, 237 - 64]
    assert grid.starts[-1] + grid.window_frames == grid.n_frames > grid.starts[-2] + grid.window_frames
    # sample starts are whole output frames of samples (8 hops of 313): the windows' log-mel frames line up
    assert grid.start_samples().tolist() == [k * 32 * 2504 for k in range(6)] + [173 * 2504]
    np.testing.assert_allclose(grid.start_seconds()[1], 32 * 0.1565)
    assert window_grid(TIMING, 37.0, 10.0).starts.tolist() == [0, 64, 128, 173]
    assert window_grid(TIMING, 37.0, 2.5).hop_frames == 16 and window_grid(TIMING, 37.0, 2.5).n_windows == 12
    assert window_grid(TIMING, 10.0, 5.0).starts.tolist() == [0]  # 64 frames: exactly one window
    for bad in (0.0, 10.1):
        with pytest.raises(ValueError, match="hop"):
            window_grid(TIMING, 37.0, bad)


def test_overlap_average_is_the_edge_weighted_mean_of_the_windows_covering_each_frame():
    grid = window_grid(TIMING, 37.0, 5.0)
    assert grid.window_frames == 64 and grid.hop_frames == 32
    weights = edge_weights(64)
    assert weights[31] == weights[32] == 1.0 and weights[0] == weights[63] == pytest.approx(0.5 / 31.5)
    # window k says k everywhere (two classes: k and 10 k)
    probs = np.stack([np.stack([np.full(64, k), np.full(64, 10 * k)], axis=1) for k in range(grid.n_windows)])
    timeline = overlap_average(probs, grid)
    assert timeline.shape == (grid.n_frames, 2)
    assert timeline[0, 0] == 0.0  # only window 0
    # frame 40: window 0 at 40 (distance to its edge 23.5), window 1 at 8 (8.5); two windows a hop apart add to 32
    assert timeline[40, 0] == pytest.approx((0 * 23.5 + 1 * 8.5) / 32.0)
    assert timeline[48, 0] == pytest.approx(16.5 / 32.0)  # window 0 at 48 (15.5/32), window 1 at 16 (16.5/32)
    # frame 100: window 2 (start 64) at 36 (27.5/32) and window 3 (start 96) at 4 (4.5/32)
    assert timeline[100, 0] == pytest.approx((2 * 27.5 + 3 * 4.5) / 32.0)
    assert timeline[grid.n_frames - 1, 0] == pytest.approx(6.0)  # past window 5's end: window 6 alone
    np.testing.assert_allclose(timeline[:, 1], 10 * timeline[:, 0], rtol=1e-6)
    # a constant the windows agree on stays that constant
    np.testing.assert_allclose(overlap_average(np.full(probs.shape, 0.3), grid), 0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="window outputs"):
        overlap_average(probs[:-1], grid)


def test_cut_windows_pads_past_the_end_with_silence():
    grid = window_grid(TIMING, 12.0, 5.0)
    wave = np.arange(int(12.0 * 16000), dtype=np.float32) + 1
    cut = cut_windows(wave, grid, np.arange(grid.n_windows))
    assert cut.shape == (grid.n_windows, TIMING.clip_samples) == (2, 160000)
    assert cut[0, 0] == 1 and cut[1, 0] == grid.start_samples()[1] + 1
    real = len(wave) - grid.start_samples()[1]
    assert 0 < TIMING.clip_samples - real < 2 * 2504  # the last window ends with the recording: < 2 frames padded
    assert (cut[1, :real] > 0).all() and (cut[1, real:] == 0).all()


def test_a_3_s_recording_is_one_padded_window_and_its_events_end_at_3_s():
    grid = window_grid(TIMING, 3.0, 5.0)
    assert grid.n_windows == 1 and grid.n_frames == 20  # ceil(3 / 0.1565)
    wave = np.ones(48000, dtype=np.float32)
    cut = cut_windows(wave, grid, np.arange(1))
    assert (cut[0, :48000] == 1).all() and (cut[0, 48000:] == 0).all()
    probs = np.zeros((1, 64, 2), dtype=np.float32)
    probs[0, :, 0] = 0.9  # the model says class 0 over the whole window, padding included
    timeline = overlap_average(probs, grid)
    assert timeline.shape == (20, 2)
    binary = postprocess(timeline[None], np.array([0.5, 0.5]), np.array([1, 1]))[0]
    events = LabelEncoder(("a", "b"), grid.recording_timing()).decode_strong(binary)
    assert [(e.onset, e.offset, e.label) for e in events] == [(0.0, 3.0, "a")]  # clipped to the recording's end


def test_log_mel_of_a_batch_of_windows_is_each_window_alone():
    from features.logmel import LogMel

    windows = np.random.default_rng(0).normal(size=(3, TIMING.clip_samples)).astype(np.float32)
    logmel = LogMel()
    batch = logmel.extract(windows, TIMING)
    assert batch.shape == (3, TIMING.mel_frames, TIMING.n_mels)
    np.testing.assert_array_equal(batch, np.stack([logmel.extract(w, TIMING) for w in windows]))
