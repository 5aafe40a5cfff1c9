"""What `avsed detect` is given, made into recordings: files and folders of audio or video, and YouTube URLs or ids
fetched with the project's download session; then each file's streams, its audio as training reads a clip's
(16 kHz mono, peak-normalised: pipeline/audio.py) and its video frames at the store's rate and size
(pipeline/frames.py).

There is no ffprobe here (STACK.md): a file's streams and duration come from ffmpeg's banner.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.audio import AudioError, load_clip_audio
from pipeline.download import DownloadConfig, download_clips
from avsed.core.errors import AvsedError
from pipeline.ffmpeg_bin import ffmpeg_exe
from pipeline.frames import VideoError, decode_frames, parse_duration
from avsed.core.labels import ClipTiming
from avsed.core.manifest import YouTubeSegment

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
_YOUTUBE_URL = re.compile(r"^(?:https?://)?(?:www\.|m\.)?(?:youtube\.com/(?:watch\?(?:.*&)?v=|shorts/|embed/)|"
                          r"youtu\.be/)(?P<id>[0-9A-Za-z_-]{11})")
_YOUTUBE_ID = re.compile(r"^[0-9A-Za-z_-]{11}$")
# The whole video with its sound (detection needs both), the smallest picture at or above 224 px: frames end at
# the store's size anyway. yt-dlp merges a separate audio stream with the project's ffmpeg.
DETECT_FORMAT = "bv*[height>=?224]+ba/b[height>=?224]/b"


class InputError(AvsedError):
    """One input cannot be used; the message names it, the cause and what to do. The other inputs still run."""


@dataclass
class Source:
    """One recording to run: a local file, or a YouTube video to fetch first."""

    name: str  # what the outputs call it (the TSV's filename column)
    path: Path | None = None
    youtube_id: str | None = None


def _youtube_id(item: str) -> str | None:
    m = _YOUTUBE_URL.match(item)
    if m:
        return m["id"]
    return item if _YOUTUBE_ID.match(item) else None


def collect_sources(items: list[str]) -> tuple[list[Source], list[str]]:
    """The recordings named by files, folders (their media files, recursively, sorted) and YouTube URLs or ids;
    and one line per item that names nothing usable."""
    sources, problems = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
            if not found:
                problems.append(f"{item}: a folder without audio or video files ({', '.join(MEDIA_EXTENSIONS)})")
            sources += [Source(p.name, p) for p in found]
        elif path.is_file():
            sources.append(Source(path.name, path))
        elif _youtube_id(item):
            yid = _youtube_id(item)
            sources.append(Source(yid, youtube_id=yid))
        else:
            problems.append(f"{item}: no such file or folder, and not a YouTube URL or id")
    return sources, problems


def fetch_youtube(sources: list[Source], out_dir: Path, config: DownloadConfig, progress: bool = True
                  ) -> list[str]:
    """Download every YouTube source (whole video with sound) into `out_dir` through one download session;
    sets their paths. Returns one line per video that could not be had."""
    wanted = {s.youtube_id: s for s in sources if s.youtube_id and s.path is None}
    if not wanted:
        return []
    config = config.model_copy(update={"partial": False})
    problems = []
    items = [(yid, YouTubeSegment(yid, 0.0, 0.0)) for yid in wanted]
    for result in download_clips(items, out_dir, config, progress=progress):
        if result.status == "available" and result.path is not None:
            wanted[result.clip_id].path = Path(result.path)
        else:
            why = result.reason or result.status
            problems.append(f"{config.url(result.clip_id)}: not downloaded ({why}: {result.message}); "
                            f"{'try again later' if result.status != 'missing' else 'the video cannot be had'}")
    return problems


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None  # container duration (None if ffmpeg does not say)
    has_audio: bool
    has_video: bool  # a real picture stream (a music file's cover art does not count)


def probe_media(path: Path) -> MediaInfo:
    """The file's streams from ffmpeg's banner; InputError for a file ffmpeg cannot open."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; give a recording that has sound")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True,
                          stdin=subprocess.DEVNULL)
    err = proc.stderr
    streams = [ln.decode("utf-8", "replace") for ln in err.splitlines() if ln.strip().startswith(b"Stream #")]
    if not streams:
        lines = [ln.strip() for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        cause = next((ln for ln in reversed(lines) if "output file" not in ln), "ffmpeg cannot open it")
        raise InputError(f"{path}: not a readable audio or video file ({cause[:200]})")
    has_audio = any(": Audio:" in s for s in streams)
    has_video = any(": Video:" in s and "(attached pic)" not in s for s in streams)
    return MediaInfo(parse_duration(err), has_audio, has_video)


def read_audio(path: Path, timing: ClipTiming) -> tuple[np.ndarray, float, list[str]]:
    """The whole recording at `timing.sample_rate`, mono, peak-normalised, by pipeline.audio as a clip is read
    (soundfile; a format soundfile cannot read, e.g. a video's sound, is first copied to a float WAV by ffmpeg at
    its own rate and channels). Returns (waveform, seconds, warnings)."""
    with tempfile.TemporaryDirectory(prefix="avsed-detect-") as tmp:
        readable = path
        try:
            info = sf.info(str(path))
        except Exception:  # noqa: BLE001 - soundfile refuses formats it does not know in several ways
            readable = Path(tmp) / "audio.wav"
            proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
                                   "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav", str(readable)],
                                  capture_output=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0 or not readable.is_file():
                cause = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["ffmpeg failed"]
                raise InputError(f"{path}: its sound cannot be decoded ({cause[0][:200]})")
            info = sf.info(str(readable))
        if info.frames <= 0:
            raise InputError(f"{path}: the sound stream has no samples; give a recording that has sound")
        seconds = info.frames / info.samplerate
        try:
            audio = load_clip_audio(readable, path.name, replace(timing, clip_seconds=seconds),
                                    expected_seconds=seconds)
        except AudioError as exc:
            raise InputError(f"{path}: {exc.cause}") from None
    return audio.waveform, float(audio.duration), audio.warnings


def decode_video_span(path: Path, start_seconds: float, n_frames: int, timing: ClipTiming, size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """`n_frames` frames from `start_seconds` on at the store's frame rate (pipeline.frames.decode_frames, as
    extraction decodes a clip) and their validity; no frame is valid where the video has ended (or is unreadable)."""
    step = timing.clip_seconds / timing.video_frames  # 1 / 6.4 s, exact in binary
    span = replace(timing, clip_seconds=n_frames * step, video_frames=n_frames)
    try:
        clip = decode_frames(path, path.name, span, size=size, start=float(start_seconds))
    except VideoError:
        return np.zeros((n_frames, size, size, 3), np.uint8), np.zeros(n_frames, bool)
    return clip.frames, clip.valid
