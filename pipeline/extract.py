"""Extraction as plain functions: plan -> audio features -> re-check -> the video stream -> statistics.

`run_extraction` runs them in this process; the Prefect flow `extract-features` (flows/extract.py) runs the same
functions as tasks per shard, and on Dask one task per shard (`extract_shard`). Both go through one bounded
pipeline (`pipeline.streaming`): memory stays flat whatever the number of clips. Every stage is idempotent and
per-clip failures are recorded (ledger / problems) instead of raised, so a bad clip never stops the run and a
rerun only does the work that is still missing. The planner reads the store and the ledger in bulk (a few queries
for any number of clips).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psutil

from tqdm.auto import tqdm

from features.base import AudioExtractor, FeatureExtractor, FrameExtractor, build_extractor, extractor_class
from pipeline.audio_stage import AudioJob, extract_audio_stream
from pipeline.download import NO_YOUTUBE_ID_MESSAGE, DownloadSession, probe_clips, remove_partial_files
from pipeline.download_reasons import retry_due
from avsed.core.errors import AvsedError
from pipeline.extract_config import ExtractConfig
from avsed.core.labels import ClipTiming
from pipeline.ledger import Ledger, LedgerEntry, VideoRecord, open_ledger_for_store
from avsed.core.manifest import read_manifest
from avsed.core.stats import update_feature_stats
from avsed.core.store import DEFAULT_CLIPS_PER_SHARD, FeatureStore, StoreLock
from pipeline.streaming import Observer, VideoCounts, VideoJob, VideoStream
from pipeline.writer import ShardWriter, shard_groups

__all__ = ["AudioJob", "VideoJob", "ExtractConfig", "ExtractionPlan", "ExtractionReport", "ExtractionRun",
           "plan_extraction", "run_extraction", "ExtractionInterrupted", "sigint_stops", "when_set", "extract_shard",
           "finish_extraction", "probe_cached_videos"]


@dataclass
class ExtractionPlan:
    n_clips: int
    new_clips: int
    clips_per_shard: int
    audio_features: tuple[str, ...]
    video_features: tuple[str, ...]
    audio_jobs: list[AudioJob]
    video_jobs: list[VideoJob]
    probe_jobs: list[VideoJob]  # cached clips whose video is re-checked, not downloaded
    manifest_problems: list[str]
    label_changes: list[str] = field(default_factory=list)

    def shard_of(self, row: int) -> int:
        return int(row) // self.clips_per_shard

    def shards(self) -> list[tuple[int, list[AudioJob], list[VideoJob]]]:
        """(shard, audio jobs, video jobs) of every shard with work, in shard order: the flows' unit of work."""
        audio = shard_groups([j.row for j in self.audio_jobs], self.shard_of)
        video = shard_groups([j.row for j in self.video_jobs], self.shard_of)
        by_row_a = {j.row: j for j in self.audio_jobs}
        by_row_v = {j.row: j for j in self.video_jobs}
        return [(s, [by_row_a[r] for r in audio.get(s, [])], [by_row_v[r] for r in video.get(s, [])])
                for s in sorted(set(audio) | set(video))]


@dataclass
class ExtractionReport:
    """Counters of one run: what was computed, what was found missing. Reruns assert on these."""

    clips: int = 0
    new_clips: int = 0
    audio_computed: dict[str, int] = field(default_factory=dict)
    audio_failed: int = 0
    videos_downloaded: int = 0
    videos_missing: int = 0  # downloads that found the video gone (this run)
    videos_failed: int = 0  # transient failures, retried next run
    videos_not_attempted: int = 0  # the download circuit breaker had opened: tried again next run
    videos_corrupt: int = 0
    newly_missing_cached: int = 0  # clips whose video vanished but whose features are kept
    video_computed: dict[str, int] = field(default_factory=dict)
    manifest_problems: list[str] = field(default_factory=list)
    label_changes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, other: "ExtractionReport") -> "ExtractionReport":
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a.get(k, 0) + v
            elif isinstance(a, list):
                a.extend(b)
            elif f.name not in ("clips", "new_clips"):
                setattr(self, f.name, a + b)
        return self

    def add_video(self, counts: VideoCounts) -> "ExtractionReport":
        self.videos_downloaded += counts.downloaded
        self.videos_missing += counts.missing
        self.videos_failed += counts.failed
        self.videos_not_attempted += counts.not_attempted
        self.videos_corrupt += counts.corrupt
        for k, v in counts.computed.items():
            self.video_computed[k] = self.video_computed.get(k, 0) + v
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractionReport":
        return cls(**d)


