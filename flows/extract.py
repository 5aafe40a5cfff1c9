"""Prefect flow `extract-features`: the stages of pipeline.extract as tasks, with retries declared here.

Tasks stay thin: each calls one plain function. With `dask_address` the per-batch tasks run on an existing
dask.distributed scheduler (the way to scale past one machine: the store and ledger paths must then be
on storage that every worker sees).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.store import StoreLock

from pipeline.extract import (ExtractConfig, ExtractionReport, VideoJob, cleanup_videos, decode_videos,
                              download_videos, embed_frames, extract_audio_features, finish_extraction,
                              plan_extraction, probe_cached_videos, write_embeddings, _count_downloads)


@task(name="plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def plan_task(config: ExtractConfig):
    return plan_extraction(config)


@task(name="audio-features", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def audio_task(config: ExtractConfig, jobs, features) -> ExtractionReport:
    report = extract_audio_features(config, jobs, features)
    get_run_logger().info("audio features: %s computed, %d clips failed", report.audio_computed, report.audio_failed)
    return report


@task(name="re-check-videos", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def probe_task(config: ExtractConfig, jobs) -> ExtractionReport:
    return probe_cached_videos(config, jobs)


@task(name="download", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def download_task(config: ExtractConfig, jobs: list[VideoJob]):
    results = download_videos(config, jobs)
    log = get_run_logger()
    for r in results:
        log.info("clip %s: video %s%s", r.clip_id, r.status, f" ({r.reason}: {r.message})" if r.reason else "")
    return results


@task(name="decode", cache_policy=NO_CACHE, retries=1)
def decode_task(config: ExtractConfig, jobs: list[VideoJob], downloads):
    return decode_videos(config, jobs, downloads)


@task(name="feature", cache_policy=NO_CACHE, retries=1)
def feature_task(config: ExtractConfig, decoded, feature: str):
    return embed_frames(config, decoded, feature)


@task(name="write", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def write_task(config: ExtractConfig, batch) -> int:
    return write_embeddings(config, batch)


@task(name="cleanup", cache_policy=NO_CACHE)
def cleanup_task(config: ExtractConfig, downloads, *_written) -> None:
    cleanup_videos(config, downloads)


@task(name="statistics", cache_policy=NO_CACHE, retries=1)
def stats_task(config: ExtractConfig) -> dict[str, Any]:
    return finish_extraction(config)


@flow(name="extract-features", log_prints=True)
def extract_features(config: dict[str, Any] | None = None, config_file: str | None = None,
                     dask_address: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the extraction; `config` is an ExtractConfig as a dict (what a deployment's parameters hold)."""
    if config_file:
        cfg = ExtractConfig.from_yaml(config_file, **{**(config or {}), **overrides})
    else:
        cfg = ExtractConfig.from_dict({**(config or {}), **overrides})
    if dask_address:
        return _run_on_dask(cfg, dask_address)
    return _run(cfg)


def _run(cfg: ExtractConfig) -> dict[str, Any]:
    with StoreLock(cfg.store, purpose="extract-features flow"):  # one writer per store for the whole run
        return _run_locked(cfg)


def _run_locked(cfg: ExtractConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan = plan_task(cfg)
    report = ExtractionReport(clips=plan.n_clips, new_clips=plan.new_clips, manifest_problems=plan.manifest_problems)
    audio = audio_task.submit(cfg, plan.audio_jobs, plan.audio_features)
    probe = probe_task.submit(cfg, plan.probe_jobs)
    batches = []
    for jobs in plan.video_batches(cfg.batch_clips):
        downloads = download_task.submit(cfg, jobs)
        decoded = decode_task.submit(cfg, jobs, downloads)
        writes = [write_task.submit(cfg, feature_task.submit(cfg, decoded, f)) for f in plan.video_features]
        cleanup = cleanup_task.submit(cfg, downloads, *writes)
        batches.append((downloads, decoded, writes, cleanup))
    report.add(audio.result())
    report.add(probe.result())
    for downloads, decoded, writes, cleanup in batches:
        cleanup.result()
        part = ExtractionReport()
        for feature, w in zip(plan.video_features, writes):
            part.video_computed[feature] = w.result()
        _count_downloads(part, downloads.result(), len(decoded.result()))
        report.add(part)
    stats_task(cfg)
    report.seconds = time.perf_counter() - t0
    get_run_logger().info("extraction done: %s", report.to_dict())
    return report.to_dict()


def _run_on_dask(cfg: ExtractConfig, address: str) -> dict[str, Any]:
    from prefect_dask import DaskTaskRunner

    # The same flow body, with tasks submitted to the given scheduler instead of local threads.
    return extract_features_on_dask.with_options(task_runner=DaskTaskRunner(address=address))(cfg.to_dict())


@flow(name="extract-features-dask")
def extract_features_on_dask(config: dict[str, Any]) -> dict[str, Any]:
    return _run(ExtractConfig.from_dict(config))
