"""A small synthetic data set shaped like DESED (DCASE 2020 task 4), with videos, for tests and the demo.

`make_synthetic_dataset(out_dir)` writes, in the published DESED layout (see `avsed.core.manifest`):

    OUT/metadata/...                   the five partitions' tsv files (strong / weak / unlabelled)
    OUT/audio/<partition dirs>/*.wav   44.1 kHz 16-bit mono clips
    OUT/videos/<youtube_id>.mp4        the videos that are "still on YouTube" (served by the loopback server)
    OUT/truth/videos.tsv               clip_id, youtube_id, kind (content|still|black|absent|corrupt), duration, start, end
                                       (what each clip's video shows: `evaluation.gate_weights.read_video_truth`, for judging a learned gate)
    OUT/truth/events.tsv               every event of every clip, including unlabelled ones, and whether it is audible
    OUT/truth/failures.tsv             with `failure_cases`: each failure clip's case and expected outcomes
    OUT/videos/answers.json, removed.txt   with `failure_cases`: the loopback host's script (avsed.synthetic.video_host)

The task is built so that the video carries information the audio lacks, as the paper assumes: each of the
ten classes is a distinct synthetic sound in its own frequency band, but a fraction of the events of the
recorded (YouTube-style) clips are quiet, below the background noise in their band, while every event is
always drawn in the video as a class-specific colour patch at a class-specific position. A model that sees
the video can find those events; an audio-only model cannot. Synthetic (Freesound-style) clips are
audio-only, as in DESED, and all their events are audible; `strong_video_fraction` turns a share of the
strongly labelled training clips into recordings with video instead (as later DESED releases have).

`failure_cases` adds weak clips that exercise the extraction's failure paths (corrupt video, transient host
errors, a removed video, unreadable / missing / truncated / short audio; `avsed.synthetic.failures`), drawn from
a random stream of their own so that the other clips are exactly those of a set made without them.
"""

from __future__ import annotations

import csv
import io
import math
import os
import string
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
from tqdm import tqdm

from avsed.core.classes import DESED_CLASSES
from avsed.core.errors import AvsedError
from avsed.core.labels import Event
from avsed.core.manifest import DESED_2020_PARTITIONS, PartitionSpec
from avsed.synthetic.failures import (FAILURE_CASES, REMOVED_STATUS, SHORT_HELD_SECONDS, TRUNCATED_HELD_SECONDS,
                                     truncate_wav, unknown_cases, write_corrupt_video, write_host_script,
                                     write_unreadable_audio)

PARTITION_NAMES = tuple(p.name for p in DESED_2020_PARTITIONS)  # synthetic, weak, unlabelled, validation, eval
_ID_ALPHABET = string.ascii_letters + string.digits + "_-"


class SynthConfigError(AvsedError, ValueError):
    """A synthetic data set configuration that cannot be realised."""