# --- extractors ---------------------------------------------------------------------------------

def extractor_settings(config: ExtractConfig, feature: str) -> dict[str, Any]:
    settings = dict(config.extractor_configs.get(feature, {}))
    names = {f.name for f in dataclasses.fields(extractor_class(feature).config_type)}
    if config.allow_random_weights and "allow_random_weights" in names:
        settings.setdefault("allow_random_weights", True)
    return settings


@functools.lru_cache(maxsize=16)
def _cached_extractor(feature: str, settings_json: str) -> FeatureExtractor:
    # One instance per process and setting: models are loaded once per worker, not once per batch.
    return build_extractor(feature, json.loads(settings_json))


def get_extractor(config: ExtractConfig, feature: str) -> FeatureExtractor:
    return _cached_extractor(feature, json.dumps(extractor_settings(config, feature), sort_keys=True))


def feature_provenance(config: ExtractConfig, ex: FeatureExtractor) -> dict[str, Any]:
    """What the store records for a feature: the extractor's provenance plus the run settings that change its
    values (the decoded frame size of a visual feature: OpenL3 rows from 32 px frames are not rows from 64 px)."""
    prov = ex.provenance()
    if isinstance(ex, FrameExtractor):
        prov["frame_size"] = int(config.frame_size)
    return prov


# --- plan ---------------------------------------------------------------------------------------

def plan_extraction(config: ExtractConfig, timing: ClipTiming = ClipTiming()) -> ExtractionPlan:
    """Read the manifest, grow the store and reconcile its labels, check provenance, and list the work still to do.

    Reads the store's masks and the ledger once each (no query per clip): at DESED size this is what keeps a
    rerun with nothing to do cheap.
    """
    remove_partial_files(config.video_path)  # what a killed run left half-downloaded (never resumed)
    manifest = read_manifest(config.metadata, config.audio_dir)
    if not manifest.clips:
        raise AvsedError(f"{config.metadata}: the manifest has no usable clips; check the metadata path and its tsv files")
    extractors = {name: get_extractor(config, name) for name in config.features}
    for ex in extractors.values():
        if hasattr(ex, "load"):
            ex.load()  # missing weights fail here, before any work, with the expected path in the message
    with FeatureStore.create_or_open(config.store, timing=timing, clips_per_shard=config.clips_per_shard) as store:
        n_before = store.n_clips
        sync = store.sync_clips(manifest.clips)
        rows = sync.rows
        for name, ex in extractors.items():
            store.ensure_feature(name, ex.frames(timing), ex.dim, ex.store_dtype, feature_provenance(config, ex))
        present = {name: store.present(name) for name in config.features}
        n_clips, clips_per_shard = store.n_clips, store.clips_per_shard
        ledger = open_ledger_for_store(config.ledger_path, store)
    audio_features = tuple(n for n, ex in extractors.items() if isinstance(ex, AudioExtractor))
    video_features = tuple(n for n, ex in extractors.items() if isinstance(ex, FrameExtractor))
    audio_jobs = []
    for clip, row in zip(manifest.clips, rows):
        todo = tuple(f for f in audio_features if not present[f][row])
        if todo:
            audio_jobs.append(AudioJob(row, clip.clip_id, str(clip.audio_path), todo))
    video_jobs: list[VideoJob] = []
    probe_jobs: list[VideoJob] = []
    try:
        if video_features:
            entries = ledger.entries()
            due = (ledger.due_for_recheck(None, config.recheck_after_days) if config.recheck_available else set())
            retry = set(config.download.retry_missing_reasons)
            now = datetime.now(timezone.utc)
            no_id = []
            for clip, row in zip(manifest.clips, rows):
                entry = entries.get(clip.clip_id)
                if clip.segment is None:
                    if entry is None:
                        no_id.append(VideoRecord(clip.clip_id, None, "missing", "no_youtube_id", NO_YOUTUBE_ID_MESSAGE))
                    continue
                todo = tuple(f for f in video_features if not present[f][row])
                if todo:
                    # never seen, transient failure or seen available: try; permanently missing: only when asked
                    # (a clip that keeps failing is retried with backoff: download_reasons.retry_due)
                    if (entry is None or entry.status == "available" or config.recheck_missing
                            or (entry.status == "failed" and _retry_due(entry, now)) or entry.reason in retry):
                        video_jobs.append(VideoJob(row, clip.clip_id, clip.segment, todo))
                elif clip.clip_id in due:
                    probe_jobs.append(VideoJob(row, clip.clip_id, clip.segment, ()))
            if no_id:
                ledger.record_many(no_id)
        for problem in manifest.problems:
            ledger.record_problem(problem.clip_id or "", "manifest", str(problem))
    finally:
        ledger.close()
    return ExtractionPlan(n_clips, n_clips - n_before, clips_per_shard, audio_features, video_features, audio_jobs,
                          video_jobs, probe_jobs, [str(p) for p in manifest.problems], [str(c) for c in sync.changes])


