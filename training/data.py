"""Training data over the feature store: every needed array loaded once into (GPU) memory as tensors.

`load_clips` reads log-mel (standardised per bin with the store's statistics), the requested visual
embeddings (standardised per dimension, by default) with their frame masks and clip-level availability,
strong frame targets (64 per 10 s, from the store's events through the shared label encoder), weak clip targets and the supervision kind of each clip.
A training batch (32 strong + 32 weak + 64 unlabelled by default, drawn on the device by training/draws.py) is
one index vector, so a step is a handful of batched `index_select`s on resident tensors: no per-sample Python,
no worker processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from avsed.core.errors import AvsedError
from avsed.core.labels import LabelEncoder
from avsed.core.store import FeatureStore
from training.config import AUDIO_STREAM

STRONG, WEAK, UNLABELLED = 0, 1, 2
KIND_CODES = {"strong": STRONG, "weak": WEAK, "unlabelled": UNLABELLED}


class TrainingDataError(AvsedError, RuntimeError):
    """The store cannot provide what training asks for (a feature, statistics, clips of a kind)."""


@dataclass
class Batch:
    """Tensors of a set of clips (a whole partition or one training batch); first axis = clip."""

    logmel: torch.Tensor  # (n, 512, 64) standardised
    visual: list[torch.Tensor]  # per visual stream (n, 64, D), zeros where missing or padded
    visual_valid: list[torch.Tensor]  # per visual stream (n, 64) bool key mask; all True where the stream is missing
    available: torch.Tensor  # (n, S) bool, column 0 (audio) always True
    strong: torch.Tensor  # (n, 64, C) frame targets (zeros unless kind == strong)
    weak: torch.Tensor  # (n, C) clip targets
    kind: torch.Tensor  # (n,) int64: 0 strong, 1 weak, 2 unlabelled

    def take(self, idx: torch.Tensor) -> "Batch":
        def sel(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx)
        return Batch(sel(self.logmel), [sel(v) for v in self.visual], [sel(v) for v in self.visual_valid],
                     sel(self.available), sel(self.strong), sel(self.weak), sel(self.kind))

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: ([t.to(device) for t in getattr(self, f.name)] if isinstance(getattr(self, f.name), list)
                                 else getattr(self, f.name).to(device)) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.logmel.shape[0])


@dataclass
class ClipSet:
    """A loaded set of clips: the tensors plus what identifies them in the store."""

    rows: np.ndarray  # store rows
    clip_ids: np.ndarray
    partitions: np.ndarray
    durations: np.ndarray
    tensors: Batch
    encoders: list[str]
    provenance: dict[str, dict]
    identity: dict[str, Any] = field(default_factory=dict)  # what was loaded (store_identity): kept in checkpoints


def _digest(*arrays: np.ndarray | Sequence[str]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else "\n".join(a).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def store_identity(clip_ids: Sequence[str], partitions: np.ndarray, kind: np.ndarray, weak: np.ndarray,
                   strong: np.ndarray, available: dict[str, np.ndarray],
                   stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """What a run trains on, small enough for every checkpoint: the clip set (count per partition and a digest of
    the ids), per visual stream the clips with video (count and digest), a digest of the targets and supervision
    kinds, and of the standardisation statistics. Feature rows are never rewritten (avsed/core/store.py), so with
    the features' provenance this pins the training tensors without hashing the features themselves."""
    names, counts = np.unique(np.asarray(partitions, dtype=str), return_counts=True)
    return {"clips": len(clip_ids), "partitions": {str(p): int(c) for p, c in zip(names, counts)},
            "clip_ids": _digest(list(clip_ids)),
            "video": {name: int(a.sum()) for name, a in available.items()},
            "video_rows": {name: _digest(np.packbits(a)) for name, a in available.items()},
            "labels": _digest(kind.astype(np.int64), weak.astype(np.float32), strong.astype(np.float32)),
            "statistics": {name: _digest(np.asarray(m, np.float32), np.asarray(sd, np.float32))
                           for name, (m, sd) in stats.items()}}


