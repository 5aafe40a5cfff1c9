"""The bounded streaming pipeline of the video features, the same for every engine (plain, Prefect, Dask):

    downloads (one DownloadSession: `download.concurrency` at once for the whole run)
      -> decode worker processes (`pipeline.decode_pool`: ffmpeg, frames hashed once per clip)
      -> decoded clips, at most `max_clips_in_flight` alive
      -> one embedding worker per device (`features.embedding_worker`: every CNN on one upload, fixed batches)
      -> the writer thread (`pipeline.writer`: one `write_rows` per shard and feature, data before masks)

The bound: a clip takes one of `max_clips_in_flight` slots before its download (or, for a video already on disk,
before its decode) and gives it back once its frames are packed into the embedding worker's upload buffer (or once
it turns out to have no usable video). So decoded frames alive at once never exceed `max_clips_in_flight` clips,
plus the worker's two fixed upload buffers; the queues between stages hold only slot holders; and the futures and
buffered rows are bounded by the same slots. Memory is flat in the number of clips.

Every job ends exactly once: written (its rows are in the store), or given up (no video, undecodable, download
failed: the ledger says why). `run(jobs)` streams download to write; the Prefect flow runs `download(jobs)` and
`embed(jobs)` as separate, named tasks per shard (the files on disk are the hand-off).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from features.embedding_worker import EmbeddingWorker, UploadBatch, distinct_frames, group_by_device
from features.image_batching import TorchImageExtractor
from pipeline.decode_pool import DecodedFrames, DecodePool, default_decode_workers
from pipeline.download import DownloadResult, clip_start_in, find_video
from pipeline.download_reasons import decode_outcome
from avsed.core.errors import AvsedError
from pipeline.frames import VideoError
from avsed.core.labels import ClipTiming
from pipeline.ledger import Ledger
from avsed.core.manifest import YouTubeSegment
from pipeline.writer import ShardWriter, Ticket

Observer = Callable[[str, dict[str, Any]], None]  # (event, details): progress, artifacts, tests

# Memory for decoded clips when `max_clips_in_flight` is not given: this share of the memory available at start.
DECODED_MEMORY_SHARE = 0.25
_IDLE_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class VideoJob:
    row: int
    clip_id: str
    segment: YouTubeSegment
    features: tuple[str, ...]  # video features still missing for this clip


@dataclass
class VideoCounts:
    """What became of the jobs of one call (the flows' tasks return these, never arrays)."""

    jobs: int = 0
    downloaded: int = 0
    missing: int = 0  # the host says the video is gone
    failed: int = 0  # transient: retried on the next run
    not_attempted: int = 0  # the circuit breaker had opened: untouched in the ledger, tried next run
    corrupt: int = 0  # downloaded but undecodable (ledger `missing` / `corrupt`)
    computed: dict[str, int] = field(default_factory=dict)  # feature -> rows written

    def add(self, other: "VideoCounts") -> "VideoCounts":
        for name in ("jobs", "downloaded", "missing", "failed", "not_attempted", "corrupt"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.computed.items():
            self.computed[k] = self.computed.get(k, 0) + v
        return self


def decoded_clip_bytes(timing: ClipTiming, frame_size: int) -> int:
    """Memory of one decoded clip's frames (uint8 RGB)."""
    return timing.video_frames * frame_size * frame_size * 3


def default_max_clips_in_flight(timing: ClipTiming, frame_size: int, batch_clips: int, decode_workers: int) -> int:
    """`DECODED_MEMORY_SHARE` of the memory available now, in decoded clips; at least enough to keep every decoder
    and one upload batch busy, at most 4096."""
    import psutil

    per_clip = decoded_clip_bytes(timing, frame_size) * 2  # a deduplicated copy may exist beside the decoded one
    fit = int(psutil.virtual_memory().available * DECODED_MEMORY_SHARE // per_clip)
    return int(min(4096, max(fit, 2 * decode_workers + batch_clips)))


class StreamError(RuntimeError):
    """A stage of the stream failed (a bug or a broken machine, not a clip's problem); the cause is chained."""


class SuspectRunError(AvsedError):
    """Two different video ids gave the same moving pictures: the URL template (or its host) serves one video for
    every id, and going on would fill the store with wrong rows. The run stops (one line from `avsed`)."""


def moving_frames_digest(frames: np.ndarray, valid: np.ndarray) -> bytes | None:
    """A digest of a clip's decoded frames, or None when they do not move (a black screen or a still image: two
    uploads of those may well be identical, so they prove nothing)."""
    shown = frames[valid]
    if len(shown) < 2 or (shown == shown[:1]).all():
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(shown).data)
    return h.digest()


class VideoStream:
    """One run's video pipeline in this process. Use as a context manager; `run`, `download` and `embed` may be
    called from several threads at once (the Prefect flow's tasks), and share the bound."""

    def __init__(self, *, extractors: Sequence[TorchImageExtractor], writer: ShardWriter, ledger: Ledger,
                 downloads, video_dir: str | Path, timing: ClipTiming = ClipTiming(), frame_size: int = 224,
                 batch_clips: int = 16, max_clips_in_flight: int | None = None, decode_workers: int | None = None,
                 keep_videos: bool = False, observer: Observer | None = None):
        if not extractors:
            raise ValueError("a video stream needs at least one image CNN")
        self.timing, self.frame_size = timing, int(frame_size)
        self.writer, self.ledger, self.downloads = writer, ledger, downloads
        self.video_dir = Path(video_dir)
        self.keep_videos = keep_videos
        self.observer = observer
        self.decode_workers = int(decode_workers or default_decode_workers())
        self.batch_clips = max(1, int(batch_clips))
        self.max_clips_in_flight = int(max_clips_in_flight or default_max_clips_in_flight(
            timing, self.frame_size, self.batch_clips, self.decode_workers))
        if self.max_clips_in_flight < 1:
            raise ValueError(f"max_clips_in_flight must be at least 1, got {self.max_clips_in_flight}")
        self.groups = group_by_device(extractors)
        self.stages = [f"video:{'+'.join(ex.name for ex in g)}" for g in self.groups]
        self.dtypes = {ex.name: np.dtype(ex.store_dtype) for ex in extractors}
        self.workers = [EmbeddingWorker(g, self.batch_clips * timing.video_frames, self.frame_size).load()
                        for g in self.groups]
        self.dedup = [bool(g[0].config.dedup_identical_frames) for g in self.groups]
        self.decoder = DecodePool(self.decode_workers, timing, self.frame_size, dedup=any(self.dedup))
        self._slots = threading.Semaphore(self.max_clips_in_flight)
        self._lock = threading.Lock()
        self._upstream = 0  # clips holding a slot that have not reached the embedding workers yet
        self._unpacked: dict[int, int] = {}  # row -> worker groups that have not packed its frames yet
        self._unwritten: dict[int, int] = {}  # row -> worker groups whose rows are not written yet
        self._paths: dict[int, Path] = {}  # row -> its video file, deleted once its rows are written
        self._counts: dict[int, tuple[VideoCounts, VideoJob]] = {}  # row -> the counts of the call it belongs to
        self._error: BaseException | None = None
        self.stopping = threading.Event()
        self._unrecorded: dict[int, DownloadResult] = {}  # row -> its download, available once decoded
        self._digests: dict[bytes, tuple[str, str]] = {}  # moving frames' digest -> first (clip, video id) with them
        self.busy_seconds: dict[str, float] = {}  # per stage: decode (summed over workers), embed
        self._queues: list[queue.Queue] = [queue.Queue() for _ in self.workers]  # bounded by the slots
        self.writer.on_written = self._written
        self._threads = [threading.Thread(target=self._embed_loop, args=(i,), name=f"avsed-embed-{i}", daemon=True)
                         for i in range(len(self.workers))]
        for t in self._threads:
            t.start()

    # --- the public side -----------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[VideoJob]) -> VideoCounts:
        """Download, decode, embed and write every job; returns once all of them are written or given up."""
        counts, tickets = self._begin(jobs)
        for i, job in enumerate(jobs):
            if not self._take_slot():  # stopped (Ctrl-C): the clips not started are left for the next run
                for rest in jobs[i:]:
                    self._give_up(rest, holds_slot=False)
                break
            future = self.downloads.submit(job.clip_id, job.segment)
            future.add_done_callback(lambda f, job=job: self._guard(self._downloaded, job, f, True))
        return self._wait(counts, tickets)

    def download(self, jobs: Sequence[VideoJob]) -> VideoCounts:
        """Only download (and record) the jobs' videos; they stay on disk for `embed`. Holds no slots: the caller
        bounds how many clips it downloads ahead (the flow's window of shards)."""
        counts = VideoCounts(jobs=len(jobs))
        futures = [(job, self.downloads.submit(job.clip_id, job.segment)) for job in jobs]
        for job, future in futures:
            result = _result_of(job, future)
            self._record_download(job, result, counts)
        return counts

    def embed(self, jobs: Sequence[VideoJob]) -> VideoCounts:
        """Decode, embed and write the jobs whose videos are on disk (downloaded by `download`); the others were
        recorded by the download and are given up here."""
        counts, tickets = self._begin(jobs)
        for job in jobs:
            path = find_video(self.video_dir, job.clip_id)
            if path is None or self.stopping.is_set():
                self._give_up(job, holds_slot=False)
                continue
            if not self._take_slot():
                self._give_up(job, holds_slot=False)
                continue
            self._decode(job, path, clip_start_in(path, job.segment))
        return self._wait(counts, tickets)

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        self.decoder.close()

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def _emit(self, event: str, **details: Any) -> None:
        if self.observer is not None:
            self.observer(event, details)

    def _begin(self, jobs: Sequence[VideoJob]) -> tuple[VideoCounts, list[Ticket]]:
        self._raise()
        counts = VideoCounts(jobs=len(jobs))
        rows = [j.row for j in jobs]
        if len(set(rows)) != len(rows):
            raise ValueError("a clip appears twice among the jobs of one call")
        with self._lock:
            for job in jobs:
                self._counts[job.row] = (counts, job)
        tickets = [self.writer.expect(stage, rows) for stage in self.stages]
        return counts, tickets

    def _wait(self, counts: VideoCounts, tickets: list[Ticket]) -> VideoCounts:
        for ticket in tickets:
            while True:
                self._raise()
                try:
                    ticket.wait(timeout=0.5)
                    break
                except TimeoutError:
                    continue
        self._raise()
        return counts

    def _take_slot(self) -> bool:
        """A slot for one more clip; False once the stream is stopping (then no slot is held)."""
        while not self._slots.acquire(timeout=0.5):
            self._raise()
            if self.stopping.is_set():
                return False
        if self.stopping.is_set():
            self._slots.release()
            return False
        with self._lock:
            self._upstream += 1
        return True

    def stop(self) -> None:
        """Ctrl-C: take no new clip, end the downloads in flight (the ledger keeps what it had for them), let the
        clips already decoded be embedded and written; `run` / `embed` then return."""
        self.stopping.set()
        stop_downloads = getattr(self.downloads, "stop", None)
        if stop_downloads is not None:
            stop_downloads()

    def _raise(self) -> None:
        if self._error is not None:
            raise StreamError(f"the video pipeline failed: {self._error}") from self._error

    def _guard(self, fn, *args) -> None:
        # Callbacks run in pool threads: an exception there would vanish. It stops the stream instead.
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001
            self._error = self._error or exc

    # --- download -> decode ------------------------------------------------------------------------------------
    def _record_download(self, job: VideoJob, result: DownloadResult, counts: VideoCounts,
                         defer_available: bool = False) -> None:
        status = result.status
        if defer_available and status == "available" and result.path is not None:
            # recorded once its frames are decoded and checked (`_decoded`): a run stopped in between (Ctrl-C, a
            # suspect run) leaves the entry as it was instead of calling a file nobody looked at available
            with self._lock:
                self._unrecorded[job.row] = result
        elif status != "not_attempted":  # the breaker opened: nothing is known, the ledger stays as it was
            self.ledger.record(job.clip_id, result.youtube_id, status, result.reason, result.message)
        name = {"available": "downloaded", "missing": "missing", "failed": "failed"}.get(status, "not_attempted")
        with self._lock:
            setattr(counts, name, getattr(counts, name) + 1)

    def _downloaded(self, job: VideoJob, future, holds_slot: bool) -> None:
        result = _result_of(job, future)
        with self._lock:
            counts = self._counts[job.row][0]
        self._record_download(job, result, counts, defer_available=True)
        self._emit("downloaded", row=job.row, clip_id=job.clip_id, status=result.status)
        if result.status == "available" and result.path is not None and not self.stopping.is_set():
            self._decode(job, Path(result.path), result.clip_start)
        else:  # (stopping: a downloaded file stays on disk, and the next run decodes it)
            with self._lock:
                self._unrecorded.pop(job.row, None)
            self._give_up(job, holds_slot)

    def _decode(self, job: VideoJob, path: Path, start: float) -> None:
        with self._lock:
            self._paths[job.row] = path
        future = self.decoder.submit(job.clip_id, path, start)
        future.add_done_callback(lambda f, job=job: self._guard(self._decoded, job, f))

    def _decoded(self, job: VideoJob, future) -> None:
        try:
            decoded: DecodedFrames = future.result()
            if not decoded.valid.any():
                raise VideoError(job.clip_id, "corrupt: no video frame inside the clip's time range")
        except VideoError as exc:
            with self._lock:
                self._unrecorded.pop(job.row, None)
            status, reason = decode_outcome(exc.reason)  # the rule: pipeline.download_reasons
            self.ledger.record(job.clip_id, job.segment.youtube_id, status, reason, str(exc))
            with self._lock:
                counts = self._counts[job.row][0]
                if status == "missing":
                    counts.corrupt += 1
                else:
                    counts.failed += 1
                path = self._paths.pop(job.row, None)
            if path is not None and status == "missing":
                path.unlink(missing_ok=True)  # an undecodable file is never kept; one whose decoder died is
            self._give_up(job, holds_slot=True)
            return
        self._check_distinct(job, decoded)
        with self._lock:
            downloaded = self._unrecorded.pop(job.row, None)
        if downloaded is not None:
            self.ledger.record(job.clip_id, downloaded.youtube_id, "available", None, downloaded.message)
        self._add_seconds("decode", decoded.seconds)
        clips = [distinct_frames(job.row, decoded.frames, decoded.valid, dedup, decoded.unique)
                 for dedup in self.dedup]
        with self._lock:
            self._unpacked[job.row] = len(self.workers)
            self._unwritten[job.row] = len(self.workers)
        self._emit("decoded", row=job.row, frames=decoded.frames, clips=clips)
        for q, clip in zip(self._queues, clips):
            q.put(clip)
        with self._lock:
            self._upstream -= 1

    def _check_distinct(self, job: VideoJob, decoded: DecodedFrames) -> None:
        """Stop the run (`SuspectRunError`, before this clip reaches the embedding workers) when its moving frames
        equal another video id's. One 16-byte digest per clip: linear in the run's clips."""
        digest = moving_frames_digest(decoded.frames, decoded.valid)
        if digest is None:
            return
        with self._lock:
            first = self._digests.setdefault(digest, (job.clip_id, job.segment.youtube_id))
        if first[1] != job.segment.youtube_id:
            with self._lock:
                self._unrecorded.pop(job.row, None)
            raise SuspectRunError(
                f"clips {first[0]} and {job.clip_id} have different video ids ({first[1]}, {job.segment.youtube_id})"
                f" but identical moving pictures: download.url_template or its host serves one video for every id; "
                f"the run stopped before filling the store with wrong rows. Check the template and the host "
                f"(e.g. with yt-dlp on two ids), then rerun")

    def _give_up(self, job: VideoJob, holds_slot: bool) -> None:
        """The job yields no rows this run (its outcome is in the ledger)."""
        if holds_slot:
            with self._lock:
                self._upstream -= 1
            self._slots.release()
        for stage in self.stages:
            self.writer.skip(stage, job.row)
        with self._lock:
            self._counts.pop(job.row, None)
        self._emit("settled", row=job.row, written=False)

    # --- embed ---------------------------------------------------------------------------------------------------
    def _packed(self, row: int) -> None:
        with self._lock:
            self._unpacked[row] -= 1
            last = self._unpacked[row] == 0
            if last:
                del self._unpacked[row]
        if last:
            self._slots.release()
            self._emit("released", row=row)

    def _embed_loop(self, index: int) -> None:
        try:
            self._embed_clips(index)
        except BaseException as exc:  # noqa: BLE001 - the callers waiting on tickets see it
            self._error = self._error or exc
            # keep consuming so no producer blocks on this worker
            while self._queues[index].get() is not None:
                pass

    def _embed_clips(self, index: int) -> None:
        worker, q, stage = self.workers[index], self._queues[index], self.stages[index]
        batch: UploadBatch = worker.new_batch()
        pending = None
        while True:
            try:
                clip = q.get(timeout=_IDLE_POLL_SECONDS if (len(batch) or pending is not None) else None)
            except queue.Empty:
                clip = False
            if clip is None:  # close()
                break
            if clip is False:  # idle: deliver what is computed; launch a partial batch if nothing else is coming
                if pending is not None:
                    self._deliver(stage, pending)
                    pending = None
                elif len(batch):
                    with self._lock:
                        nothing_coming = self._upstream == 0
                    if nothing_coming and q.empty():
                        pending, batch = self._launch(worker, batch), worker.new_batch()
                continue
            if not batch.fits(clip):
                if pending is not None:
                    self._deliver(stage, pending)
                pending, batch = self._launch(worker, batch), worker.new_batch()
            batch.add(clip)
            key, clip = clip.key, None  # its frames now live in the upload buffer: drop the decoded copy
            self._packed(key)
        if pending is not None:
            self._deliver(stage, pending)
        if len(batch):
            self._deliver(stage, self._launch(worker, batch))

    def _launch(self, worker: EmbeddingWorker, batch: UploadBatch):
        # On a GPU this only queues the work (the time shows in `_deliver`); on a CPU it computes.
        t0 = time.perf_counter()
        pending = worker.launch(batch)
        self._add_seconds("embed", time.perf_counter() - t0)
        return pending

    def _deliver(self, stage: str, pending) -> None:
        t0 = time.perf_counter()
        results = pending.result()
        self._add_seconds("embed", time.perf_counter() - t0)
        self._emit("embedded", stage=stage, rows=[int(c.key) for c in results])  # computed, not yet handed over
        for c in results:
            row = int(c.key)
            with self._lock:
                entry = self._counts.get(row)
            todo = entry[1].features if entry is not None else ()
            # only the features this clip still lacks: a cached row is never rewritten
            features = {name: (emb.astype(self.dtypes[name]), c.valid) for name, emb in c.embeddings.items()
                        if name in todo}
            if features:
                self.writer.put(stage, row, features)
            else:
                self.writer.skip(stage, row)

    # --- written -------------------------------------------------------------------------------------------------
    def _written(self, stage: str, shard: int, rows: list[int], skipped: list[int], features: list[str]) -> None:
        """Writer thread: a shard's rows of one stage are settled (written, or skipped)."""
        if stage not in self.stages:
            return
        delete: list[Path] = []
        settled: list[int] = []
        with self._lock:
            for row in rows + skipped:
                entry = self._counts.get(row)
                if entry is not None and row in rows:
                    for f in features:
                        if f in entry[1].features:
                            entry[0].computed[f] = entry[0].computed.get(f, 0) + 1
                left = self._unwritten.get(row)
                if left is None:
                    continue  # given up before decoding: nothing of it is held
                if left > 1:
                    self._unwritten[row] = left - 1
                    continue
                del self._unwritten[row]
                settled.append(row)
                self._counts.pop(row, None)
                path = self._paths.pop(row, None)
                if path is not None and not self.keep_videos:
                    delete.append(path)
        for path in delete:
            path.unlink(missing_ok=True)
        self._emit("written", stage=stage, shard=shard, rows=rows, features=features)
        for row in settled:
            self._emit("settled", row=row, written=row in rows)

    def _add_seconds(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy_seconds[stage] = self.busy_seconds.get(stage, 0.0) + seconds


def _result_of(job: VideoJob, future) -> DownloadResult:
    if future.cancelled():
        return DownloadResult(job.clip_id, job.segment.youtube_id, "not_attempted", None,
                              "download cancelled before it started", None)
    return future.result()