@dataclass(frozen=True)
class SynthConfig:
    clips: int = 120
    seed: int = 0
    # Share of the YouTube-style clips whose video is gone (the paper's DESED copy misses 15.5 %).
    missing_fraction: float = 0.155
    # Videos that exist but carry nothing: one still image / a black screen (common on YouTube).
    still_fraction: float = 0.05
    black_fraction: float = 0.05
    # synthetic (strong, audio-only), weak, unlabelled, validation (strong), eval (strong). The weak
    # partition is the largest training one because it is where the visual stream learns (strong
    # synthetic clips have no video). Every partition gets at least one clip.
    partition_fractions: tuple[float, float, float, float, float] = (0.2, 0.3, 0.2, 0.15, 0.15)
    sample_rate: int = 44100
    clip_seconds: float = 10.0
    # Small, low-rate videos: cheap to encode and decode; the pipeline rescales frames to 224 px and
    # samples 6.4 fps (12.8 = 2 x 6.4, so every sampled frame is an encoded one).
    video_size: int = 64
    video_fps: float = 12.8
    # Recorded clips shorter than 10 s (DESED has some), duration drawn from short_clip_seconds.
    short_clip_fraction: float = 0.05
    short_clip_seconds: tuple[float, float] = (5.0, 9.5)
    # Clips cut from later in their video (name Y<id>_<start>_<end>.wav with start > 0): the served
    # video is longer and shows the clip's content at [start, end], decoys elsewhere.
    offset_fraction: float = 0.1
    offset_start_seconds: tuple[float, float] = (1.0, 20.0)
    offset_tail_seconds: tuple[float, float] = (1.0, 5.0)
    events_per_clip: tuple[int, int] = (1, 3)
    event_seconds: tuple[float, float] = (0.5, 5.0)
    # Clips with no event at all (validation / eval / unlabelled only; DESED's weak clips always have labels).
    empty_clip_fraction: float = 0.04
    # Share of the strongly labelled training clips that are recordings with a video (YouTube-style names,
    # quiet events, videos served) instead of audio-only soundscapes. 0 is DESED 2020, whose strong clips
    # are all synthetic soundscapes; later DESED releases add strongly labelled YouTube clips (AudioSet
    # strong). With it, the visual stream gets frame-level supervision, which a short CPU run needs.
    strong_video_fraction: float = 0.0
    # Events of recorded clips that are (nearly) inaudible but visible: what the video adds.
    quiet_event_fraction: float = 0.3
    loud_snr_db: tuple[float, float] = (6.0, 20.0)  # event power over the background noise in the class's band
    quiet_snr_db: tuple[float, float] = (-20.0, -12.0)
    # Extra weak clips that fail on purpose, by case name (`avsed.synthetic.failures.ALL_FAILURE_CASES` for all);
    # empty: none. Their outcomes are written to truth/failures.tsv.
    failure_cases: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.clips < len(PARTITION_NAMES):
            raise SynthConfigError(f"clips={self.clips}: need at least {len(PARTITION_NAMES)} (one per partition)")
        if len(self.partition_fractions) != len(PARTITION_NAMES) or min(self.partition_fractions) <= 0:
            raise SynthConfigError(f"partition_fractions={self.partition_fractions}: need {len(PARTITION_NAMES)} positive values")
        for name in ("missing_fraction", "still_fraction", "black_fraction", "short_clip_fraction",
                     "offset_fraction", "empty_clip_fraction", "quiet_event_fraction", "strong_video_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SynthConfigError(f"{name}={v}: must be in [0, 1]")
        if self.missing_fraction + self.still_fraction + self.black_fraction > 1.0:
            raise SynthConfigError("missing_fraction + still_fraction + black_fraction must not exceed 1")
        if self.video_size < 16 or self.video_size % 2:
            raise SynthConfigError(f"video_size={self.video_size}: must be even and >= 16 (yuv420p)")
        if self.sample_rate < 2 * max(b[1] for b in CLASS_BANDS.values()) * 1.05:
            raise SynthConfigError(f"sample_rate={self.sample_rate}: too low for the class bands (up to 7.6 kHz)")
        if not 0 < self.events_per_clip[0] <= self.events_per_clip[1] <= len(DESED_CLASSES):
            raise SynthConfigError(f"events_per_clip={self.events_per_clip}")
        if not 0 < self.event_seconds[0] <= self.event_seconds[1] <= self.short_clip_seconds[0]:
            raise SynthConfigError(f"event_seconds={self.event_seconds} must fit the shortest clip")
        if isinstance(self.failure_cases, str) or unknown_cases(self.failure_cases):
            raise SynthConfigError(f"failure_cases={self.failure_cases!r}: a tuple of names from "
                                   f"{', '.join(FAILURE_CASES)}")
        if len(set(self.failure_cases)) != len(self.failure_cases):
            raise SynthConfigError(f"failure_cases={self.failure_cases!r}: a case is named twice")


@dataclass
class SynthSummary:
    out_dir: Path
    metadata_dir: Path
    audio_dir: Path
    video_dir: Path
    truth_path: Path  # truth/videos.tsv
    events_path: Path  # truth/events.tsv
    failures_path: Path | None = None  # truth/failures.tsv (with failure_cases)
    n_clips: dict[str, int] = field(default_factory=dict)  # per partition
    n_videos_available: int = 0  # content + still + black (failure clips' decodable videos included)
    n_failure_cases: int = 0
    n_videos_missing: int = 0
    n_videos_content: int = 0
    n_videos_still: int = 0
    n_videos_black: int = 0
    n_events: int = 0
    n_quiet_events: int = 0
    seconds: float = 0.0
    seconds_video: float = 0.0  # of which encoding videos


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip, drawn before any audio or video is made."""

    index: int
    clip_id: str
    partition: PartitionSpec
    youtube_id: str | None
    start: float
    duration: float
    video_kind: str  # content | still | black | absent (absent also for synthetic, audio-only clips)
    video_seconds: float
    events: tuple[Event, ...]
    quiet: tuple[bool, ...]
    failure: str | None = None  # the failure case this clip exercises (avsed.synthetic.failures), if any


# --- the ten sounds -------------------------------------------------------------------------------------------
# Each class lives in its own frequency band (disjoint, all below 8 kHz so they survive resampling to 16 kHz)
# and has its own texture, so a log-mel CNN can tell them apart after minutes of training.
CLASS_BANDS: dict[str, tuple[float, float]] = {
    "Vacuum_cleaner": (120.0, 300.0),
    "Electric_shaver_toothbrush": (350.0, 620.0),
    "Speech": (700.0, 1100.0),
    "Cat": (1250.0, 1750.0),
    "Dog": (1900.0, 2500.0),
    "Alarm_bell_ringing": (2800.0, 3300.0),
    "Running_water": (3500.0, 4300.0),
    "Dishes": (4700.0, 5500.0),
    "Blender": (5700.0, 6400.0),
    "Frying": (6800.0, 7600.0),
}

# Colour and grid cell (column, row) of each class's patch in the video: 5 x 2 cells over the frame.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "Alarm_bell_ringing": (255, 0, 0),
    "Blender": (0, 255, 0),
    "Cat": (0, 0, 255),
    "Dishes": (255, 255, 0),
    "Dog": (255, 0, 255),
    "Electric_shaver_toothbrush": (0, 255, 255),
    "Frying": (255, 128, 0),
    "Running_water": (128, 0, 255),
    "Speech": (255, 255, 255),
    "Vacuum_cleaner": (255, 160, 192),
}


def class_cell(label: str) -> tuple[int, int]:
    i = DESED_CLASSES.index(label)
    return i % 5, i // 5


def patch_box(label: str, size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the class's patch in a size x size frame (inset in its grid cell)."""
    col, row = class_cell(label)
    cw, ch = size / 5, size / 2
    x0, x1 = int(round(col * cw + cw * 0.12)), int(round((col + 1) * cw - cw * 0.12))
    y0, y1 = int(round(row * ch + ch * 0.1)), int(round((row + 1) * ch - ch * 0.1))
    return y0, y1, x0, x1


def _band_limit(x: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    """x with everything outside [lo, hi] Hz removed (FFT at a fast length: event lengths are arbitrary)."""
    n = x.shape[0]
    m = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(x, m)
    f = np.fft.rfftfreq(m, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0.0
    return scipy.fft.irfft(spec, m)[:n]


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    return _band_limit(rng.standard_normal(n), sr, lo, hi)


def _gate(t: np.ndarray, on: float, period: float, ramp: float = 0.005) -> np.ndarray:
    """Periodic on/off gate starting 'on' at t=0, with short ramps (no clicks outside the band)."""
    phase = np.mod(t, period)
    up = np.clip(phase / ramp, 0.0, 1.0)
    down = np.clip((on - phase) / ramp, 0.0, 1.0)
    return np.minimum(up, down) * (phase < on)


def class_sound(label: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of the class's sound, starting with energy at sample 0, unit-free (scaled later)."""
    t = np.arange(n) / sr
    lo, hi = CLASS_BANDS[label]
    k = rng.uniform(0.97, 1.03)  # small per-event variation
    if label == "Vacuum_cleaner":
        x = _band_noise(rng, n, sr, lo, hi) + 0.05 * np.sin(2 * np.pi * 210 * k * t)
    elif label == "Electric_shaver_toothbrush":
        f0 = 118.0 * k
        x = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) for h in range(1, 7) if lo <= h * f0 <= hi)
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 55 * t))
    elif label == "Speech":
        f0 = 180.0 * k * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(h * phase) for h in range(4, 7))
        x = x * _gate(t, 0.2, 0.26)
    elif label == "Cat":
        # meow: up-down sweep repeated every 0.7 s
        frac = np.mod(t, 0.7) / 0.7
        f = (lo + 50) * k + (hi - lo - 100) * np.sin(np.pi * frac)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * _gate(t, 0.6, 0.7, 0.01)
    elif label == "Dog":
        env = _gate(t, 0.15, 0.27) * np.exp(-np.mod(t, 0.27) / 0.12)
        x = _band_noise(rng, n, sr, lo, hi) * env
    elif label == "Alarm_bell_ringing":
        x = (np.sin(2 * np.pi * 2900 * k * t) + np.sin(2 * np.pi * 3150 * k * t)) * _gate(t, 0.12, 0.2)
    elif label == "Running_water":
        slow = _band_noise(rng, n, sr, 0.5, 4.0)
        slow = slow / (np.abs(slow).max() + 1e-12)
        x = _band_noise(rng, n, sr, lo, hi) * (0.7 + 0.3 * slow)
    elif label == "Dishes":
        # clinks: decaying 5.1 kHz rings at random times, the first at the onset
        m = int(0.03 * sr)
        ring = np.exp(-np.arange(m) / (0.008 * sr)) * np.sin(2 * np.pi * 5100 * k * np.arange(m) / sr)
        times = np.concatenate([[0.0], np.cumsum(rng.exponential(0.06, size=int(n / sr / 0.06) + 10))])
        x = 0.5 * _band_noise(rng, n, sr, lo, hi)
        for s in times[times < n / sr]:
            a = int(s * sr)
            x[a:a + m] += rng.uniform(0.6, 1.0) * ring[: n - a]
    elif label == "Blender":
        x = _band_noise(rng, n, sr, lo, hi) * (0.55 + 0.45 * np.sin(2 * np.pi * 25 * t))
    elif label == "Frying":
        crackle = (rng.random(n) < 300.0 / sr) * rng.uniform(0.3, 1.0, n)
        crackle[0] = 1.0
        x = _band_limit(crackle + 0.2 * rng.standard_normal(n), sr, lo, hi)
    else:  # pragma: no cover - DESED_CLASSES and CLASS_BANDS are the same ten names
        raise KeyError(label)
    x = np.asarray(x, dtype=np.float64)
    # 10 ms fades: sharp, known onsets without broadband clicks
    ramp = min(int(0.01 * sr), n // 2)
    if ramp:
        w = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= w
        x[n - ramp:] *= w[::-1]
    return x


def _background(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Stationary pink + white noise; returns the noise and its power spectrum (for band SNRs)."""
    spec = scipy.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    shape = 1.0 / np.sqrt(np.maximum(f, 50.0)) + 0.02  # pink with a white floor so high bands are not empty
    shape[f < 30.0] = 0.0
    spec = spec * shape
    noise = scipy.fft.irfft(spec, n)
    scale = 0.02 / (noise.std() + 1e-12)
    noise *= scale
    power = np.abs(spec * scale) ** 2 * 2.0 / n**2  # per-bin contribution to mean(noise**2)
    return noise, power


def render_audio(plan: ClipPlan, config: SynthConfig) -> np.ndarray:
    """The clip's waveform (float32, peak 0.7): background noise plus each event at its band SNR."""
    sr = config.sample_rate
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, plan.index, 1]))
    n = int(round(plan.duration * sr))
    noise, power = _background(rng, n, sr)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    y = noise.copy()
    for ev, quiet in zip(plan.events, plan.quiet):
        a, b = int(round(ev.onset * sr)), min(n, int(round(ev.offset * sr)))
        sound = class_sound(ev.label, b - a, sr, rng)
        lo, hi = CLASS_BANDS[ev.label]
        band_power = power[(freqs >= lo) & (freqs <= hi)].sum()
        snr_db = rng.uniform(*(config.quiet_snr_db if quiet else config.loud_snr_db))
        gain = math.sqrt(band_power * 10 ** (snr_db / 10) / (np.mean(sound**2) + 1e-20))
        y[a:b] += gain * sound
    y *= 0.7 / (np.abs(y).max() + 1e-12)
    return y.astype(np.float32)


