"""Reading a clip's audio: soundfile -> mono -> 16 kHz -> peak normalised -> padded/trimmed to the clip length."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from pipeline.errors import ClipError
from pipeline.labels import ClipTiming


class AudioError(ClipError):
    """A clip whose audio cannot be used; the message names the clip and the cause."""


@dataclass
class ClipAudio:
    waveform: np.ndarray  # float32, timing.clip_samples long, peak-normalised
    duration: float  # seconds of real audio before padding / trimming
    source_rate: int
    warnings: list[str] = field(default_factory=list)


def load_clip_audio(path: str | Path, clip_id: str, timing: ClipTiming = ClipTiming()) -> ClipAudio:
    path = Path(path)
    if not path.is_file():
        raise AudioError(clip_id, f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError depending on the damage
        raise AudioError(clip_id, f"unreadable audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(clip_id, f"audio file has no samples: {path}")
    if not np.all(np.isfinite(data)):
        raise AudioError(clip_id, f"audio contains NaN or infinite samples: {path}")
    warnings: list[str] = []
    mono = data.mean(axis=1)
    duration = mono.shape[0] / rate
    if rate != timing.sample_rate:
        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, timing.sample_rate).numpy()
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak > 0.0:
        mono = mono / peak
    else:
        # Silent audio: keep zeros (log-mel becomes log(eps)); dividing would give NaN.
        warnings.append("silent audio (all samples are zero)")
    n = timing.clip_samples
    if mono.shape[0] > n + timing.sample_rate // 100:  # more than 10 ms too long
        warnings.append(f"audio is {duration:.3f} s long; trimmed to {timing.clip_seconds:g} s")
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, mono.shape[0])] = mono[:n]
    return ClipAudio(out, min(duration, timing.clip_seconds), rate, warnings)
