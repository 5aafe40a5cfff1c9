"""Video frames of a clip: 64 RGB frames sampled evenly over 10 s (about 6.4 fps), as the paper's
visual embeddings expect (section 3.1.2: "still images are sampled ... at a rate of about 6.5 fps").

One ffmpeg process per clip (through ffmpeg-python) decodes, samples and resizes:
`-vf fps=6.4,scale=224:224` to raw RGB. With the fps filter's default rounding (`round=near`) an
input frame at time t is assigned to output tick round(t * 6.4), and tick k repeats the last frame
assigned at or before it, so output frame k is the picture on screen at time (k + 0.5) / 6.4: exactly
the slice centres of `ClipTiming.video_frame_times()` (tested with a video whose colour encodes time).

Resizing is a plain scale to size x size (aspect ratio not kept, no crop), as OpenL3's image
pipeline does (it resizes whole frames to 224 x 224); the visual extractors take the frames as they are.

Frames whose time lies beyond the real video duration are zeros with `valid` False. Files ffmpeg
cannot decode (random bytes, truncated, no video stream, zero frames) raise `VideoError` with a
cause starting "corrupt:"; still images and black screens are valid video and decode normally. A video
that ends before the clip's start says so ("video ends at 6.000 s, before the clip's start at 8.000 s"
for a whole file; for a partial download, whose cut past the end holds no stream at all, "video ends
before the clip's start at 8.000 s"), rather than "no video stream". An ffmpeg that dies of a signal (the
out-of-memory killer, a Ctrl-C) raises `VideoError` with a cause starting "decoder_killed:": the file is not at
fault (`pipeline.download_reasons` makes that transient).
"""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from avsed.core.errors import ClipError
from pipeline.ffmpeg_bin import ffmpeg_exe
from avsed.core.labels import ClipTiming
from avsed.core.manifest import parse_clip_name