# --- video --------------------------------------------------------------------------------------------------------
def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A clip's static background: a dark, softly tinted gradient (different per clip, never class-like)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    tint = rng.uniform(20, 70, size=3)
    slope = rng.uniform(-20, 20, size=(2, 3))
    img = tint + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_patches(frame: np.ndarray, labels) -> None:
    for label in labels:
        y0, y1, x0, x1 = patch_box(label, frame.shape[0])
        frame[y0:y1, x0:x1] = CLASS_COLOURS[label]


def render_video_frames(plan: ClipPlan, config: SynthConfig) -> np.ndarray:
    """(frames, size, size, 3) uint8 frames of the clip's video at config.video_fps.

    content: the clip's active classes as patches during [start, start + duration] (the clip's time range in
    the video); outside it, decoy patches of random classes, so a wrong range shows wrong classes.
    still: one unchanging picture. black: zeros.
    """
    size, fps = config.video_size, config.video_fps
    n_frames = int(math.ceil(plan.video_seconds * fps - 1e-9))
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, plan.index, 2]))
    if plan.video_kind == "black":
        return np.zeros((n_frames, size, size, 3), np.uint8)
    scene = _scene(rng, size)
    if plan.video_kind == "still":
        # an "album cover": a few random ellipses, unrelated to the class grid
        img = scene.copy()
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(3):
            cy, cx, ry, rx = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.1, 0.3) * size, rng.uniform(0.1, 0.3) * size
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(0, 256, 3)
        return np.broadcast_to(img, (n_frames, size, size, 3)).copy()
    frames = np.broadcast_to(scene, (n_frames, size, size, 3)).copy()
    decoys = rng.random((int(math.ceil(plan.video_seconds)) + 1, len(DESED_CLASSES))) < 0.2  # per second
    for k in range(n_frames):
        t = (k + 0.5) / fps  # the frame is shown over [k, k+1) / fps: decide at its centre
        tau = t - plan.start
        if 0.0 <= tau < plan.duration:
            active = [ev.label for ev in plan.events if ev.onset <= tau < ev.offset]
        else:
            active = [c for c, on in zip(DESED_CLASSES, decoys[int(t)]) if on]
        _draw_patches(frames[k], active)
    return frames


