"""Video decoding in a pool of worker processes: one ffmpeg at a time per worker, one worker per core by default.

A worker decodes a clip's frames (`pipeline.frames.decode_frames`) and hashes them once for de-duplication
(`features.frame_dedup.unique_frames`), so the hashing is spread over the cores and done once for every CNN.
Workers are started with `spawn`: the parent may hold CUDA and many threads, which a forked child must not inherit,
and they import neither torch nor Prefect. As with any `spawn` pool, a script that starts an extraction must guard its
entry point (`if __name__ == "__main__":`): the workers import the main module. In a daemonic process (a Dask worker),
which may not have children of its own, threads drive the ffmpeg processes instead. The pool itself does not bound anything: the streaming pipeline submits
a clip only while it holds one of its `max_clips_in_flight` slots.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.frames import VideoError, decode_frames
from avsed.core.labels import ClipTiming

# ffmpeg decodes with one thread per worker process: the pool runs one worker per core, so more threads per ffmpeg
# would only contend.


def default_decode_workers() -> int:
    """The machine's cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class DecodedFrames:
    """What a worker sends back for one clip."""

    clip_id: str
    frames: np.ndarray  # (T, S, S, 3) uint8; frames past the video's end are zeros
    valid: np.ndarray  # (T,) bool
    unique: tuple[np.ndarray, np.ndarray] | None  # (keep, inverse) of `unique_frames`, when asked for
    seconds: float = 0.0  # the worker's time on this clip (decode and hashing)


def _decode(path: str, clip_id: str, timing: ClipTiming, size: int, start: float,
            dedup: bool) -> DecodedFrames | tuple[str, str]:
    # Runs in a worker process. A VideoError is returned as (clip_id, cause), not raised: the exception's
    # constructor takes two arguments, which pickling back to the parent would not pass.
    t0 = time.perf_counter()
    try:
        clip = decode_frames(path, clip_id, timing, size=size, start=start, threads=1)
    except VideoError as exc:
        return (exc.clip_id, exc.cause)
    unique = None
    if dedup:
        from features.frame_dedup import unique_frames

        unique = unique_frames(clip.frames)
    return DecodedFrames(clip_id, clip.frames, clip.valid, unique, time.perf_counter() - t0)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _watch_parent() -> None:
    # Ctrl-C reaches the whole process group: the run decides what to stop (pipeline.extract.sigint_stops), so a
    # worker ignores it rather than dying with a KeyboardInterrupt traceback mid-clip.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, a crashed run) cannot shut its pool down, and the workers' pipes stay
    # open among themselves: a worker ends itself once orphaned instead of lingering.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


class DecodePool:
    """`submit(clip_id, path, start)` -> a Future of `DecodedFrames`; a clip that cannot be decoded raises
    `VideoError` from `future.result()`."""

    def __init__(self, workers: int, timing: ClipTiming = ClipTiming(), frame_size: int = 224, dedup: bool = True):
        self.workers = max(1, int(workers))
        self.timing = timing
        self.frame_size = int(frame_size)
        self.dedup = bool(dedup)
        if multiprocessing.current_process().daemon:
            # A daemonic process (a Dask worker) may not start children through multiprocessing. ffmpeg still runs
            # as a process of its own per clip; threads drive them (hashing and ffmpeg's I/O release the GIL).
            self.kind = "threads"
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="avsed-decode")
        else:
            self.kind = "processes"
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_watch_parent)

    def submit(self, clip_id: str, path: str | Path, start: float = 0.0) -> "Future[DecodedFrames]":
        inner = self._pool.submit(_decode, str(path), clip_id, self.timing, self.frame_size, float(start), self.dedup)
        outer: Future = Future()

        def done(f: Future) -> None:
            try:
                value = f.result()
            except BaseException as exc:  # noqa: BLE001 - a dead worker process: handed to the caller
                outer.set_exception(exc)
                return
            if isinstance(value, tuple):
                outer.set_exception(VideoError(*value))
            else:
                outer.set_result(value)

        inner.add_done_callback(done)
        return outer

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
