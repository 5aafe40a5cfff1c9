"""Audio loading: resampling, peak normalisation, padding, and clear errors for bad files."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AudioError, load_clip_audio
from pipeline.labels import ClipTiming


def test_resampled_normalised_and_padded(tmp_path):
    sr = 44100
    t = np.arange(int(6.0 * sr)) / sr
    x = 0.25 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.wav", np.stack([x, x], 1), sr)
    a = load_clip_audio(tmp_path / "a.wav", "a.wav")
    assert a.waveform.shape == (160000,) and a.source_rate == sr and a.duration == pytest.approx(6.0)
    assert np.max(np.abs(a.waveform)) == pytest.approx(1.0, abs=1e-3)
    assert np.all(a.waveform[96100:] == 0)
    # 440 Hz survives resampling to 16 kHz
    spec = np.abs(np.fft.rfft(a.waveform[:16000]))
    assert np.argmax(spec) == 440


def test_silent_audio_is_finite_with_a_warning(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(16000 * 10), 16000)
    a = load_clip_audio(tmp_path / "s.wav", "s.wav")
    assert np.all(a.waveform == 0) and a.warnings == ["silent audio (all samples are zero)"]


def test_too_long_is_trimmed_with_a_warning(tmp_path):
    sf.write(tmp_path / "l.wav", np.ones(16000 * 12) * 0.1, 16000)
    a = load_clip_audio(tmp_path / "l.wav", "l.wav")
    assert a.waveform.shape == (160000,) and "trimmed" in a.warnings[0] and a.duration == 10.0


def test_missing_and_corrupt_files_name_the_clip(tmp_path):
    with pytest.raises(AudioError, match="clip Yx: audio file not found"):
        load_clip_audio(tmp_path / "nope.wav", "Yx")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="clip bad.wav: unreadable audio file"):
        load_clip_audio(tmp_path / "bad.wav", "bad.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0,)), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_clip_audio(tmp_path / "empty.wav", "empty.wav")