def encode_video(frames: np.ndarray, fps: float, path: Path, ffmpeg: str | None = None) -> None:
    """H.264 mp4 from raw RGB frames piped to ffmpeg; written to a temporary name, then renamed."""
    if ffmpeg is None:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    n, h, w, _ = frames.shape
    tmp = path.with_name(path.name + ".part")
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
           "-pix_fmt", "yuv420p", "-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
           "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to encode {path}: {proc.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, path)


# --- planning -----------------------------------------------------------------------------------------------------
def _apportion(total: int, weights, minimum: int = 0) -> list[int]:
    """Largest-remainder split of `total` by `weights`, each share at least `minimum`."""
    weights = np.asarray(weights, dtype=np.float64)
    counts = np.full(len(weights), minimum, dtype=np.int64)
    rest = total - counts.sum()
    if rest < 0:
        raise SynthConfigError(f"cannot give {minimum} to each of {len(weights)} groups out of {total}")
    quota = rest * weights / weights.sum()
    counts += np.floor(quota).astype(np.int64)
    short = total - counts.sum()
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    counts[order[:short]] += 1
    return counts.tolist()


def _count(fraction: float, n: int) -> int:
    """round(fraction * n), but at least one when the fraction is positive and there are 8 or more clips."""
    return min(n, max(round(fraction * n), int(fraction > 0 and n >= 8)))