_DURATION = re.compile(rb"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


class VideoError(ClipError):
    """A clip's video cannot be used; `cause` starts with the ledger reason (`corrupt: ...`)."""

    def __init__(self, clip_id: str, cause: str):
        super().__init__(clip_id, cause, prefix="video unusable: ")

    @property
    def reason(self) -> str:
        """The ledger reason class (the cause's first word), e.g. `corrupt`."""
        return self.cause.split(":", 1)[0]


@dataclass
class ClipFrames:
    frames: np.ndarray  # uint8 (T, size, size, 3) RGB; padding frames are zeros
    valid: np.ndarray  # (T,) bool: the frame time lies inside the real video duration
    duration: float  # seconds of video from the clip start, capped at the clip length


def parse_duration(stderr: bytes) -> float | None:
    """Container duration from ffmpeg's banner (`Duration: 00:00:06.00`), None if absent or N/A."""
    m = _DURATION.search(stderr)
    if m is None:
        return None
    h, mnt, s = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(s)


NO_STREAM = "no stream at all"


def _stderr_cause(stderr: bytes) -> str:
    """The most telling line of ffmpeg's error output (its last non-empty lines name the failure)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if any("matches no streams" in ln or "does not contain any stream" in ln for ln in lines):
        # An input that opened but lists no stream (not even audio) is what a cut past a video's end leaves.
        opened = any(ln.startswith("Input #0") for ln in lines)
        return NO_STREAM if opened and not any(ln.startswith("Stream #0:") for ln in lines) else "no video stream"
    for ln in reversed(lines):
        if not ln.startswith(("Conversion failed", "Error opening output", "Exiting")):
            return ln[:300]
    return "ffmpeg failed"


_RECEIVED_SIGNAL = re.compile(rb"received signal (\d+)")


def _killed_by(returncode: int, stderr: bytes) -> str | None:
    """How a decoder died of a signal ("was killed by SIGKILL"), or None if it ended by itself: a negative exit
    status is a signal it did not catch; ffmpeg catches SIGINT / SIGTERM and says "received signal N"."""
    number = -returncode if returncode < 0 else None
    m = _RECEIVED_SIGNAL.search(stderr) if number is None and returncode != 0 else None
    if m:
        number = int(m[1])
    if number is None:
        return None
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"was killed by {name}"


def _ends_before_start(stderr: bytes, clip_id: str, start: float) -> str | None:
    """The cause for a video that ends before the clip begins, or None if that is not what happened.

    A whole file read from `start` on: its container duration is at most `start`. A partial download (`start`
    0): the cut from the clip's start (its name's time range) holds no stream at all, as ffmpeg leaves it when
    the range lies past the video's end.
    """
    container = parse_duration(stderr)
    if start > 0 and container is not None and container <= start:
        return f"corrupt: video ends at {container:.3f} s, before the clip's start at {start:.3f} s"
    if _stderr_cause(stderr) == NO_STREAM:
        segment = parse_clip_name(clip_id)
        at = f" at {segment.start:.3f} s" if segment is not None and start == 0 else ""
        return f"corrupt: video ends before the clip's start{at} (what was downloaded of its range holds no stream)"
    return None


def decode_frames(path: str | Path, clip_id: str, timing: ClipTiming = ClipTiming(), size: int = 224,
                  start: float = 0.0, threads: int | None = None) -> ClipFrames:
    """Decode `timing.video_frames` RGB frames of `size` x `size` from the video at `path`.

    `start` is where the clip begins inside the file (0 for a partial download that holds just the
    clip's range; the clip's start time when the whole video was downloaded). `threads`: ffmpeg's decoding and
    filtering threads (None: ffmpeg's default; a pool of one decoder per core passes 1, as more would only contend).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(clip_id, f"corrupt: no video file at {path}")
    n = timing.video_frames
    input_args = {"t": timing.clip_seconds}
    if start > 0:
        input_args["ss"] = start
    if threads:
        input_args["threads"] = int(threads)
    stream = (
        ffmpeg.input(str(path), **input_args)["v:0"]
        .filter("fps", fps=timing.video_fps)
        .filter("scale", size, size)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", frames=n)
        .global_args("-nostdin", "-hide_banner", *(("-filter_threads", str(int(threads))) if threads else ()))
    )
    # A session of its own: a Ctrl-C meant for the run (its process group) does not kill a decode in hand; the
    # decode reads a local file and ends by itself within the clip's time (an orphan's stdout breaks sooner).
    proc = subprocess.run(stream.compile(cmd=ffmpeg_exe()), stdin=subprocess.DEVNULL, capture_output=True,
                          start_new_session=True)
    out, err = proc.stdout, proc.stderr
    killed = _killed_by(proc.returncode, err)
    if killed:  # the decoder's death, not the file's fault: the file is kept and decoded again next run
        raise VideoError(clip_id, f"decoder_killed: ffmpeg {killed} while decoding {path.name}; retried on the next run")
    if proc.returncode != 0:
        raise VideoError(clip_id, _ends_before_start(err, clip_id, start) or f"corrupt: {_stderr_cause(err)}")
    frame_bytes = size * size * 3
    decoded = len(out) // frame_bytes
    if decoded == 0:
        raise VideoError(clip_id, _ends_before_start(err, clip_id, start)
                         or f"corrupt: no video frames decoded ({_stderr_cause(err)})")
    got = np.frombuffer(out[: decoded * frame_bytes], dtype=np.uint8).reshape(decoded, size, size, 3)

    container = parse_duration(err)
    duration = container - start if container is not None else decoded / timing.video_fps
    # a file whose index promises more than decodes (damaged tail) is only as long as what decoded;
    # one frame of slack because the fps filter's last tick is rounded
    if decoded < n and decoded + 1 < duration * timing.video_fps:
        duration = decoded / timing.video_fps
    duration = min(duration, timing.clip_seconds)
    valid = timing.video_frame_times() < duration
    valid[decoded:] = False
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    k = int(valid.sum())
    frames[:k] = got[:k]
    return ClipFrames(frames=frames, valid=valid, duration=float(max(duration, 0.0)))
