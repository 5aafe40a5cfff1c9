"""Extraction as plain functions: plan -> audio features -> (download -> decode -> embed -> write) -> statistics.

`run_extraction` chains the stages in-process; the Prefect flow `extract-features` (flows/extract.py)
calls the very same stage functions as tasks. Every stage is idempotent and per-clip failures are
recorded (ledger / problems) instead of raised, so a bad clip never stops the run and a rerun
only does the work that is still missing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml
from tqdm.auto import tqdm

from features.base import AudioExtractor, FeatureExtractor, FrameExtractor, build_extractor, extractor_class
from pipeline.audio import AudioError, load_clip_audio
from pipeline.download import (NO_YOUTUBE_ID_MESSAGE, DownloadConfig, DownloadResult, download_clips,
                               probe_clips)
from pipeline.frames import VideoError, decode_frames
from pipeline.ledger import Ledger
from pipeline.labels import ClipTiming
from pipeline.manifest import YouTubeSegment, read_manifest
from pipeline.stats import update_feature_stats
from pipeline.store import FeatureStore, StoreLock


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs; serialisable so a flow run and a CLI run are the same run."""

    metadata: str
    audio_dir: str
    store: str
    features: tuple[str, ...] = ("logmel",)
    # Per-feature extractor settings, e.g. {"vgg16": {"weights_path": "...", "batch_size": 128}}.
    extractor_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    video_dir: str | None = None  # where downloaded clips go; default <store>.videos
    frame_size: int = 224
    recheck_missing: bool = False  # retry videos recorded as permanently missing
    recheck_available: bool = True  # probe cached clips' videos so newly vanished ones are recorded
    allow_random_weights: bool = False
    batch_clips: int = 16  # clips per video batch (one download/decode/embed/write round)
    # False: each clip's frames form their own network batches, so a resumed run writes bit-identical
    # embeddings. True: the frames of all clips of a video batch share network batches (fuller GPU batches;
    # results may differ in the last bit from a run with other batch boundaries).
    cross_clip_batches: bool = False
    compute_stats: bool = True

    @property
    def ledger_path(self) -> Path:
        return Ledger.path_for_store(self.store)

    @property
    def video_path(self) -> Path:
        return Path(self.video_dir) if self.video_dir else Path(str(self.store) + ".videos")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown extraction settings: {', '.join(sorted(unknown))}")
        if "download" in d and isinstance(d["download"], dict):
            known = {f.name for f in dataclasses.fields(DownloadConfig)}
            bad = set(d["download"]) - known
            if bad:
                raise ValueError(f"unknown download settings: {', '.join(sorted(bad))}")
            d["download"] = DownloadConfig(**d["download"])
        if "features" in d:
            d["features"] = tuple(d["features"])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ExtractConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


@dataclass(frozen=True)
class AudioJob:
    row: int
    clip_id: str
    audio_path: str


@dataclass(frozen=True)
class VideoJob:
    row: int
    clip_id: str
    segment: YouTubeSegment
    features: tuple[str, ...]  # video features still missing for this clip


@dataclass
class ExtractionPlan:
    n_clips: int
    new_clips: int
    audio_features: tuple[str, ...]
    video_features: tuple[str, ...]
    audio_jobs: list[AudioJob]
    video_jobs: list[VideoJob]
    probe_jobs: list[VideoJob]  # cached clips whose video is re-checked, not downloaded
    manifest_problems: list[str]

    def video_batches(self, size: int) -> list[list[VideoJob]]:
        return [self.video_jobs[i:i + size] for i in range(0, len(self.video_jobs), size)]


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
    videos_corrupt: int = 0
    newly_missing_cached: int = 0  # clips whose video vanished but whose features are kept
    video_computed: dict[str, int] = field(default_factory=dict)
    manifest_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, other: "ExtractionReport") -> None:
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a.get(k, 0) + v
            elif isinstance(a, list):
                a.extend(b)
            elif f.name not in ("clips", "new_clips"):
                setattr(self, f.name, a + b)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# --- plan ---------------------------------------------------------------------------------------

