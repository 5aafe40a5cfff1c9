"""What a learned gate (training/gate.py) does with each clip: its interpolation weights, written as a CSV (clip,
partition, video kind, one weight per stream) and plotted against what the video shows.

The video kind comes from the store (a clip without a visual stream is `absent`) and, where a truth file says
more (the synthetic set's truth/videos.tsv: `content`, `still` image or `black` screen), from that; a video
whose kind no file tells is `video`. A per-frame gate's clip weights are its mean over the clip's 64 frames
(the class token's weights are left out). The summary per kind (clips, mean and std of the visual weight) goes
into the evaluation's result.json, so that seeds can be compared without the CSVs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from avsed.core.errors import AvsedError
from training.fusion import resolve_weights
from training.predict import StoreClips, TrainedModel, load_store_clips, load_trained

# The order of the plot and the summary: videos that show the events, then videos that show nothing useful.
VIDEO_KIND_ORDER = ("content", "video", "still", "black", "absent")
UNINFORMATIVE = ("still", "black")
# What a truth file may say a clip's video shows (corrupt: the synthetic set's failure cases only).
VIDEO_KINDS = ("content", "still", "black", "absent", "corrupt")


@dataclass
class ClipWeights:
    """The interpolation weights a model used on each clip of some partitions."""

    clip_ids: np.ndarray  # (n,) str
    partitions: np.ndarray  # (n,) str
    video_kinds: np.ndarray  # (n,) str: content | still | black | video | absent
    encoders: list[str]
    weights: np.ndarray  # (n, S) per clip (a per-frame gate: the mean over the clip's frames)
    frame_weights: np.ndarray | None  # (n, T, S) per-frame gates only
    mode: str  # the gate's mode: clip | frame (none: the given weights)

    @property
    def visual_weight(self) -> np.ndarray:
        """(n,) the weight of all visual streams together (1 minus the audio weight)."""
        return self.weights[:, 1:].sum(axis=1)


def video_kinds(clip_ids: Sequence[str], video_available: np.ndarray, truth: dict[str, str] | None) -> np.ndarray:
    """Per clip: `absent` where the store has no video; else the truth file's kind, or `video` if it has none."""
    truth = truth or {}
    out = []
    for clip, present in zip(clip_ids, video_available):
        kind = truth.get(str(clip), "video") if present else "absent"
        out.append("video" if present and kind in ("absent", "corrupt") else kind)
    return np.array(out, dtype=object)


class VideoTruthError(AvsedError, ValueError):
    """A video truth file that cannot be read (the message names the file and what to do)."""