def identity_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two `store_identity`s, in words (empty: the same data)."""
    out = []
    if before.get("clip_ids") != now.get("clip_ids"):
        parts = {p: now["partitions"].get(p, 0) - before["partitions"].get(p, 0)
                 for p in sorted(set(before["partitions"]) | set(now["partitions"]))}
        moved = ", ".join(f"{p} {d:+d}" for p, d in parts.items() if d)
        out.append(f"training clips {before['clips']} -> {now['clips']}" + (f" ({moved})" if moved else
                                                                             " (other clips)"))
    same_clips = before.get("clip_ids") == now.get("clip_ids")
    for name in sorted(set(before.get("video", {})) | set(now.get("video", {}))):
        a, b = before.get("video", {}).get(name), now.get("video", {}).get(name)
        if a != b:
            out.append(f"clips with {name} {a} -> {b}")
        elif same_clips and before["video_rows"].get(name) != now["video_rows"].get(name):
            out.append(f"{name} on other clips")
    if same_clips and before.get("labels") != now.get("labels"):
        out.append("labels or supervision kinds")
    changed = [n for n in sorted(set(before.get("statistics", {})) | set(now.get("statistics", {})))
               if before.get("statistics", {}).get(n) != now.get("statistics", {}).get(n)]
    if changed:
        out.append(f"statistics of {', '.join(changed)}")
    return out


def _read_rows(store: FeatureStore, name: str, rows: np.ndarray, block: int = 512, desc: str = "") -> np.ndarray:
    """Rows of a feature array, read in contiguous blocks (zarr chunks are one clip each)."""
    arr = store.group[name]
    out = np.empty((len(rows),) + arr.shape[1:], dtype=arr.dtype)
    if len(rows) == 0:
        return out
    order = np.argsort(rows)
    sorted_rows = rows[order]
    starts = range(0, len(sorted_rows), block)
    for s in tqdm(starts, desc=f"load {name}{desc}", disable=len(rows) < 4 * block, leave=False):
        r = sorted_rows[s: s + block]
        chunk = np.asarray(arr[int(r[0]): int(r[-1]) + 1])
        out[order[s: s + block]] = chunk[r - r[0]]
    return out


def _standardise(data: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean, std = stats
    return ((data - mean) / np.maximum(std, 1e-8)).astype(np.float32)


def load_clips(store: FeatureStore, partitions: Sequence[str], encoders: Sequence[str],
               kinds: dict[str, str] | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, standardise_visual: bool = True) -> ClipSet:
    """Load every clip of `partitions` whose log-mel is present.

    kinds: partition -> supervision kind used for training (strong|weak|unlabelled); defaults to the store's
    `supervision` column. standardise_visual: standardise visual embeddings per dimension with the store's
    statistics (missing frames stay 0). Raises TrainingDataError if a feature or needed statistics are missing.
    """
    encoders = list(encoders)
    if not encoders or encoders[0] != AUDIO_STREAM:
        raise TrainingDataError(f"encoders must start with {AUDIO_STREAM!r}: {encoders}")
    names = set(store.feature_names())
    for name in encoders:
        if name not in names:
            raise TrainingDataError(f"{store.path}: feature {name!r} is not in the store (has {sorted(names)})")
    # Every statistic needed is looked up before any feature is read, so a missing one fails fast.
    stats = {AUDIO_STREAM: store.stats(AUDIO_STREAM)}
    if stats[AUDIO_STREAM] is None:
        raise TrainingDataError(f"{store.path}: no {AUDIO_STREAM}_mean/_std statistics; run the extraction's stats step")
    for name in encoders[1:] if standardise_visual else ():
        stats[name] = store.stats(name)
        if stats[name] is None:
            raise TrainingDataError(
                f"{store.path}: no {name}_mean/_std statistics to standardise the {name!r} stream with; rerun the "
                f"extraction (its statistics step computes them for every feature) or set standardise_visual: false")
    # The clips and their labels as of one committed generation: a relabel or growth by a running extraction
    # (readers take no lock) between these reads retries them (the store's seqlock) instead of mixing two.
    part, supervision, all_ids, all_weak, events = store.snapshot(lambda: (
        store.partitions(), store.strings("supervision"), store.clip_ids(), store.column("weak_labels"),
        store.clip_events()))
    present = store.present(AUDIO_STREAM)
    rows = np.flatnonzero(np.isin(part, list(partitions)) & present)
    if len(rows) == 0:
        raise TrainingDataError(f"{store.path}: no clips with {AUDIO_STREAM} in partitions {list(partitions)}")
    kind_names = np.array([(kinds or {}).get(part[r], supervision[r]) for r in rows], dtype=object)
    bad = set(kind_names) - set(KIND_CODES)
    if bad:
        raise TrainingDataError(f"unknown supervision kinds {sorted(bad)}")
    kind = np.array([KIND_CODES[k] for k in kind_names], dtype=np.int64)

    logmel = _standardise(_read_rows(store, AUDIO_STREAM, rows), stats[AUDIO_STREAM])
    logmel = np.nan_to_num(logmel, nan=0.0, posinf=0.0, neginf=0.0)
    visual, visual_valid, available = [], [], [np.ones(len(rows), dtype=bool)]
    for name in encoders[1:]:
        # Mask first, then data: a writer (readers take no lock) writes a row's data before its mask and never
        # rewrites it, so a row whose mask was True when read has its data in place for the read that follows.
        # Read the other way round, a row written in between counts as present with its data still the fill value.
        frame_mask = store.mask(name)[rows]
        data = np.nan_to_num(_read_rows(store, name, rows).astype(np.float32), nan=0.0)
        if name in stats:
            data = _standardise(data, stats[name])
        avail = frame_mask.any(axis=1)
        data[~frame_mask] = 0.0
        visual.append(torch.from_numpy(data).to(device=device, dtype=dtype))
        # Clips without the stream attend to all (zero) frames: finite outputs that their weight 0 removes.
        visual_valid.append(torch.from_numpy(frame_mask | ~avail[:, None]).to(device))
        available.append(avail)

    encoder = LabelEncoder(store.classes, store.timing)
    strong = np.zeros((len(rows), store.timing.output_frames, len(store.classes)), dtype=np.float32)
    for i, r in enumerate(rows):
        if kind[i] == STRONG or supervision[r] == "strong":
            strong[i] = encoder.encode_strong(events[r])
    weak = all_weak[rows].astype(np.float32)

    clip_ids = all_ids[rows]
    identity = store_identity(clip_ids, part[rows], kind, weak, strong,
                              {name: a for name, a in zip(encoders[1:], available[1:])}, stats)
    tensors = Batch(
        logmel=torch.from_numpy(logmel.astype(np.float32)).to(device=device, dtype=dtype),
        visual=visual, visual_valid=visual_valid,
        available=torch.from_numpy(np.stack(available, axis=1)).to(device),
        strong=torch.from_numpy(strong).to(device), weak=torch.from_numpy(weak).to(device),
        kind=torch.from_numpy(kind).to(device))
    return ClipSet(rows=rows, clip_ids=clip_ids, partitions=part[rows],
                   durations=store.column("duration")[rows].astype(np.float32), tensors=tensors,
                   encoders=encoders, provenance={n: store.provenance(n) for n in encoders}, identity=identity)