def plan_extraction(config: ExtractConfig, timing: ClipTiming = ClipTiming()) -> ExtractionPlan:
    """Read the manifest, grow the store, check provenance, and list the work still to do."""
    manifest = read_manifest(config.metadata, config.audio_dir)
    if not manifest.clips:
        raise ValueError(f"{config.metadata}: the manifest has no usable clips")
    store = FeatureStore.create_or_open(config.store, timing=timing)
    n_before = store.n_clips
    rows = store.add_clips(manifest.clips)
    extractors = {name: get_extractor(config, name) for name in config.features}
    for name, ex in extractors.items():
        if hasattr(ex, "load"):
            ex.load()  # missing weights fail here, before any work, with the expected path in the message
        store.ensure_feature(name, ex.frames(timing), ex.dim, ex.store_dtype, ex.provenance())
    audio_features = tuple(n for n, ex in extractors.items() if isinstance(ex, AudioExtractor))
    video_features = tuple(n for n, ex in extractors.items() if isinstance(ex, FrameExtractor))

    present = {name: store.present(name) for name in config.features}
    ledger = Ledger(config.ledger_path)
    try:
        audio_jobs = [AudioJob(r, c.clip_id, str(c.audio_path)) for c, r in zip(manifest.clips, rows)
                      if any(not present[f][r] for f in audio_features)]
        video_jobs: list[VideoJob] = []
        probe_jobs: list[VideoJob] = []
        for clip, row in zip(manifest.clips, rows):
            if not video_features:
                break
            if clip.segment is None:
                if ledger.get(clip.clip_id) is None:
                    ledger.record(clip.clip_id, None, "missing", "no_youtube_id", NO_YOUTUBE_ID_MESSAGE)
                continue
            todo = tuple(f for f in video_features if not present[f][row])
            if todo:
                if ledger.should_download(clip.clip_id, config.recheck_missing):
                    video_jobs.append(VideoJob(row, clip.clip_id, clip.segment, todo))
            elif config.recheck_available:
                entry = ledger.get(clip.clip_id)
                if entry is not None and entry.status == "available":
                    probe_jobs.append(VideoJob(row, clip.clip_id, clip.segment, ()))
        for problem in manifest.problems:
            ledger.record_problem(problem.clip_id or "", "manifest", str(problem))
    finally:
        ledger.close()
    return ExtractionPlan(store.n_clips, store.n_clips - n_before, audio_features, video_features,
                          audio_jobs, video_jobs, probe_jobs, [str(p) for p in manifest.problems])


# --- audio --------------------------------------------------------------------------------------

def extract_audio_features(config: ExtractConfig, jobs: Iterable[AudioJob], features: tuple[str, ...],
                           timing: ClipTiming = ClipTiming(), progress: bool = False) -> ExtractionReport:
    """Read, resample, normalise, extract and write; a bad audio file is recorded and skipped."""
    report = ExtractionReport()
    store = FeatureStore.open(config.store, mode="r+")
    present = {f: store.present(f) for f in features}
    ledger = Ledger(config.ledger_path)
    try:
        for job in tqdm(list(jobs), desc="audio features", unit="clip", disable=not progress):
            try:
                audio = load_clip_audio(job.audio_path, job.clip_id, timing)
            except AudioError as exc:
                ledger.record_problem(job.clip_id, "audio", exc.cause)
                report.audio_failed += 1
                continue
            for warning in audio.warnings:
                ledger.record_problem(job.clip_id, "audio", f"warning: {warning}")
            store.set_durations([job.row], [audio.duration])
            for name in features:
                if present[name][job.row]:
                    continue
                ex = get_extractor(config, name)
                data = ex.extract(audio.waveform, timing)
                mask = np.zeros(data.shape[0], dtype=bool)
                mask[: timing.valid_mel_frames(audio.duration) if data.shape[0] == timing.mel_frames
                     else data.shape[0]] = True
                store.write_row(name, job.row, data, mask)
                report.audio_computed[name] = report.audio_computed.get(name, 0) + 1
    finally:
        ledger.close()
    return report


# --- video --------------------------------------------------------------------------------------

@dataclass
class DecodedClip:
    job: VideoJob
    frames: np.ndarray  # (T, S, S, 3) uint8
    valid: np.ndarray  # (T,) bool


