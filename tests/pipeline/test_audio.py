"""Audio loading: resampling, peak normalisation, padding, clear errors for bad files, and short or truncated
files recorded as warnings with both durations."""

import struct

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AudioError, load_clip_audio
from avsed.core.labels import ClipTiming


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


# --- short and truncated files are recorded (issue 13 item 9) ------------------------------------------------------

def _noise(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    return (np.random.default_rng(1).standard_normal((int(round(seconds * sr)), channels)) * 0.1).astype(np.float32)


def test_a_truncated_wav_is_recorded_with_both_durations(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, _noise(10.0, 16000), 16000, subtype="PCM_16")
    path = tmp_path / "Yaaaaaaaaaaa_0.000_10.000.wav"
    path.write_bytes(full.read_bytes()[:44 + 2 * 16000 * 3])  # the header still says 10 s, 3 s of samples follow
    a = load_clip_audio(path, path.name)
    assert a.warnings == ["truncated audio file: its header says 10.000 s, the file holds 3.000 s",
                          "audio is 3.000 s but the clip name says 10.000 s"]
    assert a.duration == pytest.approx(3.0) and a.waveform[:48000].any() and not a.waveform[48000:].any()
    # the whole file: no warning
    assert load_clip_audio(full, "Yaaaaaaaaaaa_0.000_10.000.wav").warnings == []


def _wav_with_chunks(path, samples: np.ndarray, sr: int, keep_bytes: int) -> None:
    """A 16-bit stereo WAV with a LIST chunk of odd size (padded) before `data`, cut after `keep_bytes` of samples."""
    pcm = (samples * 32767).astype("<i2").tobytes()
    ch = samples.shape[1]
    fmt = struct.pack("<HHIIHH", 1, ch, sr, sr * 2 * ch, 2 * ch, 16)
    info = b"INFOISFT\x05\x00\x00\x00test\x00"  # 17 bytes: one pad byte follows
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", len(info)) + info
            + b"\x00" + b"data" + struct.pack("<I", len(pcm)) + pcm[:keep_bytes])
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + body)


def test_truncation_is_found_past_other_chunks_and_in_stereo(tmp_path):
    sr = 44100
    path = tmp_path / "Ybbbbbbbbbbb_20.000_30.000.wav"
    _wav_with_chunks(path, _noise(10.0, sr, 2), sr, keep_bytes=4 * int(2.5 * sr))
    a = load_clip_audio(path, path.name)
    assert a.warnings[0] == "truncated audio file: its header says 10.000 s, the file holds 2.500 s"
    assert a.duration == pytest.approx(2.5) and a.source_rate == sr
    _wav_with_chunks(path, _noise(10.0, sr, 2), sr, keep_bytes=4 * 10 * sr)
    assert load_clip_audio(path, path.name).warnings == []


def test_audio_shorter_than_its_clip_name_says_is_recorded(tmp_path):
    sf.write(tmp_path / "one.wav", _noise(1.0, 44100), 44100)
    a = load_clip_audio(tmp_path / "one.wav", "Yccccccccccc_0.000_9.435.wav")
    assert a.warnings == ["audio is 1.000 s but the clip name says 9.435 s"] and a.duration == pytest.approx(1.0)
    # the caller's expected length wins over the name; the name's own length is not a problem
    assert load_clip_audio(tmp_path / "one.wav", "x.wav", expected_seconds=9.435).warnings == [
        "audio is 1.000 s but the clip is 9.435 s"]
    assert load_clip_audio(tmp_path / "one.wav", "Yccccccccccc_3.000_4.000.wav").warnings == []
    sf.write(tmp_path / "ok.wav", _noise(9.435, 44100), 44100)
    assert load_clip_audio(tmp_path / "ok.wav", "Yccccccccccc_0.000_9.435.wav").warnings == []
    sf.write(tmp_path / "close.wav", _noise(9.40, 44100), 44100)  # 35 ms short: rounding, not a problem
    assert load_clip_audio(tmp_path / "close.wav", "Yccccccccccc_0.000_9.435.wav").warnings == []
    # a synthetic soundscape (no time range in its name) is one clip length
    sf.write(tmp_path / "12.wav", _noise(7.0, 44100), 44100)
    assert load_clip_audio(tmp_path / "12.wav", "12.wav").warnings == ["audio is 7.000 s but a clip is 10.000 s"]
