"""The embedding worker of one device: every requested image CNN runs on the same uploaded frames.

Clips arrive decoded as their distinct frames (identical frames hashed once per clip, by the decoder) and are
packed whole into an upload batch of a fixed number of frames, held in pinned host memory on a GPU. One upload per
batch (so one per clip) feeds every CNN; each CNN then runs its own fixed-shape forward passes over it
(`TorchImageExtractor.forward_uploaded`), so a clip's embedding never depends on which clips shared its batch:
it equals the same clip embedded alone with `TorchImageExtractor.embed`, bit for bit.

On a GPU `launch` returns at once (upload, forward passes and the copies back are queued on the device), so the
caller packs the next batch while the device computes this one; `PendingEmbeddings.result` waits. Two staging
buffers alternate for that overlap; a worker never holds more.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from features.frame_dedup import unique_frames
from features.image_batching import TorchImageExtractor

STAGING_BUFFERS = 2


@dataclass
class DistinctFrames:
    """One clip's frames as the embedding worker takes them."""

    key: Hashable  # who the clip is (the pipeline uses its store row)
    frames: np.ndarray  # (u, S, S, 3) uint8: the clip's distinct frames (all of them without deduplication)
    inverse: np.ndarray  # (T,) int: for each of the clip's T frames, its row in `frames`
    valid: np.ndarray  # (T,) bool: the frame holds real video (padding beyond a short video is False)

    @property
    def n_frames(self) -> int:
        return int(len(self.frames))


def distinct_frames(key: Hashable, frames: np.ndarray, valid: np.ndarray, dedup: bool,
                    unique: tuple[np.ndarray, np.ndarray] | None = None) -> DistinctFrames:
    """A decoded clip as the worker takes it. `unique`: `unique_frames(frames)` if already computed (the decoder
    hashes each clip once for every CNN)."""
    if not dedup:
        return DistinctFrames(key, frames, np.arange(len(frames)), valid)
    keep, inverse = unique if unique is not None else unique_frames(frames)
    return DistinctFrames(key, frames[keep], inverse, valid)


@dataclass
class ClipEmbeddings:
    key: Hashable
    embeddings: dict[str, np.ndarray]  # feature -> (T, dim) float32
    valid: np.ndarray  # (T,) bool


@dataclass(frozen=True)
class PackedClip:
    """Where a clip's frames went in an upload batch. The clip's own frame array is not kept: once packed, its
    frames live only in the (fixed) staging buffer, so the decoded copy can be freed."""

    key: Hashable
    start: int  # first row of the clip's distinct frames in the buffer
    inverse: np.ndarray
    valid: np.ndarray


@dataclass
class UploadBatch:
    """Whole clips packed into a staging buffer of `capacity` frames."""

    tensor: torch.Tensor  # (capacity, S, S, 3) uint8 staging buffer: pinned host memory when the worker is on a GPU
    clips: list[PackedClip] = field(default_factory=list)
    used: int = 0
    _slot: int = -1

    @property
    def buffer(self) -> np.ndarray:
        """The staging buffer as numpy (the same memory)."""
        return self.tensor.numpy()

    @property
    def capacity(self) -> int:
        return int(self.tensor.shape[0])

    def fits(self, clip: DistinctFrames) -> bool:
        return self.used + clip.n_frames <= self.capacity

    def add(self, clip: DistinctFrames) -> None:
        if tuple(clip.frames.shape[1:]) != tuple(self.tensor.shape[1:]):
            raise ValueError(f"clip {clip.key}: frames shaped {clip.frames.shape[1:]}, this worker takes "
                             f"{tuple(self.tensor.shape[1:])}")
        if not self.fits(clip):
            raise ValueError(f"clip {clip.key}: {clip.n_frames} frames do not fit ({self.used}/{self.capacity} used)")
        self.tensor.numpy()[self.used:self.used + clip.n_frames] = clip.frames
        self.clips.append(PackedClip(clip.key, self.used, clip.inverse, clip.valid))
        self.used += clip.n_frames

    def __len__(self) -> int:
        return len(self.clips)


