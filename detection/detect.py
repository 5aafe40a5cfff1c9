"""`detect(run, inputs, out_dir)`: a trained run applied to recordings of any length, with or without video.

Per recording: its sound at 16 kHz (peak-normalised per 10-s window, as each training clip was), cut into the
model's windows (detection/windows.py); log-mel per window by the store's extractor, standardised with the store's
statistics; where the run has a visual stream and the file a picture, the frames each window spans (decoded once
per batch of windows at the store's rate and size, embedded once, rounded through the store's dtype and
standardised as training reads them). A window with no valid frame takes the audio-only path (availability 0,
audio weight 1: training/fusion.resolve_weights), as a clip without video does in training. Windows go through
the model in batches; frame probabilities are averaged over overlapping windows (weighted towards each window's
middle, detection/windows.py), then thresholded and
median-filtered as `avsed evaluate` tuned them (EBF1), and decoded into events clipped to the recording's end.

A bad input is one line (`Failure`) and the others still run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from detection.media import (DETECT_FORMAT, InputError, Source, collect_sources, decode_video_span, fetch_youtube,
                             probe_media, read_audio)
from detection.outputs import Recording, plot_timeline, write_recording_json, write_tsv
from detection.detector import Detector, load_detector
from detection.windows import WindowGrid, cut_windows, overlap_average, window_grid
from evaluation.postprocess import postprocess
from pipeline.download import DownloadConfig
from avsed.core.errors import AvsedError
from avsed.core.labels import LabelEncoder
from training.config import AUDIO_STREAM
from training.fusion import resolve_weights

DEFAULT_HOP_SECONDS = 5.0
DEFAULT_BATCH_WINDOWS = 16


@dataclass
class Failure:
    input: str
    message: str  # one line: the input, the cause, what to do

    def __str__(self) -> str:
        return self.message


@dataclass
class DetectionSummary:
    out_dir: Path
    recordings: list[Recording]
    failures: list[Failure]
    notes: list[str]
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 when at least one recording was processed (failures are reported line by line), else 2."""
        return 0 if self.recordings else 2