def _retry_due(entry: LedgerEntry, now: datetime) -> bool:
    try:
        hours = (now - datetime.fromisoformat(entry.last_checked)).total_seconds() / 3600.0
    except ValueError:  # an unreadable time: try it
        return True
    return retry_due(entry.attempts, hours)


# --- one run's writer, ledger, downloads and video stream ------------------------------------------------------

class ExtractionRun:
    """What the stages of one run in one process share: the writer thread (the only writer of this process's
    shards), the ledger, one download session (the global cap) and the video stream (the memory bound).
    The video parts start on first use. Use as a context manager; `close()` waits until every row is written."""

    def __init__(self, config: ExtractConfig, timing: ClipTiming = ClipTiming(), observer: Observer | None = None,
                 decode_workers: int | None = None, stop: threading.Event | None = None):
        self.config, self.timing, self.observer = config, timing, observer
        self.stop_requested = stop if stop is not None else threading.Event()
        self.decode_workers = decode_workers or config.decode_workers
        self.store = FeatureStore.open(config.store, mode="r+")  # a row writer beside the lock holder
        self.writer = ShardWriter(self.store)
        self.ledger = Ledger(config.ledger_path)
        self._session: DownloadSession | None = None
        self._stream: VideoStream | None = None
        self._starting = threading.Lock()  # the flow's tasks may ask for the stream at the same moment

    def audio(self, jobs: Sequence[AudioJob], features: Sequence[str]) -> ExtractionReport:
        report = ExtractionReport()
        if not jobs:
            return report
        extractors = {name: get_extractor(self.config, name) for name in features}
        from pipeline.decode_pool import default_decode_workers

        counts = extract_audio_stream(jobs, extractors, self.writer, self.ledger, self.timing,
                                      workers=self.decode_workers or default_decode_workers(), observer=self.observer,
                                      stop=self.stop_requested)
        report.audio_failed = counts.failed
        report.audio_computed = dict(counts.computed)
        return report

    def stream(self, features: Sequence[str]) -> VideoStream:
        with self._starting:
            return self._start_stream(features)

    def downloads(self) -> DownloadSession:
        """The run's one download session: its video stream and its re-checks of cached videos share the cap."""
        with self._starting:
            return self._downloads()

    def _downloads(self) -> DownloadSession:
        if self._session is None:
            self._session = DownloadSession(self.config.download, self.config.video_path, stop=self.stop_requested)
        return self._session

    def _start_stream(self, features: Sequence[str]) -> VideoStream:
        if self._stream is None:
            self._stream = VideoStream(
                extractors=[get_extractor(self.config, f) for f in features], writer=self.writer, ledger=self.ledger,
                downloads=self._downloads(), video_dir=self.config.video_path, timing=self.timing,
                frame_size=self.config.frame_size, batch_clips=self.config.batch_clips,
                max_clips_in_flight=self.config.max_clips_in_flight, decode_workers=self.decode_workers,
                keep_videos=self.config.download.keep_videos, observer=self.observer)
        return self._stream

    def videos(self, jobs: Sequence[VideoJob], features: Sequence[str]) -> ExtractionReport:
        """Download to write, streamed (the plain engine and a Dask shard task)."""
        return ExtractionReport().add_video(self.stream(features).run(jobs)) if jobs else ExtractionReport()

    def download(self, jobs: Sequence[VideoJob], features: Sequence[str]) -> ExtractionReport:
        return ExtractionReport().add_video(self.stream(features).download(jobs)) if jobs else ExtractionReport()

    def embed(self, jobs: Sequence[VideoJob], features: Sequence[str]) -> ExtractionReport:
        return ExtractionReport().add_video(self.stream(features).embed(jobs)) if jobs else ExtractionReport()

    def interrupt(self) -> None:
        """Ctrl-C: no new clip starts, downloads in flight end (the ledger keeps what it had for them), what is
        decoded is embedded and written. Call it from a thread, not from a signal handler (it takes locks)."""
        self.stop_requested.set()
        with self._starting:
            stream, session = self._stream, self._session
        if stream is not None:
            stream.stop()
        elif session is not None:
            session.stop()

    def busy_seconds(self) -> dict[str, float]:
        out = dict(self._stream.busy_seconds) if self._stream is not None else {}
        out["write"] = self.writer.busy_seconds
        return out

    def close(self) -> None:
        try:
            if self._stream is not None:
                self._stream.close()
            if self._session is not None:
                self._session.close()
        finally:
            self.writer.close()
            self.ledger.close()

    def __enter__(self) -> "ExtractionRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.interrupt()  # (the Prefect engine's Ctrl-C): close at once instead of finishing every clip
        self.close()