def read_video_truth(path: str | Path) -> dict[str, str]:
    """clip_id -> what its video shows (content, still, black, absent, corrupt) from a set's truth/videos.tsv.

    Clips that the file does not list (audio-only soundscapes) have no video. Evaluation reads this to judge what
    a learned gate does with black screens and still images (evaluation/gate_weights.py)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except FileNotFoundError:
        raise VideoTruthError(f"{path}: no video truth file; give a TSV of clip_id and kind (as the "
                              f"truth/videos.tsv that `avsed synth` writes)") from None
    if rows and not {"clip_id", "kind"} <= set(rows[0]):
        raise VideoTruthError(f"{path}: not a video truth file (needs the columns clip_id and kind, has "
                              f"{sorted(rows[0])}); give the truth/videos.tsv that `avsed synth` wrote")
    bad = sorted({r["kind"] for r in rows} - set(VIDEO_KINDS))
    if bad:
        raise VideoTruthError(f"{path}: unknown video kinds {bad} (known: {', '.join(VIDEO_KINDS)})")
    return {r["clip_id"]: r["kind"] for r in rows}


def learned_weights(checkpoint: str | Path | TrainedModel, store: str | Path | Sequence[StoreClips],
                    partitions: Sequence[str] = ("eval",), video_truth: Mapping[str, str] | None = None,
                    device: str = "auto", use_teacher: bool = False, batch_size: int = 256) -> ClipWeights:
    """Run the checkpoint's encoders and gate over the partitions' clips with its default inference weights as
    the prior (what `predict` gives the model) and return the weights it interpolates with, in store order.
    Given a loaded model and clip sets (training/predict.py), neither is read again (device, use_teacher and
    partitions are then theirs)."""
    model = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained(checkpoint, device, use_teacher)
    sets = list(store) if not isinstance(store, (str, Path)) else [load_store_clips(model, store, partitions)]
    config, network, dev = model.config, model.network, model.device
    prior = torch.tensor(config.default_inference_weights(), dtype=torch.float32)
    chunks = []
    with torch.no_grad():
        for clips in sets:
            t, n = clips.clips.tensors, len(clips)
            for s in range(0, n, batch_size):
                b = t.take(torch.arange(s, min(s + batch_size, n))).to(dev)
                w = network.interpolation_weights(b.logmel.float(), [v.float() for v in b.visual], b.visual_valid,
                                                  resolve_weights(prior.to(dev), b.available))
                chunks.append(w.float().cpu())
    order = np.argsort(np.concatenate([c.clips.rows for c in sets]), kind="stable")  # the store's order
    weights = torch.cat(chunks).numpy()[order]
    frame_weights = None
    if weights.ndim == 3:  # per decoder position: the frames, then the class token
        frame_weights = weights[:, :-1]
        weights = frame_weights.mean(axis=1)
    available = np.concatenate([c.clips.tensors.available.cpu().numpy() for c in sets])[order]
    ids = np.concatenate([c.clips.clip_ids for c in sets])[order]
    partition = np.concatenate([c.clips.partitions for c in sets])[order]
    kinds = video_kinds(ids, available[:, 1:].any(axis=1), video_truth)
    return ClipWeights(ids, partition, kinds, list(config.encoders), weights, frame_weights, config.model.gate.mode)


def kind_summary(weights: ClipWeights, partition: str | None = "eval") -> dict[str, dict[str, float]]:
    """Per video kind (of one partition, or all with None): clips, mean and std of the visual weight."""
    keep = np.ones(len(weights.clip_ids), dtype=bool) if partition is None else weights.partitions == partition
    out = {}
    for kind in VIDEO_KIND_ORDER:
        v = weights.visual_weight[keep & (weights.video_kinds == kind)]
        if len(v):
            out[kind] = {"clips": int(len(v)), "visual_weight_mean": float(v.mean()),
                         "visual_weight_std": float(v.std(ddof=1)) if len(v) > 1 else float("nan")}
    return out


def write_weights_csv(weights: ClipWeights, path: str | Path) -> Path:
    """One row per clip: clip, partition, video kind, the weight of each stream (named by its encoder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clip", "partition", "video_kind"] + [f"weight_{e}" for e in weights.encoders])
        for clip, part, kind, w in zip(weights.clip_ids, weights.partitions, weights.video_kinds, weights.weights):
            writer.writerow([clip, part, kind] + [f"{x:.6f}" for x in w])
    return path


def plot_weights_by_kind(weights: ClipWeights, path: str | Path, title: str = "",
                         partition: str | None = "eval") -> Path:
    """Each clip's visual weight (jittered points) with the mean ± std per video kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    summary = kind_summary(weights, partition)
    keep = np.ones(len(weights.clip_ids), dtype=bool) if partition is None else weights.partitions == partition
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    rng = np.random.default_rng(0)
    for x, kind in enumerate(summary):
        v = weights.visual_weight[keep & (weights.video_kinds == kind)]
        ax.scatter(x + rng.uniform(-0.18, 0.18, len(v)), v, s=9, alpha=0.5,
                   color="tab:red" if kind in UNINFORMATIVE else "tab:blue")
        s = summary[kind]
        ax.errorbar(x + 0.3, s["visual_weight_mean"], yerr=np.nan_to_num(s["visual_weight_std"]), fmt="o",
                    color="black", capsize=3)
    ax.set_xticks(range(len(summary)), [f"{k}\n({summary[k]['clips']} clips)" for k in summary])
    ax.set_ylabel("visual weight (1 - audio weight)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title or f"learned interpolation weights ({weights.mode})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_gate_outputs(weights: ClipWeights, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """learned_weights.csv (every clip) and learned_weights.png (the eval clips by video kind) in out_dir."""
    out_dir = Path(out_dir)
    return {"csv": write_weights_csv(weights, out_dir / "learned_weights.csv"),
            "png": plot_weights_by_kind(weights, out_dir / "learned_weights.png", title)}
