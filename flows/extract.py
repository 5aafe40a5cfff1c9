"""Prefect flow `extract-features`: the extraction's stages as named tasks per shard, over one bounded pipeline.

In-process (the default task runner), the flow owns one `ExtractionRun` (the writer thread, one download session:
the global download cap, the video stream: the memory bound) and keeps a window of `shards_in_flight` shards in
flight: per shard `audio[logmel, shard 17]`, `download[shard 17]` and `embed[openl3+vgg16, shard 17]` (tagged
`avsed-gpu`, so `prefect concurrency-limit create avsed-gpu 1` caps it). Tasks return counts, never arrays; a
shard's frames are freed once written.

With `dask_address`, one task per shard (`extract[logmel+openl3, shard 17]`) carries it from download to write on
one Dask worker: frames never travel between workers, and each shard has exactly one writer. The store and the
ledger must then be on storage every worker sees.

The flow's parameters are typed (`ExtractConfig`): the Prefect UI shows a form and the server refuses a deployment
run whose parameters do not fit (a misspelt key, a wrong type) before it starts. `config_file` and `config` merge
key by key (`pipeline.extract_config.resolve_extract_config`).

Observability: progress artifacts (`extraction-progress`: shards done; `audio-progress` and `video-progress`: clips
done, updated from the flow's thread while it waits for its window, with a log line at most every 30 s) and the
run's report as a Markdown artifact (`extraction-report`).

Expected errors (`AvsedError`: bad settings, missing weights, a store made otherwise or being written by another
run) are not retried and are logged as one line.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from flows import quiet_expected_errors, retry_unless_expected
from flows.download_cap import ClusterDownloadCap, LeasedDownloads
from pipeline.extract import (AudioJob, ExtractConfig, ExtractionInterrupted, ExtractionPlan, ExtractionReport,
                              ExtractionRun, VideoJob, finish_extraction, plan_extraction, probe_cached_videos,
                              sigint_stops, when_set)
from pipeline.download import DownloadSession
from pipeline.extract_config import resolve_extract_config
from avsed.core.store import StoreLock

GPU_TAG = "avsed-gpu"  # a Prefect concurrency limit on this tag caps the tasks that use the GPU


def _label(features) -> str:
    return "+".join(features)


@task(name="plan", task_run_name="plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_expected)
def plan_task(config: ExtractConfig) -> ExtractionPlan:
    plan = plan_extraction(config)
    get_run_logger().info("plan: %d clips (%d new), %d audio jobs, %d videos to fetch, %d cached videos to re-check, "
                          "%d label changes", plan.n_clips, plan.new_clips, len(plan.audio_jobs), len(plan.video_jobs),
                          len(plan.probe_jobs), len(plan.label_changes))
    return plan


@task(name="audio", task_run_name="audio[{label}, shard {shard}]", cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_expected)
def audio_task(run: ExtractionRun, jobs: list[AudioJob], features: tuple[str, ...], shard: int,
               label: str) -> dict[str, Any]:
    report = run.audio(jobs, features)
    get_run_logger().info("shard %d: %s computed for %d clips, %d audio files unusable", shard, label,
                          len(jobs) - report.audio_failed, report.audio_failed)
    return report.to_dict()


@task(name="download", task_run_name="download[shard {shard}]", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_expected)
def download_task(run: ExtractionRun, jobs: list[VideoJob], features: tuple[str, ...], shard: int) -> dict[str, Any]:
    report = run.download(jobs, features)
    get_run_logger().info("shard %d: %d videos downloaded, %d missing, %d failed (retried next run), %d not attempted",
                          shard, report.videos_downloaded, report.videos_missing, report.videos_failed,
                          report.videos_not_attempted)
    return report.to_dict()


# No retries: the stream's failures are not transient (a broken worker), and a retry must never rewrite rows.
@task(name="embed", task_run_name="embed[{label}, shard {shard}]", tags=[GPU_TAG], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_expected)
def embed_task(run: ExtractionRun, jobs: list[VideoJob], features: tuple[str, ...], shard: int,
               label: str) -> dict[str, Any]:
    report = run.embed(jobs, features)
    get_run_logger().info("shard %d: %s written for %s clips, %d corrupt videos", shard, label,
                          report.video_computed, report.videos_corrupt)
    return report.to_dict()


@task(name="re-check", task_run_name="re-check[{n} cached videos]", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_expected)
def probe_task(config: ExtractConfig, jobs: list[VideoJob], n: int, run: ExtractionRun | None = None,
               download_cap: ClusterDownloadCap | None = None) -> dict[str, Any]:
    """Re-checks go through the run's download session (in a process) or take leases of the cluster-wide cap
    (Dask): with the downloads running beside them, the host never sees more than download.concurrency requests."""
    if run is not None:
        report = probe_cached_videos(config, jobs, downloads=run.downloads())
    else:
        with DownloadSession(config.download) as session:
            downloads = LeasedDownloads(session, download_cap.semaphore()) if download_cap is not None else session
            report = probe_cached_videos(config, jobs, downloads=downloads)
    get_run_logger().info("re-check: %d of %d cached videos have vanished (features kept)",
                          report.newly_missing_cached, n)
    return report.to_dict()


@task(name="extract-shard", task_run_name="extract[{label}, shard {shard}]", tags=[GPU_TAG], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_expected)
def shard_task(config: ExtractConfig, audio_jobs: list[AudioJob], video_jobs: list[VideoJob],
               audio_features: tuple[str, ...], video_features: tuple[str, ...], shard: int, label: str,
               download_cap: ClusterDownloadCap | None = None) -> dict[str, Any]:
    """One shard from download to write on a Dask worker (frames never leave it; the shard has one writer). Its
    downloads take leases of the run's cluster-wide cap, so the run has `download.concurrency` in flight in all."""
    with ExtractionRun(config) as run:
        if download_cap is not None:
            download_cap.apply(run, video_features)
        report = run.audio(audio_jobs, audio_features)
        report.add(run.videos(video_jobs, video_features))
    return report.to_dict()