def extract_shard(config: ExtractConfig, audio_jobs: Sequence[AudioJob], video_jobs: Sequence[VideoJob],
                  audio_features: Sequence[str], video_features: Sequence[str],
                  timing: ClipTiming = ClipTiming()) -> dict[str, Any]:
    """One shard from download to write in this process (a Dask task: frames never leave the worker, and the
    shard has exactly one writer). Returns the counts only."""
    with ExtractionRun(config, timing) as run:
        report = run.audio(audio_jobs, audio_features)
        report.add(run.videos(video_jobs, video_features))
    return report.to_dict()


# --- re-check and statistics ----------------------------------------------------------------------------------

def probe_cached_videos(config: ExtractConfig, jobs: list[VideoJob], progress: bool = False,
                        downloads: DownloadSession | None = None) -> ExtractionReport:
    """Re-check that videos whose features are cached still exist; vanished ones are recorded, features kept.

    `downloads`: the run's session (`ExtractionRun.downloads()`, or a Dask-leased one), so re-checks and downloads
    share the run's one cap on requests to the host; without it, a session of its own."""
    report = ExtractionReport()
    if not jobs:
        return report
    results = probe_clips([(j.clip_id, j.segment) for j in jobs], config.download, progress, session=downloads)
    records = []
    for r in results:
        if r.status == "missing":
            records.append(VideoRecord(r.clip_id, r.youtube_id, "missing", r.reason,
                                       f"{r.message} (features extracted earlier are kept)"))
            report.newly_missing_cached += 1
        elif r.status == "available":
            records.append(VideoRecord(r.clip_id, r.youtube_id, "available", None, r.message))
        # a transient failure (or a tripped circuit breaker) leaves the entry as it was: checked again next run
    with Ledger(config.ledger_path) as ledger:
        ledger.record_many(records)
    return report


