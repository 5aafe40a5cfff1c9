"""Small test videos made with the project's ffmpeg: time-coded colours, still image, black screen,
audio only, corrupt bytes and a truncated mp4. Each takes well under a second to make."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from pipeline.ffmpeg_bin import ffmpeg_exe

# 27 colours with channels in {0, 128, 255}: far enough apart to survive yuv420 + h264 (error < 20)
PALETTE = np.array([(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)], dtype=np.uint8)
# drop black (the padding colour) so that a time-coded frame is never mistaken for padding
PALETTE = PALETTE[1:]


def second_colour(second: int) -> np.ndarray:
    """Colour shown during second `second` of a time-coded video."""
    return PALETTE[second % len(PALETTE)]


def nearest_second(frame: np.ndarray, seconds: int) -> int:
    """Which second of a time-coded video (of `seconds` seconds) a decoded frame shows."""
    mean = frame.reshape(-1, 3).astype(np.float64).mean(axis=0)
    cands = np.array([second_colour(s) for s in range(seconds)], dtype=np.float64)
    return int(np.argmin(((cands - mean) ** 2).sum(axis=1)))


def _encode_raw(path: Path, frames: np.ndarray, fps: float, extra: list[str] | None = None) -> Path:
    """Encode uint8 (N, H, W, 3) frames to an h264 mp4 (moov at the end, as ffmpeg writes by default)."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
           "-pix_fmt", "yuv420p", *(extra or []), str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def time_coded_video(path: Path, seconds: int, fps: int = 25, size: tuple[int, int] = (64, 48),
                     keyint: int | None = None) -> Path:
    """Each second shows one flat colour `second_colour(s)`; frame content thus encodes time.

    `keyint` sets the keyframe interval (frames); the default (x264's 250) means a cut at 5 s falls
    between keyframes, which is what makes a partial download's cut precision visible.
    """
    w, h = size
    idx = np.arange(seconds * fps) // fps
    frames = np.broadcast_to(np.stack([second_colour(s) for s in idx])[:, None, None, :], (len(idx), h, w, 3))
    extra = ["-g", str(keyint)] if keyint else []
    return _encode_raw(Path(path), frames, fps, extra)


def still_image_video(path: Path, seconds: int = 10, fps: float = 1.0, size: tuple[int, int] = (80, 60),
                      seed: int = 0) -> tuple[Path, np.ndarray]:
    """A single picture (random blocks) held for `seconds` at a low frame rate, like a music upload."""
    w, h = size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(h // 20, w // 20, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 20, axis=0), 20, axis=1)
    n = int(round(seconds * fps))
    return _encode_raw(Path(path), np.broadcast_to(image, (n, h, w, 3)), fps), image


def black_video(path: Path, seconds: int = 10) -> Path:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"color=c=black:s=64x48:r=25:d={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True)
    return Path(path)


def testsrc_video(path: Path, seconds: int = 10, size: str = "320x240", fps: int = 25) -> Path:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=s={size}:r={fps}:d={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True)
    return Path(path)


def audio_only_file(path: Path, seconds: int = 3) -> Path:
    """An mp4 with a sine tone and no video stream."""
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", "-c:a", "aac", str(path)], check=True, capture_output=True)
    return Path(path)


def corrupt_file(path: Path, size: int = 20000, seed: int = 0) -> Path:
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(path)


def truncated_video(path: Path, seconds: int = 10) -> Path:
    """A time-coded mp4 cut to half its bytes: the index (moov, written last) is gone."""
    full = time_coded_video(Path(path).with_suffix(".full.mp4"), seconds)
    data = full.read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    full.unlink()
    return Path(path)


def html_page(path: Path) -> Path:
    Path(path).write_text("<!DOCTYPE html><html><head><title>Not a video</title></head>"
                          "<body><p>This page is not a video.</p></body></html>", encoding="utf-8")
    return Path(path)