def _pick(rng: np.random.Generator, preferred: list[int], pool: list[int], count: int) -> set[int]:
    """`count` members of pool at random, the first one from `preferred` when it has any."""
    chosen: set[int] = set()
    if count and preferred:
        chosen.add(int(rng.choice(preferred)))
    rest = [i for i in pool if i not in chosen]
    chosen.update(int(i) for i in rng.permutation(rest)[: max(0, count - len(chosen))])
    return chosen


def _youtube_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Unique 11-character ids from YouTube's alphabet; some start with '-' and some contain '_' (DESED has both)."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        chars = list(rng.choice(list(_ID_ALPHABET), size=11))
        i = len(ids)
        if i % 6 == 0:
            chars[0] = "-"
        if i % 5 == 1:
            chars[int(rng.integers(1, 11))] = "_"
        yid = "".join(chars)
        if yid not in seen:
            seen.add(yid)
            ids.append(yid)
    return ids


def _round3(x: float) -> float:
    return float(f"{x:.3f}")


def _draw_events(rng: np.random.Generator, config: SynthConfig, duration: float) -> list[Event]:
    k = int(rng.integers(config.events_per_clip[0], config.events_per_clip[1] + 1))
    labels = rng.choice(len(DESED_CLASSES), size=k, replace=False)  # distinct classes: same-class events never overlap
    events = []
    for c in labels:
        length = rng.uniform(*config.event_seconds)
        onset = _round3(rng.uniform(0.0, duration - length))
        events.append(Event(onset, _round3(min(duration, onset + length)), DESED_CLASSES[int(c)]))
    return sorted(events, key=lambda e: (e.onset, e.label))