def finish_extraction(config: ExtractConfig) -> dict[str, Any]:
    """Per-bin statistics of every feature over the training partitions' real frames (incremental: only rows new
    since the last run are read): training standardises log-mel (paper 3.1.2) and, by default, the visual
    embeddings with them. Then the consolidated metadata is refreshed."""
    with StoreLock(config.store, purpose="extract"), FeatureStore.create_or_open(config.store) as store:
        out = _update_stats(config, store) if config.compute_stats else {}
        store.consolidate()  # last write of a run: xarray.open_zarr(path) then sees the whole store
        return out


def _update_stats(config: ExtractConfig, store: FeatureStore) -> dict[str, Any]:
    out = {}
    names = store.feature_names()
    for feature in config.features:
        if feature in names:  # (no separate check of present rows: reading a feature's masks costs ~0.5 ms a clip)
            try:
                out[feature] = update_feature_stats(store, feature)
            except ValueError as exc:  # no training rows yet: nothing to standardise with
                out[feature] = {"error": str(exc)}
    return out


# --- in-process driver --------------------------------------------------------------------------

class _Progress:
    """tqdm bars fed by the pipeline's events (the plain engine's progress)."""

    def __init__(self, plan: ExtractionPlan, enabled: bool, observer: Observer | None):
        self.observer = observer
        self.audio = tqdm(total=len(plan.audio_jobs), desc="audio features", unit="clip",
                          disable=not enabled or not plan.audio_jobs)
        self.video = tqdm(total=len(plan.video_jobs), desc="videos", unit="clip",
                          disable=not enabled or not plan.video_jobs)

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        if event == "audio":
            self.audio.update(1)
        elif event == "settled":
            self.video.update(1)
        if self.observer is not None:
            self.observer(event, details)

    def close(self) -> None:
        self.audio.close()
        self.video.close()


class ExtractionInterrupted(AvsedError):
    """The run was stopped (Ctrl-C) after writing what it had in hand; `report` counts what it did. An expected
    error: the Prefect engine logs it as its one line, and the command exits 130."""

    def __init__(self, report: "ExtractionReport"):
        super().__init__("interrupted: the clips in hand were written; a rerun does the rest")
        self.report = report


def run_extraction(config: ExtractConfig, progress: bool = True, timing: ClipTiming = ClipTiming(),
                   observer: Callable[[str, dict[str, Any]], None] | None = None,
                   stop: threading.Event | None = None) -> ExtractionReport:
    """The whole extraction in this process (the flow runs the same stages as Prefect tasks).

    `observer(event, details)` is told of each stage's progress ("audio", "downloaded", "decoded", "released",
    "embedded", "written", "settled"). `stop`: once set (Ctrl-C, `sigint_stops`), no new clip starts, what is in
    hand is written, and `ExtractionInterrupted` is raised.
    """
    _check_store_path(config)
    try:
        with StoreLock(config.store, purpose="extract"):  # one writer per store for the whole run
            return _run_extraction(config, progress, timing, observer, stop or threading.Event())
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        refusal = disk_refusal(exc, config)
        if refusal is None:
            raise
        raise refusal from exc


def _check_store_path(config: ExtractConfig) -> None:
    store = Path(config.store)
    if store.exists() and not store.is_dir():
        raise AvsedError(f"store {store} is a file, not a feature store folder: give --store a folder path "
                         f"(e.g. {store.with_suffix('.zarr')}) or move the file away")
    for parent in store.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AvsedError(f"store {store}: {parent} is a file, not a folder; give --store a path under a folder")
            break


# errno -> what it means for a run, and what to do
_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}
_SQLITE_DISK = (("disk is full", "no space left on the device"),
                ("readonly database", "the ledger is read-only"),
                ("unable to open database", "the ledger cannot be opened (a read-only or missing folder?)"),
                ("disk i/o error", "the disk failed a read or write"))