@task(name="statistics", task_run_name="statistics", cache_policy=NO_CACHE, retries=1,
      retry_condition_fn=retry_unless_expected)
def stats_task(config: ExtractConfig) -> dict[str, Any]:
    return finish_extraction(config)


@flow(name="extract-features", log_prints=True)
def extract_features(config: ExtractConfig | None = None, config_file: str | None = None,
                     dask_address: str | None = None) -> dict[str, Any]:
    """Extract features into a store and return the run's report.

    Args:
        config: the extraction settings; with `config_file`, only the keys to change (the two merge key by key,
            `config` winning).
        config_file: a YAML file of extraction settings, on the machine that runs the flow.
        dask_address: tcp://host:port of a dask.distributed scheduler whose workers run one task per shard.
    """
    quiet_expected_errors()
    cfg = resolve_extract_config(config, config_file)
    if dask_address:
        return _run_on_dask(cfg, dask_address)
    stop = threading.Event()
    # Ctrl-C as in the plain engine: the first stops new shards and lets what is in hand be written (the flow then
    # fails with `ExtractionInterrupted`, one line), a second ends the process at once. Left to Prefect, the
    # KeyboardInterrupt waited for every submitted shard to finish (minutes) and printed tracebacks.
    with sigint_stops(stop, "extract-features"):
        return _run(cfg, stop)


