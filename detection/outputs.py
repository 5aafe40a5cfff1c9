"""What `avsed detect` writes: DESED TSV of every recording's events, a JSON per recording (events, windows and
the interpolation weights each window used, the post-processing applied) and a PNG timeline per recording (a row
per class: its probability curve, threshold and detected events; the windows that had video shaded)."""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from avsed.core.labels import Event  # noqa: E402
from detection.windows import WindowGrid  # noqa: E402
from evaluation.export import HEADER  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from detection.detector import Detector


@dataclass
class Recording:
    """One recording's detections and what produced them."""

    name: str
    path: Path
    duration: float
    grid: WindowGrid
    frame_probs: np.ndarray  # (frames, C) overlap-averaged
    events: list[Event]
    window_weights: np.ndarray  # (windows, S) interpolation weights used (a learned gate's: mean over frames)
    window_video: np.ndarray  # (windows,) bool: the window had video
    video_seconds: float  # of picture used (to its last decoded frame; 0 without a picture or a visual stream)
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for e in self.events:
            counts[e.label] = counts.get(e.label, 0) + 1
        found = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"
        with_video = int(self.window_video.sum())
        return (f"{self.name}: {self.duration:.1f} s, {self.grid.n_windows} window(s) ({with_video} with video), "
                f"{len(self.events)} event(s): {found}")



def tsv_lines(rec: "Recording") -> list[str]:
    return [f"{rec.name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}\n" for e in rec.events]


def write_tsv(recordings: list["Recording"], path: Path) -> Path:
    """DESED's `filename onset offset event_label`, recordings in input order, events by onset."""
    path.write_text(HEADER + "".join(line for rec in recordings for line in tsv_lines(rec)))
    return path


def recording_dict(rec: "Recording", det: "Detector") -> dict:
    grid = rec.grid
    starts = grid.start_seconds()
    return {
        "filename": rec.name, "path": str(rec.path), "duration": round(rec.duration, 3),
        "video_seconds": round(rec.video_seconds, 3), "run": str(det.run_dir), "encoders": det.encoders,
        "learned_weights": det.learned, "hop_seconds": round(grid.hop_frames * grid.frame_seconds, 4),
        "window_seconds": det.timing.clip_seconds, "frame_seconds": grid.frame_seconds,
        "postprocessing": det.postprocessing, "warnings": rec.warnings,
        "events": [{"onset": round(e.onset, 3), "offset": round(e.offset, 3), "event_label": e.label}
                   for e in rec.events],
        "windows": [{"start": round(float(t), 3), "end": round(float(t) + det.timing.clip_seconds, 3),
                     "video": bool(v), "weights": {n: round(float(x), 4) for n, x in zip(det.encoders, w)}}
                    for t, v, w in zip(starts, rec.window_video, rec.window_weights)],
    }


def write_recording_json(rec: "Recording", det: "Detector", path: Path) -> Path:
    path.write_text(json.dumps(recording_dict(rec, det), indent=1))
    return path


def plot_timeline(rec: "Recording", det: "Detector", path: Path) -> Path:
    """A row per class: probability curve (0..1 within the row), its threshold, the detected events as bars;
    windows with video shaded along the bottom strip."""
    classes = det.classes
    n = len(classes)
    t = (np.arange(rec.frame_probs.shape[0]) + 0.5) * rec.grid.frame_seconds
    width = float(np.clip(4 + rec.duration / 6, 8, 24))
    fig, ax = plt.subplots(figsize=(width, 0.55 * n + 1.6))
    for c, label in enumerate(classes):
        y0 = n - 1 - c
        ax.axhline(y0, color="0.85", lw=0.5)
        bars = [(e.onset, e.offset - e.onset) for e in rec.events if e.label == label]
        if bars:
            ax.broken_barh(bars, (y0 + 0.05, 0.85), facecolors="tab:orange", alpha=0.45)
        ax.plot(t, y0 + 0.05 + 0.85 * rec.frame_probs[:, c], color="tab:blue", lw=0.8)
        ax.plot([0, rec.duration], [y0 + 0.05 + 0.85 * det.thresholds[c]] * 2, color="tab:red", lw=0.5, ls=":")
    for start, has in zip(rec.grid.start_seconds(), rec.window_video):
        if has:
            ax.axvspan(start, min(start + det.timing.clip_seconds, rec.duration), ymin=0, ymax=0.02, color="tab:green",
                       alpha=0.5, lw=0)
    ax.set_yticks(np.arange(n) + 0.5, list(reversed(classes)), fontsize=8)
    ax.set_ylim(0, n)
    ax.set_xlim(0, rec.duration)
    ax.set_xlabel("time (s)")
    with_video = int(rec.window_video.sum())
    ax.set_title(f"{rec.name}: {len(rec.events)} events, {with_video}/{rec.grid.n_windows} windows with video "
                 f"(green strip); probability (blue), threshold (red), events (orange)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