def disk_refusal(exc: BaseException, config: ExtractConfig) -> AvsedError | None:
    """One line for a run that the disk stopped (full, read-only, no permission), found anywhere in `exc`'s chain
    (the writer thread and the video stream wrap what they meet); None for anything else (a bug keeps its
    traceback). What was written stays: the store is consistent after a failure at any write, and a rerun goes on
    from there once the disk is fixed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = None
        where = ""
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            cause = _DISK_ERRNOS[exc.errno]
            where = f" ({exc.filename})" if exc.filename else ""
        elif isinstance(exc, sqlite3.Error):
            text = str(exc).lower()
            cause = next((what for marker, what in _SQLITE_DISK if marker in text), None)
            where = f" ({config.ledger_path})"
        if cause is not None:
            return AvsedError(f"the run stopped: {cause}{where} while writing the store {config.store} or its "
                              f"ledger [{type(exc).__name__}: {exc}]; what was written is kept and consistent: "
                              f"fix the disk (free space, a writable folder) and rerun to go on")
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def sigint_stops(stop: threading.Event, command: str = "avsed extract") -> Iterator[None]:
    """Ctrl-C for a run in this process: the first sets `stop` (the run writes what it has in hand and raises
    `ExtractionInterrupted`) and prints one line; a second kills this process's children (ffmpeg, decode workers)
    and ends it at once with status 130: nothing half-written is lost (the store survives a kill at any write).
    Only in the main thread (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:
        if not stop.is_set():
            stop.set()
            print(f"{command}: interrupted: writing the clips in hand, then exiting (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)
            return
        kill_children()
        os._exit(130)  # no interpreter teardown: its threads (torch's among them) would abort it

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if not stop.is_set():  # once interrupted, a second Ctrl-C still ends the process at once, up to its exit
            signal.signal(signal.SIGINT, previous)


def kill_children() -> None:
    """Kill every process this one started (and theirs): decode workers, ffmpeg."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def when_set(stop: threading.Event, done: threading.Event, action: Callable[[], None]) -> threading.Thread:
    """A thread that runs `action` once `stop` is set (a signal handler only sets the event: the action takes
    locks the interrupted main thread may hold), or ends when `done` is."""
    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.1):
                action()
                return
    thread = threading.Thread(target=watch, name="avsed-stop", daemon=True)
    thread.start()
    return thread


def _run_extraction(config: ExtractConfig, progress: bool, timing: ClipTiming,
                    observer: Observer | None, stop: threading.Event) -> ExtractionReport:
    t0 = time.perf_counter()
    plan = plan_extraction(config, timing)
    report = ExtractionReport(clips=plan.n_clips, new_clips=plan.new_clips,
                              manifest_problems=list(plan.manifest_problems), label_changes=list(plan.label_changes))
    t1 = time.perf_counter()
    bars = _Progress(plan, progress, observer)
    done = threading.Event()
    try:
        with ExtractionRun(config, timing, bars, stop=stop) as run:
            when_set(stop, done, run.interrupt)
            report.add(run.audio(plan.audio_jobs, plan.audio_features))
            bars.audio.close()
            t2 = time.perf_counter()
            if not stop.is_set():
                report.add(probe_cached_videos(config, plan.probe_jobs, progress, downloads=run.downloads()))
            t3 = time.perf_counter()
            if not stop.is_set():
                report.add(run.videos(plan.video_jobs, plan.video_features))
            busy = run.busy_seconds()
        t4 = time.perf_counter()
    finally:
        done.set()
        bars.close()
    if stop.is_set():  # what was in hand is written (the store is consistent); statistics wait for a full run
        report.seconds = time.perf_counter() - t0
        raise ExtractionInterrupted(report)
    finish_extraction(config)
    t5 = time.perf_counter()
    report.stage_seconds = {"plan": t1 - t0, "audio": t2 - t1, "re-check": t3 - t2, "video": t4 - t3,
                            "stats": t5 - t4, **{f"{k} (busy)": v for k, v in busy.items()}}
    report.seconds = t5 - t0
    return report


def clear_videos(config: ExtractConfig) -> None:
    """Delete the download folder (kept videos are a cache, never the source of truth)."""
    shutil.rmtree(config.video_path, ignore_errors=True)

