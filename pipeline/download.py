"""Download each clip's video with yt-dlp's Python API: only the clip's time range, with one bounded pool of
workers per run, and turn every outcome into a ledger outcome (`available` / `missing` + reason / `failed`).

`DownloadSession` is one run's downloads: `config.concurrency` worker threads (the run's one cap on downloads
and probes in flight), one reused YoutubeDL per worker, a per-clip deadline (`clip_deadline_seconds`) and a
circuit breaker (`pipeline.circuit_breaker`) that stops the run's requests once the host refuses every one of
them. `download_clips` / `probe_clips` run a batch through a session; `download_clip` / `probe_clip` do one
clip in the calling thread (no deadline, no breaker).

Outcomes (`DownloadResult.status`):
- `available`: the file is in `out_dir` (for a probe: the video still exists).
- `missing` + a permanent reason (removed, private, terminated, copyright, geo, age, not_found, unsupported,
  no_youtube_id): recorded in the ledger and not retried unless asked (`retry_missing_reasons`).
- `failed` + a transient reason or None (network, 5xx, `stalled`, `truncated`, `not_media`, `rate_limited`,
  `bot_check`, `client_refused`, `format_unavailable`, `deadline`, any message not known to be permanent):
  retried on the next run. The rule and the classes are in `pipeline.download_reasons`.
- `not_attempted`: the circuit breaker had opened before the clip was tried. Never written to the ledger:
  the caller leaves the clip's entry untouched, so the next run tries it.

Deadlines: every yt-dlp request has `socket_timeout`; the ffmpeg that cuts partial downloads gets the same
value as its read timeout (`-rw_timeout`), without which a host that sends a little and then stalls keeps it
waiting forever (with `-xerror`, so that it ends with an error rather than a short file); and each clip has
`clip_deadline_seconds` in all, after which it is recorded `failed` / `deadline`, its ffmpeg is killed (found
by its command line: it calls no progress hook), and the run goes on. `stop()` (Ctrl-C) ends every clip in
flight as `not_attempted` / `interrupted` (never recorded) and kills their ffmpeg. A clip past its deadline keeps
its worker (and so its slot) until yt-dlp gives up, so abandoned work never grows beyond `concurrency` threads.

The configuration (`DownloadConfig`) is pipeline/download_config.py. The URL template is YouTube's watch URL by
default; tests and the demo point it at the loopback server
(`avsed.synthetic.video_host`), whose YouTube-shaped watch URLs go through `avsed.synthetic.loopback_youtube`. Partial
downloads go through ffmpeg, which yt-dlp only accepts when an executable named `ffmpeg` is on PATH:
`pipeline.ffmpeg_bin` provides the project's one.

Files: `<out_dir>/<clip stem>.<ext>` holds just the clip's range (the clip starts at 0 in it); if the
cut fails, the whole video is fetched once as `<clip stem>.whole.<ext>` and `DownloadResult.clip_start`
(= the segment start) says where the clip begins: pass it to `frames.decode_frames(start=...)`.
"""

from __future__ import annotations

import copy
import functools
import queue
import re
import threading
import time
import warnings
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import psutil
from tqdm.auto import tqdm

from pipeline.circuit_breaker import CircuitBreaker
# the configuration, imported from here by most callers
from pipeline.download_config import DownloadConfig, load_extractor  # noqa: F401
from pipeline.download_reasons import (NOT_MEDIA_MESSAGE, classify_download_error,  # noqa: F401 - re-exported
                                       classify_message)
from avsed.core.errors import AvsedError
from pipeline.ffmpeg_bin import ensure_ffmpeg_on_path, ffmpeg_exe

if TYPE_CHECKING:  # pragma: no cover
    from avsed.core.manifest import YouTubeSegment

# Final video files yt-dlp may leave (its partial files end in .part / .ytdl / .temp and are ignored).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".flv", ".3gp")

RESULT_STATUSES = ("available", "missing", "failed", "not_attempted")
_ABANDONED_POLL_SECONDS = 0.2  # how often an abandoned clip's ffmpeg is looked for (and killed)