def plan_dataset(config: SynthConfig) -> list[ClipPlan]:
    """Every clip's name, partition, video kind, duration and events: a pure function of the config."""
    config.validate()
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
    sizes = _apportion(config.clips, config.partition_fractions, minimum=1)
    parts = [spec for spec, size in zip(DESED_2020_PARTITIONS, sizes) for _ in range(size)]
    soundscapes = [i for i, spec in enumerate(parts) if spec.name == "synthetic"]
    # Strong clips that are recordings: drawn from their own stream, so a fraction of 0 leaves every other
    # draw (and so the whole data set) exactly as before the option existed.
    n_strong_rec = round(config.strong_video_fraction * len(soundscapes))
    srng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
    strong_recorded = set(int(i) for i in srng.permutation(soundscapes)[:n_strong_rec]) if n_strong_rec else set()
    recorded = [i for i, spec in enumerate(parts) if spec.name != "synthetic" or i in strong_recorded]
    ids = _youtube_ids(rng, len(recorded))
    # Video kinds: exact totals, spread over the recorded partitions in proportion to their size so that
    # validation and eval both get clips with and without video.
    n_rec = len(recorded)
    totals = {"absent": _count(config.missing_fraction, n_rec), "still": _count(config.still_fraction, n_rec),
              "black": _count(config.black_fraction, n_rec)}
    kinds: dict[int, str] = {}
    rec_parts = [p for p in PARTITION_NAMES if p != "synthetic" or strong_recorded]
    members = {p: [i for i in recorded if parts[i].name == p] for p in rec_parts}
    free = {p: list(rng.permutation(members[p])) for p in rec_parts}
    for kind, total in totals.items():
        # apportion over what is still free in each partition
        weights = [max(len(free[p]), 1e-9) for p in rec_parts]
        shares = _apportion(min(total, sum(len(free[p]) for p in rec_parts)), weights)
        for p, share in zip(rec_parts, shares):
            share = min(share, len(free[p]))
            for i in free[p][:share]:
                kinds[int(i)] = kind
            free[p] = free[p][share:]
    # Short and offset clips: exact counts too, and at least one of each with a content video, so that even a
    # 12-clip set exercises padded frames and the partial download of a range that does not start at 0.
    content = [i for i in recorded if kinds.get(i, "content") == "content"]
    short = _pick(rng, content, recorded, _count(config.short_clip_fraction, n_rec))
    offset = _pick(rng, content, recorded, _count(config.offset_fraction, n_rec))
    plans: list[ClipPlan] = []
    n_synth = 0
    rec_pos = {i: j for j, i in enumerate(recorded)}
    for i, spec in enumerate(parts):
        crng = np.random.default_rng(np.random.SeedSequence([config.seed, i, 0]))
        if spec.name == "synthetic" and i not in strong_recorded:
            duration, start = config.clip_seconds, 0.0
            events = _draw_events(crng, config, duration)
            plans.append(ClipPlan(i, f"{n_synth}.wav", spec, None, 0.0, duration, "absent", 0.0,
                                  tuple(events), (False,) * len(events)))
            n_synth += 1
            continue
        duration = config.clip_seconds
        if i in short:
            duration = _round3(crng.uniform(*config.short_clip_seconds))
        start = 0.0
        tail = 0.0
        if i in offset:
            start = _round3(crng.uniform(*config.offset_start_seconds))
            tail = crng.uniform(*config.offset_tail_seconds)
        empty = spec.name != "weak" and crng.random() < config.empty_clip_fraction
        events = [] if empty else _draw_events(crng, config, duration)
        quiet = tuple(bool(crng.random() < config.quiet_event_fraction) for _ in events)
        yid = ids[rec_pos[i]]
        kind = kinds.get(i, "content")
        clip_id = f"Y{yid}_{start:.3f}_{start + duration:.3f}.wav"
        video_seconds = 0.0 if kind == "absent" else _round3(start + duration + tail)
        plans.append(ClipPlan(i, clip_id, spec, yid, start, duration, kind, video_seconds, tuple(events), quiet))
    return plans + _failure_plans(config, plans)


