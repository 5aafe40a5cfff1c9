"""The audio features of the streaming pipeline (log-mel): read, resample and extract in a few threads, then hand
each clip's rows (and its audio duration) to the writer thread, which writes them a shard at a time.

A file that cannot be used is recorded as a problem of its clip (in the ledger) and the run goes on. Clips in
flight are bounded by a window of `2 x workers` submitted clips, so memory does not grow with the number of clips.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from features.base import AudioExtractor
from pipeline.audio import AudioError, load_clip_audio
from avsed.core.labels import ClipTiming
from pipeline.ledger import Ledger
from pipeline.writer import ShardWriter

AUDIO_STAGE = "audio"


@dataclass(frozen=True)
class AudioJob:
    row: int
    clip_id: str
    audio_path: str
    features: tuple[str, ...] = ()  # audio features still missing for this clip; () means all of them


@dataclass
class AudioCounts:
    jobs: int = 0
    failed: int = 0  # unusable audio (recorded as a problem of the clip)
    computed: dict[str, int] = field(default_factory=dict)


def audio_rows(job: AudioJob, extractors: Mapping[str, AudioExtractor], timing: ClipTiming,
               ledger: Ledger) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float] | None:
    """One clip's audio features (feature -> (data, frame mask)) and duration; None if its audio is unusable."""
    try:
        audio = load_clip_audio(job.audio_path, job.clip_id, timing)
    except AudioError as exc:
        ledger.record_problem(job.clip_id, "audio", exc.cause)
        return None
    for warning in audio.warnings:
        ledger.record_problem(job.clip_id, "audio", f"warning: {warning}")
    rows = {}
    for name in job.features or tuple(extractors):
        data = extractors[name].extract(audio.waveform, timing)
        mask = np.zeros(data.shape[0], dtype=bool)
        # log-mel frames past the real audio are padding; other audio features are whole-clip
        mask[: timing.valid_mel_frames(audio.duration) if data.shape[0] == timing.mel_frames else data.shape[0]] = True
        rows[name] = (data, mask)
    return rows, audio.duration


def extract_audio_stream(jobs: Sequence[AudioJob], extractors: Mapping[str, AudioExtractor], writer: ShardWriter,
                         ledger: Ledger, timing: ClipTiming = ClipTiming(), workers: int = 2,
                         observer: Callable[[str, dict[str, Any]], None] | None = None,
                         stop: threading.Event | None = None) -> AudioCounts:
    """Every job's missing audio features, written through `writer`; returns once they are durable. Once `stop`
    is set (Ctrl-C) no further clip is started: those in hand are written, the rest skipped."""
    counts = AudioCounts(jobs=len(jobs))
    ticket = writer.expect(AUDIO_STAGE, [j.row for j in jobs])
    workers = max(1, int(workers))

    def finish(job: AudioJob, future: Future) -> None:
        out = future.result()
        if out is None:
            counts.failed += 1
            writer.skip(AUDIO_STAGE, job.row)
        else:
            rows, duration = out
            for name in rows:
                counts.computed[name] = counts.computed.get(name, 0) + 1
            writer.put(AUDIO_STAGE, job.row, rows, duration=duration)
        if observer is not None:
            observer("audio", {"row": job.row, "clip_id": job.clip_id, "ok": out is not None})

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avsed-audio") as pool:
        window: dict[Future, AudioJob] = {}
        for i, job in enumerate(jobs):
            if stop is not None and stop.is_set():
                for rest in jobs[i:]:
                    writer.skip(AUDIO_STAGE, rest.row)
                break
            if len(window) >= 2 * workers:
                done, _ = wait(window, return_when=FIRST_COMPLETED)
                for f in done:
                    finish(window.pop(f), f)
            window[pool.submit(audio_rows, job, extractors, timing, ledger)] = job
        for f in list(window):  # in submission order
            finish(window.pop(f), f)
    while True:
        try:
            ticket.wait(timeout=0.5)
            break
        except TimeoutError:
            continue
    return counts
