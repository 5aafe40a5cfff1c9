"""Log-mel against an independent numpy STFT with the paper's settings."""

import numpy as np
import torch
import torchaudio

from features.base import build_extractor
from avsed.core.labels import ClipTiming


def test_logmel_matches_numpy_reference():
    t = ClipTiming()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, t.clip_samples).astype(np.float32)
    ex = build_extractor("logmel")
    out = ex.extract(x, t)
    assert out.shape == (512, 64) and out.dtype == np.float32
    # reference: reflect-padded centred frames, periodic Hann window, |rfft|, HTK mel filters, log(. + 1e-5)
    pad = t.n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n = np.arange(t.n_fft)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / t.n_fft)
    frames = np.stack([xp[i * t.hop_length:i * t.hop_length + t.n_fft] * win for i in range(t.mel_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1))
    fb = torchaudio.functional.melscale_fbanks(t.n_fft // 2 + 1, 0.0, 8000.0, 64, 16000).numpy().astype(np.float64)
    ref = np.log(mag @ fb + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_silence_is_finite():
    out = build_extractor("logmel").extract(np.zeros(160000, np.float32), ClipTiming())
    assert np.all(np.isfinite(out)) and np.allclose(out, np.log(1e-5))