def _failure_plans(config: SynthConfig, plans: list[ClipPlan]) -> list[ClipPlan]:
    """One weak clip per failure case, after every other clip, from random streams of their own."""
    if not config.failure_cases:
        return []
    weak = next(spec for spec in DESED_2020_PARTITIONS if spec.name == "weak")
    frng = np.random.default_rng(np.random.SeedSequence([config.seed, 4]))
    taken = {p.youtube_id for p in plans}
    ids = [y for y in _youtube_ids(frng, len(config.failure_cases) + len(taken)) if y not in taken]
    out = []
    for k, name in enumerate(config.failure_cases):
        case = FAILURE_CASES[name]
        i = len(plans) + k
        crng = np.random.default_rng(np.random.SeedSequence([config.seed, i, 0]))
        duration = case.clip_seconds or config.clip_seconds
        start = case.clip_start
        events = _draw_events(crng, config, duration)
        kind = "corrupt" if case.video_file == "corrupt" else "content"
        video_seconds = case.video_seconds if case.video_seconds is not None else _round3(start + duration)
        clip_id = f"Y{ids[k]}_{start:.3f}_{start + duration:.3f}.wav"
        out.append(ClipPlan(i, clip_id, weak, ids[k], start, duration, kind, video_seconds, tuple(events),
                            (False,) * len(events), failure=name))
    return out


# --- writing ------------------------------------------------------------------------------------------------------
def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _tsv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _metadata_rows(spec: PartitionSpec, plans: list[ClipPlan]) -> list[list]:
    if spec.supervision == "weak":
        rows = [["filename", "event_labels"]]
        rows += [[p.clip_id, ",".join(sorted({e.label for e in p.events}))] for p in plans]
    elif spec.supervision == "unlabelled":
        rows = [["filename"]] + [[p.clip_id] for p in plans]
    else:
        rows = [["filename", "onset", "offset", "event_label"]]
        for p in plans:
            if not p.events:
                rows.append([p.clip_id, "", "", ""])
            rows += [[p.clip_id, f"{e.onset:.3f}", f"{e.offset:.3f}", e.label] for e in p.events]
    return rows


