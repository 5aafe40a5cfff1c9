"""PNG plots of evaluation results: PSD-ROC curves, class-wise F1 bars and an example clip."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.evaluate import EvaluationResult  # noqa: E402
from avsed.core.labels import ClipTiming  # noqa: E402


def plot_psd_roc(results: dict[str, EvaluationResult], path: str | Path, set_name: str = "all") -> Path:
    """PSD-ROC (effective TPR against eFPR per hour) of each named result, one panel per scenario."""
    scenarios = sorted({s for r in results.values() for s in r.sets[set_name].psd_roc})
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4), squeeze=False)
    for ax, sc in zip(axes[0], scenarios):
        for name, r in results.items():
            roc = r.sets[set_name].psd_roc[sc]
            x, y = np.asarray(roc["efpr"]), np.asarray(roc["etpr"])
            max_x = roc["scenario"]["max_efpr"]
            keep = x <= max_x
            ax.step(np.r_[x[keep], max_x], np.r_[y[keep], y[keep][-1]], where="post",
                    label=f"{name} ({r.sets[set_name].metrics[sc]:.3f})")
        ax.set(title=sc.upper(), xlabel="eFPR per hour", ylabel="eTPR", xlim=(0, None), ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class(result: EvaluationResult, path: str | Path, set_name: str = "all") -> Path:
    """Class-wise CBF1 / SBF1 / EBF1 as grouped bars."""
    per_class = result.sets[set_name].per_class
    classes = list(result.classes)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.27
    for k, metric in enumerate(("cbf1", "sbf1", "ebf1")):
        vals = [np.nan if per_class[metric].get(c) is None else per_class[metric][c] for c in classes]
        ax.bar(np.arange(len(classes)) + (k - 1) * width, vals, width, label=metric.upper())
    ax.set_xticks(np.arange(len(classes)), [c.replace("_", " ") for c in classes], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="F1", ylim=(0, 1), title=f"Class-wise F1 ({set_name})")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_example_clip(logmel: np.ndarray, truth: np.ndarray, probs: np.ndarray, video_mask: np.ndarray,
                      classes: tuple[str, ...], path: str | Path, timing: ClipTiming = ClipTiming(),
                      title: str = "") -> Path:
    """Log-mel (mel_frames, mels), ground truth and probabilities (frames, C), video availability (video_frames,)."""
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 3, 0.5]})
    end = timing.clip_seconds
    axes[0].imshow(np.asarray(logmel).T, origin="lower", aspect="auto", extent=(0, end, 0, logmel.shape[1]))
    axes[0].set(ylabel="mel bin", title=title or "example clip")
    for ax, data, name in ((axes[1], truth, "ground truth"), (axes[2], probs, "predicted probability")):
        ax.imshow(np.asarray(data, dtype=float).T, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="magma",
                  extent=(0, end, -0.5, len(classes) - 0.5), interpolation="nearest")
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_ylabel(name, fontsize=8)
    axes[3].imshow(np.asarray(video_mask, dtype=float)[None], aspect="auto", vmin=0, vmax=1, cmap="Greens",
                   extent=(0, end, 0, 1), interpolation="nearest")
    axes[3].set(yticks=[], xlabel="time (s)", ylabel="video")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