class _RunProgress:
    """The run's progress artifacts. The pipeline's threads only count (the observer); the flow's thread, while it
    waits for its window of shards, turns the counts into artifact updates (every `interval` s) and a log line
    (every `log_interval` s): a long embedding task is visible while it runs."""

    def __init__(self, plan: ExtractionPlan, shards: int, what: str, clips: bool = True, interval: float = 5.0,
                 log_interval: float = 30.0):
        # clips=False: the clips are counted where they run (Dask workers); only whole shards are seen here
        self.totals = {"shards": shards, "audio": len(plan.audio_jobs) * clips, "videos": len(plan.video_jobs) * clips}
        self.done = dict.fromkeys(self.totals, 0)
        self.interval, self.log_interval = interval, log_interval
        self._lock = threading.Lock()
        self._shown: dict[str, float] = {}
        self._last = self._last_log = time.monotonic()
        keys = {"shards": ("extraction-progress", f"{what}: shards done of {shards}"),
                "audio": ("audio-progress", f"audio clips done of {self.totals['audio']}"),
                "videos": ("video-progress", f"videos settled (written, missing or failed) of {self.totals['videos']}")}
        self.ids = {name: create_progress_artifact(0.0, key=key, description=description)
                    for name, (key, description) in keys.items() if self.totals[name] or name == "shards"}

    def __call__(self, event: str, details: dict[str, Any]) -> None:  # the pipeline's observer
        name = {"audio": "audio", "settled": "videos"}.get(event)
        if name is not None:
            with self._lock:
                self.done[name] += 1

    def shard_done(self) -> None:
        with self._lock:
            self.done["shards"] += 1
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        with self._lock:
            done = dict(self.done)
        for name, artifact in self.ids.items():
            percent = 100.0 * min(done[name], self.totals[name]) / self.totals[name] if self.totals[name] else (
                100.0 if done["shards"] >= self.totals["shards"] else 0.0)  # a run with nothing to do
            if self._shown.get(name) != percent:
                update_progress_artifact(artifact, percent)
                self._shown[name] = percent
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            get_run_logger().info("progress: " + ", ".join(f"{name} {done[name]} of {self.totals[name]}"
                                                         for name in self.totals if self.totals[name]))

    def wait_for(self, futures: list) -> None:
        """Wait for a shard's futures, refreshing the artifacts meanwhile."""
        while futures:
            _, pending = wait(futures, timeout=self.interval)
            futures = list(pending)
            self.refresh()


def _settle(report: ExtractionReport, futures: list, progress: _RunProgress) -> None:
    progress.wait_for(futures)
    for f in futures:
        report.add(ExtractionReport.from_dict(f.result()))
    progress.shard_done()


def _run(cfg: ExtractConfig, stop: threading.Event) -> dict[str, Any]:
    with StoreLock(cfg.store, purpose="extract-features flow"):  # one writer per store for the whole run
        return _run_locked(cfg, stop)


def _run_locked(cfg: ExtractConfig, stop: threading.Event) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan = plan_task(cfg)
    report = ExtractionReport(clips=plan.n_clips, new_clips=plan.new_clips, manifest_problems=plan.manifest_problems,
                              label_changes=plan.label_changes)
    shards = plan.shards()
    progress = _RunProgress(plan, len(shards), "audio and video features")
    t1 = time.perf_counter()
    audio_label, video_label = _label(plan.audio_features), _label(plan.video_features)
    done = threading.Event()
    try:
        with ExtractionRun(cfg, observer=progress, stop=stop) as run:
            when_set(stop, done, run.interrupt)
            probe = probe_task.submit(cfg, plan.probe_jobs, n=len(plan.probe_jobs), run=run)
            window: deque = deque()
            for shard, audio_jobs, video_jobs in shards:
                if stop.is_set():
                    break  # no new shard: the ones in the window settle with what their stopped stream had in hand
                while len(window) >= max(1, cfg.shards_in_flight):
                    _settle(report, window.popleft(), progress)
                futures = []
                if audio_jobs:
                    futures.append(audio_task.submit(run, audio_jobs, plan.audio_features, shard=shard,
                                                     label=audio_label))
                if video_jobs:
                    downloaded = download_task.submit(run, video_jobs, plan.video_features, shard=shard)
                    futures += [downloaded, embed_task.submit(run, video_jobs, plan.video_features, shard=shard,
                                                              label=video_label, wait_for=[downloaded])]
                window.append(futures)
            while window:
                _settle(report, window.popleft(), progress)
            report.add(ExtractionReport.from_dict(probe.result()))  # before the run (and its session) closes
            busy = run.busy_seconds()
    finally:
        done.set()
    if stop.is_set():  # what was in hand is written (the store is consistent); statistics wait for a full run
        report.seconds = time.perf_counter() - t0
        raise ExtractionInterrupted(report)
    t2 = time.perf_counter()
    stats_task(cfg)
    report.stage_seconds = {"plan": t1 - t0, "shards (audio, re-check and video)": t2 - t1,
                            "stats": time.perf_counter() - t2, **{f"{k} (busy)": v for k, v in busy.items()}}
    return _finish(report, t0)