@dataclass(frozen=True)
class DownloadResult:
    clip_id: str
    youtube_id: str | None
    status: str  # available | missing | failed (pipeline.ledger.VIDEO_STATUSES) | not_attempted (never recorded)
    reason: str | None
    message: str
    path: Path | None
    clip_start: float = 0.0  # where the clip begins inside `path`: 0 for a partial download


NO_YOUTUBE_ID_MESSAGE = "clip name carries no YouTube id (audio-only by construction)"




# -- yt-dlp instances ---------------------------------------------------------------------------------
@dataclass
class _CapturedLog:
    """yt-dlp logger that keeps warnings and errors (they go into the ledger) instead of printing them."""

    lines: list[str] = field(default_factory=list)

    def debug(self, msg: str) -> None:
        pass  # progress and debug chatter

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.lines.append(msg)
        del self.lines[:-20]  # a reused instance's log stays small

    def error(self, msg: str) -> None:
        self.lines.append(msg)
        del self.lines[:-20]


def _check_cookies_file(config: DownloadConfig) -> None:
    if config.cookies_file and not Path(config.cookies_file).is_file():
        raise AvsedError(f"download.cookies_file {config.cookies_file} does not exist: export cookies.txt "
                         "(Netscape format) from a browser signed in to YouTube, or leave the setting empty")


def youtubedl_options(config: DownloadConfig, log: _CapturedLog, progress_hook=None) -> dict:
    """The YoutubeDL parameters every download and probe of this configuration share."""
    opts = {
        "format": config.format,
        "format_sort": list(config.format_sort),
        "logger": log,
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "noplaylist": True,
        "retries": config.retries,
        "fragment_retries": config.fragment_retries,
        "extractor_retries": config.retries,
        "socket_timeout": config.socket_timeout,
        # ffmpeg (partial downloads) has no read timeout of its own: a host that stalls would hold it forever
        "external_downloader_args": {"ffmpeg_i": ["-xerror", "-rw_timeout", str(int(config.socket_timeout * 1_000_000))]},
        "ffmpeg_location": ffmpeg_exe(),
        "cachedir": False,
        "overwrites": True,  # a leftover from a crashed run is replaced, never appended to
        "continuedl": False,
        "nopart": False,
        "noresizebuffer": True,
        "updatetime": False,
    }
    if config.rate_limit:
        opts["ratelimit"] = config.rate_limit
    if config.cookies_file:
        opts["cookiefile"] = str(config.cookies_file)
    if config.proxy:
        opts["proxy"] = config.proxy
    if config.sleep_interval:
        opts["sleep_interval"] = float(config.sleep_interval)
        if config.max_sleep_interval:
            opts["max_sleep_interval"] = float(config.max_sleep_interval)
    if config.sleep_interval_requests:
        opts["sleep_interval_requests"] = float(config.sleep_interval_requests)
    if config.extractor_args:
        opts["extractor_args"] = copy.deepcopy(config.extractor_args)
    if progress_hook is not None:
        opts["progress_hooks"] = [progress_hook]
    return opts


def _new_youtubedl(config: DownloadConfig, log: _CapturedLog, progress_hook=None):
    import yt_dlp  # looked up at call time: tests count instances by replacing yt_dlp.YoutubeDL

    _check_cookies_file(config)
    return yt_dlp.YoutubeDL(youtubedl_options(config, log, progress_hook))


@functools.lru_cache(maxsize=8)
def _extractor_for(url_template: str, extractors: tuple[str, ...] = ()):
    """The extractor class for this template's URLs and whether it is one of `extractors` (not among yt-dlp's own,
    so each YoutubeDL instance must be given it): the first of `extractors` that is suitable, else yt-dlp's pick,
    the first enabled one of its own that is.

    yt-dlp asks its ~1750 extractors in turn for every URL; YouTube's is 5th, but the generic one (direct links,
    the loopback host) is last, and that scan cost ~45 ms of CPU per clip (measured on loopback, more than the
    download). Found once per template, then named to `extract_info` (`ie_key`).
    """
    from yt_dlp.extractor import gen_extractor_classes

    url = url_template.format(youtube_id="aaaaaaaaaaa")  # an 11-character id, as YouTube's
    for ie in map(load_extractor, extractors):
        if ie.suitable(url):
            return ie, True
    return next((ie for ie in gen_extractor_classes() if getattr(ie, "_ENABLED", True) and ie.suitable(url)), None), False


