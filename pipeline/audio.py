"""Reading a clip's audio: soundfile -> mono -> 16 kHz -> peak normalised -> padded/trimmed to the clip length.

What is wrong but still usable becomes a warning in `ClipAudio.warnings` (extraction records each as a
problem of the clip): silent audio, a file shorter than its header says (truncated), audio whose length
differs from the clip's (its name's time range, or the clip length for clips without one), audio longer than
a clip (trimmed). What cannot be used at all raises `AudioError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from avsed.core.errors import ClipError
from avsed.core.labels import ClipTiming
from avsed.core.manifest import parse_clip_name

# DESED's files match their names' time ranges to the sample; 50 ms of slack ignores rounding in the names
# (3 decimals) and resampler edges, and still catches a file that is a fraction of its clip.
DURATION_TOLERANCE_SECONDS = 0.05


class AudioError(ClipError):
    """A clip whose audio cannot be used; the message names the clip and the cause."""


@dataclass
class ClipAudio:
    waveform: np.ndarray  # float32, timing.clip_samples long, peak-normalised
    duration: float  # seconds of real audio before padding / trimming
    source_rate: int
    warnings: list[str] = field(default_factory=list)


def expected_clip_seconds(clip_id: str, timing: ClipTiming = ClipTiming()) -> tuple[float, str]:
    """How long the clip's audio should be, and where that comes from (for the warning's words).

    A recorded clip's name carries its time range (`Y<id>_0.000_9.435.wav`: 9.435 s); a synthetic soundscape is
    one clip length.
    """
    segment = parse_clip_name(clip_id)
    if segment is not None:
        return segment.end - segment.start, "the clip name says"
    return timing.clip_seconds, "a clip is"


def declared_frames(path: str | Path, info: "sf._SoundFileInfo") -> int | None:
    """Frames the file's header promises. libsndfile reports a WAV's frames from what the file holds, so a
    truncated WAV looks whole to it: its `data` chunk size is read here instead. None when unknown (a
    streaming writer's placeholder size, RF64)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return int(info.frames)  # other formats: the header's count as libsndfile read it (FLAC STREAMINFO)
        endian = "<" if head[:4] == b"RIFF" else ">"
        block_align = 0
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = fh.read(size)
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack(endian + "H", fmt[12:14])[0]
                fh.seek(size & 1, 1)
            elif kind == b"data":
                if size in (0, 0xFFFFFFFF) or block_align == 0:
                    return None
                return size // block_align
            else:
                fh.seek(size + (size & 1), 1)


def load_clip_audio(path: str | Path, clip_id: str, timing: ClipTiming = ClipTiming(),
                    expected_seconds: float | None = None) -> ClipAudio:
    """The clip's waveform at `timing.sample_rate`, peak-normalised, padded or trimmed to the clip length.

    `expected_seconds`: how long the audio should be (the caller's clip segment); by default from the clip name
    (`expected_clip_seconds`). A difference of more than `DURATION_TOLERANCE_SECONDS` is a warning with both.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(clip_id, f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError depending on the damage
        raise AudioError(clip_id, f"unreadable audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(clip_id, f"audio file has no samples: {path}")
    if not np.all(np.isfinite(data)):
        raise AudioError(clip_id, f"audio contains NaN or infinite samples: {path}")
    warnings: list[str] = []
    promised = declared_frames(path, info)
    if promised is not None and data.shape[0] < promised:
        warnings.append(f"truncated audio file: its header says {promised / rate:.3f} s, the file holds "
                        f"{data.shape[0] / rate:.3f} s")
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
    trimmed = mono.shape[0] > n + timing.sample_rate // 100  # more than 10 ms too long
    named_seconds, source = expected_clip_seconds(clip_id, timing)
    if expected_seconds is None:
        expected_seconds = named_seconds
    elif abs(expected_seconds - named_seconds) > 1e-6:
        source = "the clip is"  # the caller knows better than the name: say so without quoting the name
    trim_note = f"; trimmed to {timing.clip_seconds:g} s" if trimmed else ""
    if abs(duration - expected_seconds) > DURATION_TOLERANCE_SECONDS:
        warnings.append(f"audio is {duration:.3f} s but {source} {expected_seconds:.3f} s{trim_note}")
    elif trimmed:
        warnings.append(f"audio is {duration:.3f} s long{trim_note}")
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, mono.shape[0])] = mono[:n]
    return ClipAudio(out, min(duration, timing.clip_seconds), rate, warnings)