def download_videos(config: ExtractConfig, jobs: list[VideoJob], progress: bool = False) -> list[DownloadResult]:
    """Download each clip's time range (concurrently); every outcome goes into the ledger."""
    results = []
    with Ledger(config.ledger_path) as ledger:
        for r in download_clips([(j.clip_id, j.segment) for j in jobs], config.video_path, config.download,
                                progress=progress):
            ledger.record(r.clip_id, r.youtube_id, r.status, r.reason, r.message)
            results.append(r)
    order = {j.clip_id: i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.clip_id])  # deterministic order for the batch that follows


def decode_videos(config: ExtractConfig, jobs: list[VideoJob], downloads: list[DownloadResult],
                  timing: ClipTiming = ClipTiming()) -> list[DecodedClip]:
    """Frames of every downloaded clip; an undecodable file marks the video missing with reason `corrupt`."""
    by_id = {j.clip_id: j for j in jobs}
    decoded: list[DecodedClip] = []
    ledger = Ledger(config.ledger_path)
    try:
        for r in downloads:
            if r.status != "available" or r.path is None:
                continue
            try:
                frames = decode_frames(r.path, r.clip_id, timing, size=config.frame_size, start=r.clip_start)
            except VideoError as exc:
                ledger.record(r.clip_id, r.youtube_id, "missing", exc.reason, str(exc))
                _remove_video(config, r.path, force=True)
                continue
            decoded.append(DecodedClip(by_id[r.clip_id], frames.frames, frames.valid))
    finally:
        ledger.close()
    return decoded


@dataclass
class EmbeddedBatch:
    feature: str
    rows: list[int]
    data: list[np.ndarray]
    masks: list[np.ndarray]


def embed_frames(config: ExtractConfig, decoded: list[DecodedClip], feature: str) -> EmbeddedBatch:
    """Embeddings of every decoded clip that still lacks `feature`.

    By default each clip's 64 frames go through the network as their own batch(es): CPU and GPU kernels may
    round differently for other batch sizes, and a clip's embedding must not depend on which other clips
    shared its batch, so that a resumed run writes exactly what an uninterrupted one would. 64 frames of a
    224 px image CNN are a sizeable batch already; `cross_clip_batches` pools the frames of all clips instead.
    """
    todo = [d for d in decoded if feature in d.job.features]
    if not todo:
        return EmbeddedBatch(feature, [], [], [])
    ex = get_extractor(config, feature)
    # Padded frames (beyond a short video's end) are embedded as the black frames they are, but masked out.
    if config.cross_clip_batches:
        emb = ex.embed(np.concatenate([d.frames for d in todo], axis=0))
        t = todo[0].frames.shape[0]
        data = [emb[i * t:(i + 1) * t] for i in range(len(todo))]
    else:
        data = [ex.embed(d.frames) for d in todo]
    return EmbeddedBatch(feature, [d.job.row for d in todo], data, [d.valid for d in todo])


def write_embeddings(config: ExtractConfig, batch: EmbeddedBatch) -> int:
    store = FeatureStore.open(config.store, mode="r+")
    for row, data, mask in zip(batch.rows, batch.data, batch.masks):
        store.write_row(batch.feature, row, data, mask)
    return len(batch.rows)


def _remove_video(config: ExtractConfig, path: Path | None, force: bool = False) -> None:
    if path is not None and (force or not config.download.keep_videos):
        Path(path).unlink(missing_ok=True)


def cleanup_videos(config: ExtractConfig, downloads: list[DownloadResult]) -> None:
    for r in downloads:
        if r.status == "available":
            _remove_video(config, r.path)


def process_video_batch(config: ExtractConfig, jobs: list[VideoJob], video_features: tuple[str, ...],
                        timing: ClipTiming = ClipTiming()) -> ExtractionReport:
    """download -> decode -> embed -> write for one batch of clips."""
    report = ExtractionReport()
    t0 = time.perf_counter()
    downloads = download_videos(config, jobs)
    t1 = time.perf_counter()
    decoded = decode_videos(config, jobs, downloads, timing)
    t2 = time.perf_counter()
    for feature in video_features:
        batch = embed_frames(config, decoded, feature)
        report.video_computed[feature] = report.video_computed.get(feature, 0) + write_embeddings(config, batch)
    t3 = time.perf_counter()
    cleanup_videos(config, downloads)
    report.stage_seconds = {"download": t1 - t0, "decode": t2 - t1, "embed+write": t3 - t2}
    _count_downloads(report, downloads, len(decoded))
    return report