def _standardise(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean, std = stats
    return ((x - mean) / np.maximum(std, 1e-8)).astype(np.float32)


def _peak_normalise(windows: np.ndarray) -> np.ndarray:
    """Each window scaled to peak 1 (silent ones kept at 0), as pipeline.audio normalises a training clip."""
    peak = np.abs(windows).max(axis=1, keepdims=True)
    return np.where(peak > 0, windows / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def _round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Through the store's dtype and back: the model was trained on features stored that way (float16 OpenL3)."""
    return x.astype(dtype).astype(np.float32)


class _GateTap:
    """The learned gate's output of the last forward pass (a forward hook: no second pass to report it)."""

    def __init__(self, model: torch.nn.Module):
        self.weights: torch.Tensor | None = None
        gate = getattr(model, "gate", None)
        self.handle = gate.register_forward_hook(self._hook) if gate is not None else None

    def _hook(self, module, args, output) -> None:
        self.weights = output.detach()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _visual_batch(det: Detector, path: Path, grid: WindowGrid, windows: np.ndarray
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray, float]:
    """Per visual stream (B, 64, D) standardised embeddings (zeros where invalid) and (B, 64) key masks, the
    windows' availability (B,), and where the last valid frame of the span ends (s), from one decode of the span
    the windows cover."""
    timing = det.timing
    step = timing.clip_seconds / timing.video_frames
    first = np.rint(grid.start_seconds(windows) / step).astype(np.int64)  # nearest video frame to each start
    base = int(first[0])
    n_span = int(first[-1] - base) + timing.video_frames
    frames, valid = decode_video_span(path, base * step, n_span, timing, det.frame_size)
    index = (first - base)[:, None] + np.arange(timing.video_frames)[None, :]  # (B, 64) rows of the span
    mask = valid[index]
    available = mask.any(axis=1)
    used = np.flatnonzero(valid)
    visual, valids = [], []
    for name, extractor, dtype in zip(det.encoders[1:], det.visual_extractors, det.visual_dtypes):
        emb = np.zeros((n_span, extractor.dim), dtype=np.float32)
        if len(used):
            emb[used] = _round_to(np.asarray(extractor.embed(frames[used]), dtype=np.float32), dtype)
        data = emb[index]
        if name in det.stats and det.config.standardise_visual:
            data = _standardise(data, det.stats[name])
        data = np.nan_to_num(data, nan=0.0)
        data[~mask] = 0.0
        visual.append(torch.from_numpy(data))
        # windows without the stream attend to all (zero) frames, as in training: their weight 0 removes them
        valids.append(torch.from_numpy(mask | ~available[:, None]))
    picture_end = (base + int(used[-1]) + 1) * step if len(used) else 0.0
    return visual, valids, available, picture_end


@torch.no_grad()
def detect_recording(det: Detector, path: Path, name: str, hop_seconds: float = DEFAULT_HOP_SECONDS,
                     batch_windows: int = DEFAULT_BATCH_WINDOWS, progress: bool = False,
                     position: int = 1) -> Recording:
    """One recording's events; InputError (one line) if it cannot be used."""
    path = Path(path)
    info = probe_media(path)
    if not info.has_audio:
        what = "a picture but no sound" if info.has_video else "neither sound nor picture"
        raise InputError(f"{path}: the file has {what}; the model detects from the sound (the video only helps "
                         f"it): give the recording with its sound track")
    waveform, duration, warnings = read_audio(path, det.timing)
    grid = window_grid(det.timing, duration, hop_seconds)
    use_video = det.uses_video and info.has_video
    n_streams = len(det.encoders)
    probs = np.zeros((grid.n_windows, grid.window_frames, len(det.classes)), dtype=np.float32)
    weights = np.zeros((grid.n_windows, n_streams), dtype=np.float32)
    video = np.zeros(grid.n_windows, dtype=bool)
    video_seconds = 0.0  # of picture seen (up to its last decoded frame)
    tap = _GateTap(det.model)
    device = next(det.model.parameters()).device
    bar = tqdm(total=grid.n_windows, desc=f"windows {name}"[:40], unit="window", leave=False, position=position,
               disable=not progress)
    try:
        for s in range(0, grid.n_windows, batch_windows):
            windows = np.arange(s, min(s + batch_windows, grid.n_windows))
            audio = _peak_normalise(cut_windows(waveform, grid, windows))
            logmel = det.audio_extractor.extract(audio, det.timing)  # (B, 512, 64) in one pass
            logmel = np.nan_to_num(_standardise(logmel, det.stats[AUDIO_STREAM]), nan=0.0, posinf=0.0, neginf=0.0)
            b = len(windows)
            if n_streams > 1 and use_video:
                visual, valids, available, picture_end = _visual_batch(det, path, grid, windows)
                video_seconds = max(video_seconds, min(picture_end, duration))
            else:  # no picture (or the visual stream's weights are unavailable): zeros, availability 0
                frames = det.timing.video_frames
                visual = [torch.zeros(b, frames, int(d)) for d in _visual_dims(det)]
                valids = [torch.ones(b, frames, dtype=torch.bool) for _ in visual]
                available = np.zeros(b, dtype=bool)
            avail = torch.from_numpy(np.concatenate([np.ones((b, 1), bool), np.repeat(available[:, None],
                                                                                      n_streams - 1, axis=1)], axis=1))
            w = resolve_weights(det.base_weights, avail)
            frame_logits, _ = det.model(torch.from_numpy(logmel).to(device), [v.to(device) for v in visual],
                                        [v.to(device) for v in valids], w.to(device))
            probs[windows] = torch.sigmoid(frame_logits.float()).cpu().numpy()
            used = tap.weights if tap.weights is not None else w
            weights[windows] = (used.mean(dim=1) if used.dim() == 3 else used).float().cpu().numpy()
            video[windows] = available
            bar.update(b)
    finally:
        bar.close()
        tap.close()
    timeline = overlap_average(probs, grid)
    binary = postprocess(timeline[None], det.thresholds, det.filter_sizes)[0]
    events = LabelEncoder(det.classes, grid.recording_timing()).decode_strong(binary)
    events = [e for e in events if e.offset > e.onset]
    return Recording(name, path, duration, grid, timeline, events, weights, video, video_seconds, warnings)


def _visual_dims(det: Detector) -> list[int]:
    return [int(m.in_features) for m in det.model.visual_proj]


def _unique_names(sources: Sequence[Source]) -> list[str]:
    """Output file stems: the input's name without its extension, numbered where two inputs share one."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        stem = Path(s.name).stem if s.path is not None and s.youtube_id is None else s.name
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append(stem if k == 0 else f"{stem}-{k + 1}")
    return out


def detect(run: str | Path, inputs: Sequence[str], out_dir: str | Path, hop_seconds: float = DEFAULT_HOP_SECONDS,
           threshold: float | None = None, batch_windows: int = DEFAULT_BATCH_WINDOWS,
           download: DownloadConfig | None = None, plots: bool = True, progress: bool = True,
           device: str = "cpu", echo: Callable[[str], None] | None = None) -> DetectionSummary:
    """Run the trained `run` on every input; write `detections.tsv`, and per recording `<name>.json` and
    `<name>.png` into `out_dir`. `echo` gets the summary line of each recording and each failure's line as they
    come (the CLI prints them). A run that cannot detect raises DetectorError (AvsedError)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda line: None)
    det = load_detector(run, threshold, device)
    for note in det.notes:
        say(f"note: {note}")
    sources, problems = collect_sources(list(inputs))
    failures = [Failure(p.split(":", 1)[0], p) for p in problems]
    config = download or DownloadConfig()
    if config.format == DownloadConfig().format:  # extraction's default fetches no sound: detection needs it
        config = config.model_copy(update={"format": DETECT_FORMAT})
    failures += [Failure(p.split(":", 1)[0], p)
                 for p in fetch_youtube(sources, out / "downloads", config, progress=progress)]
    for f in failures:
        say(f"skipped: {f.message}")
    recordings: list[Recording] = []
    todo = [(s, n) for s, n in zip(sources, _unique_names(sources)) if s.path is not None]
    for source, stem in tqdm(todo, desc="recordings", unit="file", disable=not progress or len(todo) < 2,
                             position=0):
        try:
            rec = detect_recording(det, source.path, source.name, hop_seconds, batch_windows, progress)
        except AvsedError as exc:
            failure = Failure(str(source.path), " ".join(str(exc).split()))
            failures.append(failure)
            say(f"skipped: {failure.message}")
            continue
        rec.outputs["json"] = write_recording_json(rec, det, out / f"{stem}.json")
        if plots:
            rec.outputs["png"] = plot_timeline(rec, det, out / f"{stem}.png")
        recordings.append(rec)
        extra = "".join(f" (warning: {w})" for w in rec.warnings)
        say(rec.summary() + extra)
    write_tsv(recordings, out / "detections.tsv")
    return DetectionSummary(out, recordings, failures, det.notes, time.perf_counter() - t0)