def _extract(ydl, config: DownloadConfig, youtube_id: str, download: bool):
    url = config.url(youtube_id)
    ie, own = _extractor_for(config.url_template, config.extractors)
    ie_key = None
    if ie is not None and ie.suitable(url):  # otherwise (an odd id) yt-dlp chooses, as usual
        ie_key = ie.ie_key()
        if own:
            ydl.add_info_extractor(ie())
    return ydl.extract_info(url, download=download, ie_key=ie_key)


def clip_stem(clip_id: str) -> str:
    """File stem of a clip's video: the clip name without extension, made safe for yt-dlp templates."""
    stem = Path(clip_id).stem if Path(clip_id).suffix in (".wav", ".flac") else clip_id
    return stem.replace("/", "_").replace("%", "%%")


# A whole (uncut) video is stored as `<stem>.whole.<ext>` so that a later run reusing it knows that
# the clip starts at the segment's start inside it, not at 0.
WHOLE_MARK = ".whole"


def find_video(out_dir: Path, clip_id: str) -> Path | None:
    """An already complete video of this clip in `out_dir` (yt-dlp's partial files are not complete)."""
    stem = clip_stem(clip_id).replace("%%", "%")
    for mark in ("", WHOLE_MARK):
        for ext in VIDEO_EXTENSIONS:
            p = Path(out_dir) / f"{stem}{mark}{ext}"
            if p.is_file() and p.stat().st_size > 0:
                return p
    return None


PARTIAL_SUFFIXES = (".part", ".ytdl", ".temp")  # yt-dlp's unfinished files (never resumed here: continuedl off)