class PendingEmbeddings:
    """The embeddings of one launched batch; `result()` waits for the device and splits them per clip."""

    def __init__(self, worker: "EmbeddingWorker", batch: UploadBatch, outputs: dict[str, torch.Tensor],
                 done: Any | None):
        self._worker, self._batch, self._outputs, self._done = worker, batch, outputs, done
        self._result: list[ClipEmbeddings] | None = None

    def result(self) -> list[ClipEmbeddings]:
        if self._result is None:
            if self._done is not None:
                self._done.synchronize()
            host = {name: y.numpy() for name, y in self._outputs.items()}
            out = []
            for clip in self._batch.clips:
                rows = clip.start + clip.inverse  # each of the clip's frames -> its distinct frame's output
                out.append(ClipEmbeddings(clip.key, {name: y[rows] for name, y in host.items()}, clip.valid))
            self._result = out
            self._outputs = {}
            self._worker._release(self._batch)
        return self._result


class EmbeddingWorker:
    """Runs a group of image CNNs that live on one device over upload batches of whole clips."""

    def __init__(self, extractors: Sequence[TorchImageExtractor], upload_frames: int, frame_size: int):
        if not extractors:
            raise ValueError("an embedding worker needs at least one image CNN")
        devices = {str(ex.device) for ex in extractors}
        if len(devices) != 1:
            raise ValueError(f"one embedding worker per device; got {sorted(devices)} (group the CNNs by device)")
        self.extractors = list(extractors)
        self.device = extractors[0].device
        self.upload_frames = int(upload_frames)
        self.frame_shape = (int(frame_size), int(frame_size), 3)
        self._buffers: list[torch.Tensor | None] = [None] * STAGING_BUFFERS
        self._free = list(range(STAGING_BUFFERS))
        self.batches_launched = 0
        self.frames_uploaded = 0

    @property
    def names(self) -> list[str]:
        return [ex.name for ex in self.extractors]

    def load(self) -> "EmbeddingWorker":
        for ex in self.extractors:
            ex.load()
        return self

    def _buffer(self, slot: int) -> torch.Tensor:
        buf = self._buffers[slot]
        if buf is None:
            # Pinned host memory on a GPU: the upload is an asynchronous DMA while the next batch is packed.
            buf = torch.empty((self.upload_frames,) + self.frame_shape, dtype=torch.uint8,
                              pin_memory=self.device.type == "cuda")
            self._buffers[slot] = buf
        return buf

    def new_batch(self) -> UploadBatch:
        """An empty batch on a free staging buffer (at most two batches exist at a time: filling and computing)."""
        if not self._free:
            raise RuntimeError("both staging buffers are in use: call result() on a pending batch first")
        slot = self._free.pop(0)
        return UploadBatch(self._buffer(slot), _slot=slot)

    def _release(self, batch: UploadBatch) -> None:
        if batch._slot >= 0 and batch._slot not in self._free:
            self._free.append(batch._slot)
        batch._slot = -1

    def launch(self, batch: UploadBatch) -> PendingEmbeddings:
        """Upload the batch once and queue every CNN on it; returns at once on a GPU."""
        if batch.used == 0:
            self._release(batch)
            return PendingEmbeddings(self, batch, {}, None)
        self.load()
        cuda = self.device.type == "cuda"
        outputs = {}
        done = None
        with torch.inference_mode():  # the copies back are made of (and into) inference tensors too
            x = batch.tensor[:batch.used]
            if cuda:
                x = x.to(self.device, non_blocking=True)  # from pinned memory: an asynchronous DMA
            for ex in self.extractors:
                y = ex.forward_uploaded(x)
                if cuda:
                    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
                    host.copy_(y, non_blocking=True)
                    y = host
                outputs[ex.name] = y
            if cuda:
                done = torch.cuda.Event()
                done.record()
        self.batches_launched += 1
        self.frames_uploaded += batch.used
        return PendingEmbeddings(self, batch, outputs, done)

    def embed_clips(self, clips: Sequence[DistinctFrames]) -> list[ClipEmbeddings]:
        """Every clip through every CNN, packed into as few batches as fit (for tests and small jobs)."""
        out: list[ClipEmbeddings] = []
        batch = self.new_batch()
        for clip in clips:
            if not batch.fits(clip):
                out.extend(self.launch(batch).result())
                batch = self.new_batch()
            batch.add(clip)
        out.extend(self.launch(batch).result())
        return out


def group_by_device(extractors: Sequence[TorchImageExtractor]) -> list[list[TorchImageExtractor]]:
    """The CNNs that share one upload: same device and same deduplication setting (it decides what is uploaded)."""
    groups: dict[tuple[str, bool], list[TorchImageExtractor]] = defaultdict(list)
    for ex in extractors:
        groups[(str(ex.device), bool(ex.config.dedup_identical_frames))].append(ex)
    return list(groups.values())