def make_synthetic_dataset(out_dir: str | Path, config: SynthConfig = SynthConfig(),
                           progress: bool = True, workers: int = 1) -> SynthSummary:
    """Write the synthetic DESED-shaped data set under out_dir (see the module docstring). Deterministic in the seed.

    Videos in OUT/videos that this configuration does not serve (left from an earlier run) are removed,
    because the folder's content is what the loopback server reports as available. `workers` threads make clips
    at once (each clip draws from its own seeded stream and writes its own files, so the set is the same for any
    number; the FFTs and the ffmpeg encoders run outside the GIL).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    plans = plan_dataset(config)
    meta_dir, audio_dir, video_dir, truth_dir = out / "metadata", out / "audio", out / "videos", out / "truth"
    for d in (meta_dir, audio_dir, video_dir, truth_dir):
        d.mkdir(parents=True, exist_ok=True)
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def make_clip(plan: ClipPlan) -> float:
        """Write the clip's audio and video; returns the seconds spent on its video."""
        wav = audio_dir / plan.partition.audio / plan.clip_id
        wav.parent.mkdir(parents=True, exist_ok=True)
        _write_audio(plan, config, wav)
        if plan.video_kind == "corrupt":
            write_corrupt_video(video_dir / f"{plan.youtube_id}.mp4",
                                np.random.default_rng(np.random.SeedSequence([config.seed, plan.index, 5])))
        elif plan.video_kind != "absent":
            tv = time.perf_counter()
            encode_video(render_video_frames(plan, config), config.video_fps, video_dir / f"{plan.youtube_id}.mp4", ffmpeg)
            return time.perf_counter() - tv
        return 0.0

    bar = tqdm(total=len(plans), desc="synth clips", unit="clip", disable=not progress)
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        video_seconds = 0.0
        for seconds in pool.map(make_clip, plans):  # in order; at most `workers` clips are being made at once
            video_seconds += seconds
            bar.update(1)
    bar.close()
    served = {f"{p.youtube_id}.mp4" for p in plans if p.video_kind != "absent"}
    for stale in video_dir.glob("*.mp4"):
        if stale.name not in served:
            stale.unlink()
    failing = [p for p in plans if p.failure]
    # The host's script: written (or removed) every time, since the folder's content is what the host plays.
    write_host_script(video_dir, {p.youtube_id: [dict(a) for a in FAILURE_CASES[p.failure].answers]
                                  for p in failing if FAILURE_CASES[p.failure].answers},
                      [p.youtube_id for p in failing if FAILURE_CASES[p.failure].removed])
    for spec in DESED_2020_PARTITIONS:
        _write_text_atomic(meta_dir / spec.metadata, _tsv(_metadata_rows(spec, [p for p in plans if p.partition == spec])))
    video_rows = [["clip_id", "partition", "youtube_id", "kind", "duration", "start", "end"]]
    video_rows += [[p.clip_id, p.partition.name, p.youtube_id, p.video_kind, f"{p.video_seconds:.3f}",
                    f"{p.start:.3f}", f"{p.start + p.duration:.3f}"] for p in plans if p.youtube_id]
    _write_text_atomic(truth_dir / "videos.tsv", _tsv(video_rows))
    event_rows = [["clip_id", "partition", "onset", "offset", "event_label", "audible"]]
    for p in plans:
        event_rows += [[p.clip_id, p.partition.name, f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, "quiet" if q else "loud"]
                       for e, q in zip(p.events, p.quiet)]
    _write_text_atomic(truth_dir / "events.tsv", _tsv(event_rows))
    failures_path = truth_dir / "failures.tsv"
    failures_path.unlink(missing_ok=True)
    if failing:
        _write_text_atomic(failures_path, _tsv(_failure_rows(failing)))
    kinds = [p.video_kind for p in plans if p.youtube_id]
    return SynthSummary(
        out_dir=out, metadata_dir=meta_dir, audio_dir=audio_dir, video_dir=video_dir,
        truth_path=truth_dir / "videos.tsv", events_path=truth_dir / "events.tsv",
        failures_path=failures_path if failing else None, n_failure_cases=len(failing),
        n_clips={name: sum(p.partition.name == name for p in plans) for name in PARTITION_NAMES},
        n_videos_available=sum(k in ("content", "still", "black") for k in kinds), n_videos_missing=kinds.count("absent"),
        n_videos_content=kinds.count("content"), n_videos_still=kinds.count("still"), n_videos_black=kinds.count("black"),
        n_events=sum(len(p.events) for p in plans), n_quiet_events=sum(sum(p.quiet) for p in plans),
        seconds=time.perf_counter() - t0, seconds_video=video_seconds,
    )


def _write_audio(plan: ClipPlan, config: SynthConfig, wav: Path) -> None:
    """The clip's WAV (44.1 kHz 16-bit mono), or for a failure case the broken file (or none) it calls for."""
    how = FAILURE_CASES[plan.failure].audio_file if plan.failure else "ok"
    if how == "missing":
        wav.unlink(missing_ok=True)
        return
    if how == "unreadable":
        write_unreadable_audio(wav, np.random.default_rng(np.random.SeedSequence([config.seed, plan.index, 6])))
        return
    audio = render_audio(plan, config)
    if how == "short":
        audio = audio[: int(round(SHORT_HELD_SECONDS * config.sample_rate))]
    buf = io.BytesIO()
    sf.write(buf, audio, config.sample_rate, subtype="PCM_16", format="WAV")
    data = buf.getvalue()
    if how == "truncated":
        data = truncate_wav(data, int(round(TRUNCATED_HELD_SECONDS * config.sample_rate)), block_align=2)
    tmp = wav.with_name(wav.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, wav)


def _failure_rows(plans: list[ClipPlan]) -> list[list]:
    rows = [["clip_id", "case", "partition", "youtube_id", "video_first_run", "video_next_run", "audio_features",
             "audio_problem", "description"]]
    for p in plans:
        case = FAILURE_CASES[p.failure]
        rows.append([p.clip_id, case.name, p.partition.name, p.youtube_id, case.video_first_run, case.video_next_run,
                     "yes" if case.audio_features else "no", case.audio_problem, case.description])
    return rows