def remove_partial_files(out_dir: Path, clip_id: str | None = None) -> int:
    """Delete yt-dlp's unfinished files in `out_dir`: of one clip, or (None) all of them, e.g. a killed run's.
    Returns how many went."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    stem = clip_stem(clip_id).replace("%%", "%") if clip_id is not None else ""
    n = 0
    for p in out_dir.glob(f"{glob_escape(stem)}*" if stem else "*"):
        if p.suffix in PARTIAL_SUFFIXES and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def clip_start_in(path: Path, segment: "YouTubeSegment") -> float:
    """Where the clip begins inside a downloaded file: 0 for a cut file, the segment start for a whole one."""
    return float(segment.start) if Path(path).stem.endswith(WHOLE_MARK) else 0.0


def _aim(ydl, out_dir: Path, clip_id: str, segment: "YouTubeSegment", config: DownloadConfig) -> None:
    """Point a (reused) YoutubeDL at one clip: its file name and, for a partial download, its time range.

    yt-dlp reads these parameters per download (`outtmpl` when naming the file, `download_ranges` when
    selecting formats, `force_keyframes_at_cuts` in its ffmpeg downloader), so one instance serves many clips.
    """
    from yt_dlp.utils import download_range_func

    ydl.params["outtmpl"]["default"] = str(
        Path(out_dir) / f"{clip_stem(clip_id)}{'' if config.partial else WHOLE_MARK}.%(ext)s")
    if config.partial:
        ydl.params["download_ranges"] = download_range_func(None, [(segment.start, segment.end)])
        ydl.params["force_keyframes_at_cuts"] = config.force_keyframes_at_cuts
    else:
        ydl.params.pop("download_ranges", None)  # absent, not None: yt-dlp calls it when present


def _immediate_result(clip_id: str, segment: "YouTubeSegment | None", out_dir: Path | None) -> DownloadResult | None:
    """The result of a clip that needs no request: no YouTube id, or a complete file already there."""
    if segment is None:
        return DownloadResult(clip_id, None, "missing", "no_youtube_id", NO_YOUTUBE_ID_MESSAGE, None)
    if out_dir is not None:
        existing = find_video(out_dir, clip_id)
        if existing is not None:
            return DownloadResult(clip_id, segment.youtube_id, "available", None, "reused existing file", existing,
                                  clip_start_in(existing, segment))
    return None


_FFMPEG_FAILED = "ffmpeg exited with code"
# What yt-dlp reports when a SIGINT ended its ffmpeg: ffmpeg's status after a signal it caught (255), or the
# unfinished file it never wrote. Only these wait (`_CTRL_C_GRACE_SECONDS`) for the run's stop before counting.
_FFMPEG_INTERRUPTED = re.compile(r"ffmpeg exited with code 255|No such file or directory: .*\.part")
_CTRL_C_GRACE_SECONDS = 1.0


def _download_with(ydl, log: _CapturedLog, clip_id: str, segment: "YouTubeSegment", out_dir: Path,
                   config: DownloadConfig, cancel: threading.Event | None = None) -> DownloadResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _attempt(ydl, log, clip_id, segment, out_dir, config)
    if (config.partial and config.fallback_whole and result.status == "failed"
            and _FFMPEG_FAILED in result.message and not (cancel is not None and cancel.is_set())):
        whole = _attempt(ydl, log, clip_id, segment, out_dir, config.model_copy(update={"partial": False}))
        note = f"partial download failed ({result.message}); whole video: "
        return replace(whole, message=note + (whole.message or "ok"))
    return result


def _attempt(ydl, log: _CapturedLog, clip_id: str, segment: "YouTubeSegment", out_dir: Path,
             config: DownloadConfig) -> DownloadResult:
    clip_start = 0.0 if config.partial else float(segment.start)
    log.lines.clear()
    _aim(ydl, out_dir, clip_id, segment, config)
    try:
        info = _extract(ydl, config, segment.youtube_id, download=True)
        path = _downloaded_path(info, out_dir, clip_id)
    except Exception as exc:  # noqa: BLE001 - per-clip boundary: every failure becomes a ledger outcome
        status, reason, message = classify_download_error(exc)
        remove_partial_files(out_dir, clip_id)  # never resumed (`continuedl` is off): only clutter
        return DownloadResult(clip_id, segment.youtube_id, status, reason, message, None, clip_start)
    if path is None:
        detail = "; ".join(log.lines[-3:]) or "yt-dlp finished without a file"
        return DownloadResult(clip_id, segment.youtube_id, "failed", None, detail, None, clip_start)
    if _is_web_page(path):  # a host that answers every request with a page (captive portal, consent page)
        path.unlink(missing_ok=True)
        return DownloadResult(clip_id, segment.youtube_id, "failed", "not_media", NOT_MEDIA_MESSAGE, None, clip_start)
    return DownloadResult(clip_id, segment.youtube_id, "available", None, "; ".join(log.lines[-3:]), path,
                          clip_start_in(path, segment))


def _is_web_page(path: Path) -> bool:
    with Path(path).open("rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _downloaded_path(info: dict | None, out_dir: Path, clip_id: str) -> Path | None:
    if info:
        for d in info.get("requested_downloads") or []:
            p = d.get("filepath")
            if p and Path(p).is_file() and Path(p).stat().st_size > 0:
                return Path(p)
    return find_video(out_dir, clip_id)


def _probe_with(ydl, clip_id: str, segment: "YouTubeSegment", config: DownloadConfig) -> DownloadResult:
    ydl.params.pop("download_ranges", None)
    try:
        _extract(ydl, config, segment.youtube_id, download=False)
    except Exception as exc:  # noqa: BLE001 - per-clip boundary, as in a download
        status, reason, message = classify_download_error(exc)
        return DownloadResult(clip_id, segment.youtube_id, status, reason, message, None)
    return DownloadResult(clip_id, segment.youtube_id, "available", None, "still available", None)


# -- one clip, in the calling thread ------------------------------------------------------------------
def download_clip(clip_id: str, segment: "YouTubeSegment | None", out_dir: str | Path,
                  config: DownloadConfig = DownloadConfig()) -> DownloadResult:
    """Download one clip's video into `out_dir` in this thread; never raises for per-clip errors.

    Idempotent: an already complete file of this clip is reused without a request. No per-clip deadline
    and no circuit breaker here (they need a `DownloadSession`); yt-dlp's and ffmpeg's timeouts still apply.
    """
    out_dir = Path(out_dir)
    done = _immediate_result(clip_id, segment, out_dir)
    if done is not None:
        return done
    ensure_ffmpeg_on_path()
    log = _CapturedLog()
    with _new_youtubedl(config, log) as ydl:
        return _download_with(ydl, log, clip_id, segment, out_dir, config)


def probe_clip(clip_id: str, segment: "YouTubeSegment | None",
               config: DownloadConfig = DownloadConfig(), ydl=None) -> DownloadResult:
    """Ask whether a clip's video still exists, without downloading it (for clips whose features are cached).

    Same error classes as `download_clip`; `path` is always None. `ydl`: a YoutubeDL to reuse (made with
    `youtubedl_options`); by default one is made for this call.
    """
    done = _immediate_result(clip_id, segment, None)
    if done is not None:
        return done
    if ydl is not None:
        return _probe_with(ydl, clip_id, segment, config)
    with _new_youtubedl(config, _CapturedLog()) as own:
        return _probe_with(own, clip_id, segment, config)


# -- one run's downloads ------------------------------------------------------------------------------
@dataclass(eq=False)
class _Job:
    kind: str  # "download" | "probe"
    clip_id: str
    segment: "YouTubeSegment"
    future: Future
    cancel: threading.Event = field(default_factory=threading.Event)  # set at the deadline
    deadline: float = 0.0  # time.monotonic() by which it must be done, set when it starts
    abandoned: bool = False  # past its deadline: its result is no longer wanted
    resolved: bool = False  # its future has been (or is being) given a result


@dataclass
class _Worker:
    """One worker thread's state: the job it runs (read by its progress hook and by `close`)."""

    thread: threading.Thread | None = None
    job: _Job | None = None