def _count_downloads(report: ExtractionReport, downloads: list[DownloadResult], n_decoded: int) -> None:
    status = Counter(r.status for r in downloads)
    report.videos_downloaded += status["available"]
    report.videos_missing += status["missing"]
    report.videos_failed += status["failed"]
    report.videos_corrupt += status["available"] - n_decoded


def probe_cached_videos(config: ExtractConfig, jobs: list[VideoJob], progress: bool = False) -> ExtractionReport:
    """Re-check that videos whose features are cached still exist; vanished ones are recorded, features kept."""
    report = ExtractionReport()
    if not jobs:
        return report
    results = probe_clips([(j.clip_id, j.segment) for j in jobs], config.download, progress)
    ledger = Ledger(config.ledger_path)
    try:
        for r in results:
            if r.status == "missing":
                ledger.record(r.clip_id, r.youtube_id, "missing", r.reason,
                              f"{r.message} (features extracted earlier are kept)")
                report.newly_missing_cached += 1
            elif r.status == "available":
                ledger.record(r.clip_id, r.youtube_id, "available", None, r.message)
            # a transient failure while probing leaves the entry as it was
    finally:
        ledger.close()
    return report


def finish_extraction(config: ExtractConfig) -> dict[str, Any]:
    """Per-bin statistics of every feature over the training partitions' real frames (dask over the store):
    training standardises log-mel (paper 3.1.2) and, by default, the visual embeddings with them."""
    with StoreLock(config.store, purpose="extract"), FeatureStore.create_or_open(config.store) as store:
        out = _update_stats(config, store) if config.compute_stats else {}
        store.consolidate()  # last write of a run: xarray.open_zarr(path) then sees the whole store
        return out


def _update_stats(config: ExtractConfig, store: FeatureStore) -> dict[str, Any]:
    out = {}
    for feature in config.features:
        if feature in store.feature_names() and store.present(feature).any():
            try:
                out[feature] = update_feature_stats(store, feature)
            except ValueError as exc:  # no training rows yet: nothing to standardise with
                out[feature] = {"error": str(exc)}
    return out


# --- in-process driver --------------------------------------------------------------------------

def run_extraction(config: ExtractConfig, progress: bool = True, timing: ClipTiming = ClipTiming()) -> ExtractionReport:
    """The whole extraction in this process (the flow runs the same stages as Prefect tasks)."""
    with StoreLock(config.store, purpose="extract"):  # one writer per store for the whole run
        return _run_extraction(config, progress, timing)


def _run_extraction(config: ExtractConfig, progress: bool, timing: ClipTiming) -> ExtractionReport:
    t0 = time.perf_counter()
    plan = plan_extraction(config, timing)
    report = ExtractionReport(clips=plan.n_clips, new_clips=plan.new_clips,
                              manifest_problems=list(plan.manifest_problems))
    t1 = time.perf_counter()
    report.add(extract_audio_features(config, plan.audio_jobs, plan.audio_features, timing, progress))
    t2 = time.perf_counter()
    report.add(probe_cached_videos(config, plan.probe_jobs, progress))
    t_probe = time.perf_counter()
    stage = Counter()
    batches = plan.video_batches(config.batch_clips)
    for batch in tqdm(batches, desc="video batches", unit="batch", disable=not progress or not batches):
        part = process_video_batch(config, batch, plan.video_features, timing)
        stage.update(part.stage_seconds)
        part.stage_seconds = {}
        report.add(part)
    t3 = time.perf_counter()
    finish_extraction(config)
    t4 = time.perf_counter()
    report.stage_seconds = {"plan": t1 - t0, "audio": t2 - t1, "re-check": t_probe - t2, **dict(stage),
                            "stats": t4 - t3}
    report.seconds = t4 - t0
    return report


def clear_videos(config: ExtractConfig) -> None:
    """Delete the download folder (kept videos are a cache, never the source of truth)."""
    shutil.rmtree(config.video_path, ignore_errors=True)