def _finish(report: ExtractionReport, t0: float) -> dict[str, Any]:
    report.seconds = time.perf_counter() - t0
    create_markdown_artifact(report_markdown(report), key="extraction-report",
                             description="what this extraction run computed and found")
    get_run_logger().info("extraction done: %s", {k: v for k, v in report.to_dict().items()
                                                 if k not in ("manifest_problems", "label_changes")})
    return report.to_dict()


def report_markdown(report: ExtractionReport) -> str:
    """The extraction report as a Markdown artifact."""
    rows = [("clips in the store", report.clips), ("new clips", report.new_clips),
            ("audio features computed", report.audio_computed or "none"), ("unusable audio files", report.audio_failed),
            ("videos downloaded", report.videos_downloaded), ("videos missing (host says gone)", report.videos_missing),
            ("downloads failed (retried next run)", report.videos_failed),
            ("downloads not attempted (circuit breaker)", report.videos_not_attempted),
            ("corrupt videos", report.videos_corrupt),
            ("cached videos vanished (features kept)", report.newly_missing_cached),
            ("video features computed", report.video_computed or "none"),
            ("label changes", len(report.label_changes)), ("manifest problems", len(report.manifest_problems)),
            ("seconds", f"{report.seconds:.1f}")]
    lines = ["# Extraction report", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    for title, items in (("Label changes", report.label_changes), ("Manifest problems", report.manifest_problems)):
        if items:
            lines += ["", f"## {title} (first 50)", ""] + [f"- {p}" for p in items[:50]]
    return "\n".join(lines) + "\n"


def _run_on_dask(cfg: ExtractConfig, address: str) -> dict[str, Any]:
    from prefect_dask import DaskTaskRunner

    # The same flow, with its shard tasks submitted to the given scheduler instead of local threads.
    return extract_features_on_dask.with_options(task_runner=DaskTaskRunner(address=address))(cfg)


@flow(name="extract-features-dask")
def extract_features_on_dask(config: ExtractConfig) -> dict[str, Any]:
    from prefect.runtime import flow_run

    quiet_expected_errors()
    cfg = config.validate()
    # One cap on downloads for the whole run, whatever the shards in flight: a semaphore on the scheduler.
    cap = ClusterDownloadCap(f"avsed-downloads-{flow_run.id}", cfg.download.concurrency)
    with StoreLock(cfg.store, purpose="extract-features flow (dask)"):
        t0 = time.perf_counter()
        plan = plan_task(cfg)
        report = ExtractionReport(clips=plan.n_clips, new_clips=plan.new_clips,
                                  manifest_problems=plan.manifest_problems, label_changes=plan.label_changes)
        shards = plan.shards()
        progress = _RunProgress(plan, len(shards), "shards extracted on Dask", clips=False)
        probe = probe_task.submit(cfg, plan.probe_jobs, n=len(plan.probe_jobs), download_cap=cap)
        label = _label(plan.audio_features + plan.video_features)
        window: deque = deque()
        for shard, audio_jobs, video_jobs in shards:
            while len(window) >= max(1, cfg.shards_in_flight):
                _settle(report, window.popleft(), progress)
            window.append([shard_task.submit(cfg, audio_jobs, video_jobs, plan.audio_features, plan.video_features,
                                             shard=shard, label=label, download_cap=cap if video_jobs else None)])
        while window:
            _settle(report, window.popleft(), progress)
        report.add(ExtractionReport.from_dict(probe.result()))
        stats_task(cfg)
        return _finish(report, t0)