class DownloadSession:
    """One run's downloads and probes: one bounded pool, one circuit breaker, reused YoutubeDL instances.

    `concurrency` worker threads (daemon threads, started at the first request) take clips in submission order;
    each keeps one YoutubeDL for all its clips (making one costs ~75 ms of CPU, ten times a probe against a fast
    host). `submit` / `probe` return a `Future[DownloadResult]` at once and never raise for a clip's errors.
    A watchdog thread resolves a clip that has run for `clip_deadline_seconds` as `failed` / `deadline` and
    asks its download to stop; its worker stays busy until yt-dlp's own timeouts end the attempt, so the
    threads of a session never exceed `concurrency` + 1, however many clips stall. `close()` cancels the clips
    not yet started and waits for those running (at most until their deadlines). Use it as a context manager.
    """

    def __init__(self, config: DownloadConfig = DownloadConfig(), out_dir: str | Path | None = None,
                 stop: threading.Event | None = None):
        _check_cookies_file(config)  # once, before any thread: every clip would fail the same way
        self._stop = stop  # the run's Ctrl-C (pipeline.extract.sigint_stops), which also reaches yt-dlp's ffmpeg
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.breaker = CircuitBreaker(int(config.breaker_threshold))
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._workers: list[_Worker] = []
        self._watchdog: threading.Thread | None = None
        self._closed = False
        self._stopped = False
        self._interrupted = False
        self._cookie_lock = threading.Lock()  # YoutubeDL.close() writes the cookies file: one at a time

    # -- the public side --------------------------------------------------------------------------------
    def submit(self, clip_id: str, segment: "YouTubeSegment | None") -> "Future[DownloadResult]":
        """Download one clip's range into `out_dir`; the future's result is the clip's outcome."""
        if self.out_dir is None:
            raise ValueError("DownloadSession(config, out_dir) needs out_dir to download; it can only probe")
        return self._enqueue("download", clip_id, segment, _immediate_result(clip_id, segment, self.out_dir))

    def probe(self, clip_id: str, segment: "YouTubeSegment | None") -> "Future[DownloadResult]":
        """Ask whether a clip's video still exists, without downloading it."""
        return self._enqueue("probe", clip_id, segment, _immediate_result(clip_id, segment, None))

    def close(self) -> None:
        """Cancel what has not started, wait for what runs (until done or past its deadline), end the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        for job in self._drain():
            job.future.cancel()
        for _ in self._workers:
            self._queue.put(None)
        with self._cond:
            # A worker still on an abandoned clip ends when yt-dlp gives up; nobody waits for that.
            while any(w.thread.is_alive() and not (w.job is not None and w.job.abandoned) for w in self._workers):
                self._cond.wait(0.5)
            self._stopped = True
            self._cond.notify_all()
        abandoned = [w.job.clip_id for w in self._workers if w.job is not None and w.job.abandoned]
        if self._watchdog is not None and not abandoned:
            self._watchdog.join(timeout=5)  # (with abandoned clips it stays, to kill their ffmpeg)
        for clip_id in abandoned:  # an abandoned clip's ffmpeg never outlives the session
            self._kill_ffmpeg(clip_id)

    def stop(self) -> None:
        """Stop at once (Ctrl-C): the clips not started and those running come back `not_attempted` (reason
        `interrupted`: the ledger keeps what it had), and the ffmpeg processes cutting them are killed."""
        with self._cond:
            self._interrupted = True
            running = [w.job for w in self._workers if w.job is not None and not w.job.abandoned]
            for job in running:
                job.abandoned = True
                job.cancel.set()
            self._cond.notify_all()
        for job in self._drain() + running:
            self._resolve(job, self._interrupted_result(job))
        for job in running:
            self._kill_ffmpeg(job.clip_id)

    def _killed_by_ctrl_c(self, result: DownloadResult) -> bool:
        """Whether a failure is the run's Ctrl-C, which reaches the ffmpeg cutting a clip (it shares the run's
        process group) a moment before the run's own stop does: such a failure says nothing about the video."""
        if self._interrupted:
            return True
        if result.status != "failed" or self._stop is None or not _FFMPEG_INTERRUPTED.search(result.message or ""):
            return False
        return self._stop.wait(_CTRL_C_GRACE_SECONDS)

    def _drain(self) -> list["_Job"]:
        """The jobs still queued (not started), taken off the queue."""
        jobs = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def _interrupted_result(self, job: "_Job") -> DownloadResult:
        return DownloadResult(job.clip_id, job.segment.youtube_id, "not_attempted", "interrupted",
                              "the run was interrupted before this clip's download finished", None)

    def _kill_ffmpeg(self, clip_id: str) -> None:
        """Kill the ffmpeg processes (yt-dlp's children, cutting partial downloads) writing one clip of this session
        into its folder, found by their command line, which names the output file. Only this session's clips:
        other sessions of the process (shard tasks on the threads of one Dask worker or task runner) may be cutting
        theirs into the same folder; killing every ffmpeg there at `close` failed their downloads."""
        if self.out_dir is None:
            return
        folder = str(self.out_dir)
        stem = clip_stem(clip_id).replace("%%", "%")
        for proc in _ffmpeg_children():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if any(folder in a and stem in a for a in args):
                try:
                    proc.kill()
                except psutil.Error:
                    pass

    def __enter__(self) -> "DownloadSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pool ---------------------------------------------------------------------------------------
    def _enqueue(self, kind: str, clip_id: str, segment, immediate: DownloadResult | None) -> Future:
        future: Future = Future()
        if immediate is not None:
            future.set_result(immediate)
            return future
        job = _Job(kind, clip_id, segment, future)
        with self._cond:
            if self._closed:
                raise RuntimeError("DownloadSession is closed")
            if self.breaker.is_open:
                immediate = self._not_attempted(job)
            else:
                self._start_threads()
                self._queue.put(job)
        if immediate is not None:
            future.set_result(immediate)
        return future

    def _start_threads(self) -> None:
        if self._workers:
            return
        ensure_ffmpeg_on_path()  # once, in the caller's thread, before any worker (they only read PATH)
        for i in range(int(self.config.concurrency)):
            worker = _Worker()
            worker.thread = threading.Thread(target=self._work, args=(worker,), name=f"avsed-download-{i}",
                                             daemon=True)  # daemon: a clip stuck in a read never blocks exit
            self._workers.append(worker)
            worker.thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="avsed-download-deadlines", daemon=True)
        self._watchdog.start()

    def _not_attempted(self, job: _Job) -> DownloadResult:
        return DownloadResult(job.clip_id, job.segment.youtube_id, "not_attempted", self.breaker.tripped_by,
                              self.breaker.message, None)

    def _work(self, worker: _Worker) -> None:
        log = _CapturedLog()
        ydl = None

        def stop_at_deadline(progress: dict) -> None:  # a progress hook: called for every block received
            job = worker.job
            if job is not None and job.cancel.is_set():
                from yt_dlp.utils import DownloadCancelled

                raise DownloadCancelled(f"clip {job.clip_id}: past its deadline")

        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                if self._interrupted:
                    self._resolve(job, self._interrupted_result(job))
                    continue
                if self.breaker.is_open:
                    self._resolve(job, self._not_attempted(job))
                    continue
                with self._cond:
                    job.deadline = time.monotonic() + float(self.config.clip_deadline_seconds)
                    worker.job = job
                    self._cond.notify_all()  # the watchdog learns the new deadline
                try:
                    if ydl is None:
                        ydl = _new_youtubedl(self.config, log, stop_at_deadline)
                    if job.kind == "probe":
                        result = _probe_with(ydl, job.clip_id, job.segment, self.config)
                    else:
                        assert self.out_dir is not None
                        result = _download_with(ydl, log, job.clip_id, job.segment, self.out_dir, self.config,
                                                job.cancel)  # past its deadline, a failed cut is not retried whole
                except BaseException as exc:  # a bug, not a clip's problem: the caller sees it with its traceback
                    self._finish(worker, job, exc=exc)
                    ydl = self._discard(ydl)
                    continue
                if self._killed_by_ctrl_c(result):
                    result = self._interrupted_result(job)
                self.breaker.record(result.status, result.reason)
                if self._finish(worker, job, result=result):
                    ydl = self._discard(ydl)  # it was interrupted mid-download: start the next clip afresh
        finally:
            self._discard(ydl)
            with self._cond:
                worker.job = None
                self._cond.notify_all()

    def _discard(self, ydl) -> None:
        """Close a worker's YoutubeDL (which writes the cookies file back); a failure there must not end the
        worker, or the clips still queued would wait forever."""
        if ydl is not None:
            with self._cookie_lock:
                try:
                    ydl.close()
                except Exception as exc:  # noqa: BLE001 - reported, and the worker goes on
                    warnings.warn(f"closing yt-dlp failed ({exc}); if download.cookies_file is set, its refreshed "
                                  f"cookies were not written back", RuntimeWarning, stacklevel=2)
        return None

    def _finish(self, worker: _Worker, job: _Job, result: DownloadResult | None = None,
                exc: BaseException | None = None) -> bool:
        """Hand a finished job's outcome to its future unless the deadline already did; True if it had."""
        with self._cond:
            worker.job = None
            abandoned = job.abandoned
            self._cond.notify_all()
        if not abandoned:
            self._resolve(job, result, exc)
        return abandoned

    def _resolve(self, job: _Job, result: DownloadResult | None, exc: BaseException | None = None) -> None:
        with self._cond:
            if job.resolved:
                return
            job.resolved = True
        # outside the lock: the future's callbacks may submit more work
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _watch(self) -> None:
        """Resolve every running clip that passes its deadline as failed, and ask its download to stop; kill the
        ffmpeg of an abandoned clip whenever one appears (yt-dlp may start it after the deadline), until every
        abandoned worker is free, also after `close`."""
        while True:
            expired: list[_Job] = []
            with self._cond:
                abandoned = [w.job.clip_id for w in self._workers
                             if w.job is not None and w.job.abandoned and w.thread.is_alive()]
                if self._stopped and not abandoned:
                    return
                now = time.monotonic()
                running = [w.job for w in self._workers if w.job is not None and not w.job.abandoned]
                for job in running:
                    if job.deadline <= now:
                        job.abandoned = True
                        job.cancel.set()
                        expired.append(job)
                if not expired and not abandoned:
                    waits = [job.deadline - now for job in running]
                    self._cond.wait(min(waits) if waits else None)
                    continue
                if not expired:
                    waits = [job.deadline - now for job in running]
                    self._cond.wait(min(waits + [_ABANDONED_POLL_SECONDS]))
                else:
                    self._cond.notify_all()  # close() may be waiting for these
            for clip_id in abandoned:
                self._kill_ffmpeg(clip_id)
            for job in expired:
                self._kill_ffmpeg(job.clip_id)  # its ffmpeg calls no progress hook: only a kill ends it now
                seconds = float(self.config.clip_deadline_seconds)
                self._resolve(job, DownloadResult(
                    job.clip_id, job.segment.youtube_id, "failed", "deadline",
                    f"clip {job.clip_id}: the {'probe' if job.kind == 'probe' else 'download'} stalled: no result "
                    f"within {seconds:g} s (download.clip_deadline_seconds); it is retried on the next run",
                    None, 0.0 if self.config.partial else float(job.segment.start)))


def _ffmpeg_children() -> list["psutil.Process"]:
    """This process's ffmpeg descendants (yt-dlp starts them for partial downloads)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for proc in children:
        try:
            if "ffmpeg" in proc.name():
                out.append(proc)
        except psutil.Error:
            continue
    return out


# -- many clips ---------------------------------------------------------------------------------------
def download_clips(items: Iterable[tuple[str, "YouTubeSegment | None"]], out_dir: str | Path,
                   config: DownloadConfig = DownloadConfig(), progress: bool = True) -> Iterator[DownloadResult]:
    """Download many clips through one `DownloadSession`; yields results as they complete.

    Results include `not_attempted` ones once the circuit breaker opens (not for the ledger). Closing the
    iterator early cancels the downloads not yet started.
    """
    items = list(items)
    if not items:
        return
    bar = tqdm(total=len(items), desc="download videos", unit="clip", disable=not progress)
    counts = {s: 0 for s in RESULT_STATUSES}
    try:
        with DownloadSession(config, out_dir) as session:
            futures = [session.submit(cid, seg) for cid, seg in items]
            for fut in as_completed(futures):
                result = fut.result()
                counts[result.status] = counts.get(result.status, 0) + 1
                bar.update(1)
                bar.set_postfix(counts, refresh=False)
                yield result
    finally:
        bar.close()


def probe_clips(clips: "list[tuple[str, YouTubeSegment | None]]", config: DownloadConfig = DownloadConfig(),
                progress: bool = False, session: "DownloadSession | None" = None) -> list[DownloadResult]:
    """`probe_clip` for many clips through one `DownloadSession`, in input order: `session` (a run's, so that
    probes share its cap with its downloads; anything with `probe`) or one of their own.

    Each worker reuses one YoutubeDL: measured on loopback, 83 ms per probe with a new instance and 8 ms
    reusing one; re-checking the demo's 326 cached videos took 27 s before, and all of DESED would take half
    an hour of CPU.
    """
    if session is None:
        with DownloadSession(config) as own:
            return probe_clips(clips, config, progress, own)
    futures = [session.probe(cid, seg) for cid, seg in clips]
    return [f.result() for f in tqdm(futures, total=len(futures), desc="re-check videos", unit="clip",
                                     disable=not progress)]
