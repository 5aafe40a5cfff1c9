"""The Zarr store: the interface between extraction and training.

Layout (zarr v3, one flat group, every array with `dimension_names` so `xarray.open_zarr` works):

    clip_id, partition, supervision, youtube_id   (clip,)            str
    duration                                      (clip,)            float32, seconds of audio (NaN until read)
    weak_labels                                   (clip, class)      uint8, clip-level targets (strong clips: from events)
    event_clip, event_onset, event_offset, event_class  (event,)     strong annotations, rows of `clip`
    <feature>                                     (clip, <feature>_frame, <feature>_dim)  e.g. logmel (n, 512, 64)
    <feature>_mask                                (clip, <feature>_frame)  bool: frame holds real data
    logmel_mean, logmel_std                       (logmel_dim,)      per-bin statistics of the training partitions

Root attributes: `format_version`, `classes`, `timing`. Each feature array's attributes: `provenance`
(extractor, version, config, weights checksum or "random").

Rules that make crashes and reruns safe:
- Feature and mask arrays are chunked one clip per chunk, so parallel writers never share a chunk.
- A row's mask is written only after its data; a row counts as present only if its mask has a True.
- Growing appends rows; existing rows are never rewritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from pipeline.classes import DESED_CLASSES
from pipeline.labels import ClipTiming, Event
from pipeline.manifest import Clip

FORMAT_VERSION = 1
_CLIP_CHUNK = 4096
_CLIP_COLUMNS = ("clip_id", "partition", "supervision", "youtube_id")
_EVENT_COLUMNS = {"event_clip": "int32", "event_onset": "float32", "event_offset": "float32", "event_class": "int16"}


class StoreError(RuntimeError):
    pass


class ProvenanceMismatch(StoreError):
    """The store already holds a feature made by a different extractor version, config or weights."""


def _str_array(group: zarr.Group, name: str, values: list[str], dims: tuple[str, ...]) -> zarr.Array:
    arr = group.create_array(name, shape=(len(values),), chunks=(_CLIP_CHUNK,), dtype=str,
                             dimension_names=dims, fill_value="")
    if values:
        arr[:] = np.asarray(values, dtype=object)
    return arr


class FeatureStore:
    """Read/write access to one store. Cheap to open; arrays are read lazily."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, path: str | Path, classes: tuple[str, ...] = DESED_CLASSES,
                       timing: ClipTiming = ClipTiming()) -> "FeatureStore":
        path = Path(path)
        if (path / "zarr.json").exists():
            store = cls.open(path, mode="r+")
            if tuple(store.classes) != tuple(classes):
                raise StoreError(f"{path}: store classes {store.classes} differ from {classes}")
            if store.timing != timing:
                raise StoreError(f"{path}: store timing {store.timing} differs from {timing}")
            return store
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.update({"format_version": FORMAT_VERSION, "classes": list(classes), "timing": asdict(timing)})
        for name in _CLIP_COLUMNS:
            _str_array(group, name, [], ("clip",))
        group.create_array("duration", shape=(0,), chunks=(_CLIP_CHUNK,), dtype="float32",
                           fill_value=np.nan, dimension_names=("clip",))
        group.create_array("weak_labels", shape=(0, len(classes)), chunks=(_CLIP_CHUNK, len(classes)),
                           dtype="uint8", fill_value=0, dimension_names=("clip", "class"))
        for name, dtype in _EVENT_COLUMNS.items():
            group.create_array(name, shape=(0,), chunks=(65536,), dtype=dtype, fill_value=0, dimension_names=("event",))
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "FeatureStore":
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a feature store (no zarr.json)")
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        version = group.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{path}: store format {version!r}, this code reads {FORMAT_VERSION}")
        return cls(path, group)

    # --- metadata ------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.group.attrs["classes"])

    @property
    def timing(self) -> ClipTiming:
        return ClipTiming(**self.group.attrs["timing"])

    @property
    def n_clips(self) -> int:
        return int(self.group["clip_id"].shape[0])

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][:])

    def strings(self, name: str) -> np.ndarray:
        """A string column as an object array of Python str (zarr 3 returns numpy StringDType)."""
        return np.asarray(self.group[name][:]).astype(object)

    def clip_ids(self) -> np.ndarray:
        return self.strings("clip_id")

    def clip_index(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.clip_ids())}

    def partitions(self) -> np.ndarray:
        return self.strings("partition")

    def events(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in _EVENT_COLUMNS}

    def clip_events(self) -> list[list[Event]]:
        """Strong annotations grouped per clip row."""
        ev = self.events()
        out: list[list[Event]] = [[] for _ in range(self.n_clips)]
        for c, on, off, k in zip(ev["event_clip"], ev["event_onset"], ev["event_offset"], ev["event_class"]):
            out[int(c)].append(Event(float(on), float(off), self.classes[int(k)]))
        return out

    # --- growing -------------------------------------------------------------------------------
    def add_clips(self, clips: Iterable[Clip]) -> list[int]:
        """Append clips not yet in the store; returns the row of every given clip (old or new)."""
        clips = list(clips)
        index = self.clip_index()
        new = [c for c in clips if c.clip_id not in index]
        if new:
            n0 = self.n_clips
            n1 = n0 + len(new)
            self._resize_clip_axis(n1)
            columns = {
                "clip_id": [c.clip_id for c in new],
                "partition": [c.partition for c in new],
                "supervision": [c.supervision for c in new],
                "youtube_id": [c.youtube_id or "" for c in new],
            }
            for name, values in columns.items():
                self.group[name][n0:n1] = np.asarray(values, dtype=object)
            weak = np.zeros((len(new), len(self.classes)), dtype=np.uint8)
            rows, onsets, offsets, classes = [], [], [], []
            for i, clip in enumerate(new):
                for label in clip.weak_labels:
                    weak[i, self.classes.index(label)] = 1
                for ev in clip.events:
                    rows.append(n0 + i)
                    onsets.append(ev.onset)
                    offsets.append(ev.offset)
                    classes.append(self.classes.index(ev.label))
            self.group["weak_labels"][n0:n1] = weak
            if rows:
                self._append_events(rows, onsets, offsets, classes)
            for i, clip in enumerate(new):
                index[clip.clip_id] = n0 + i
        return [index[c.clip_id] for c in clips]

    def _append_events(self, rows, onsets, offsets, classes) -> None:
        m0 = int(self.group["event_clip"].shape[0])
        m1 = m0 + len(rows)
        for name, values in zip(_EVENT_COLUMNS, (rows, onsets, offsets, classes)):
            arr = self.group[name]
            arr.resize((m1,))
            arr[m0:m1] = np.asarray(values, dtype=_EVENT_COLUMNS[name])

    def _resize_clip_axis(self, n: int) -> None:
        # Every array whose first dimension is `clip` grows together, so xarray sees one clip axis.
        for name, arr in self.group.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == "clip":
                arr.resize((n,) + arr.shape[1:])

    def set_durations(self, rows: np.ndarray, durations: np.ndarray) -> None:
        arr = self.group["duration"]
        for r, d in zip(rows, durations):
            arr[int(r)] = float(d)

    # --- features ------------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return sorted(name for name, arr in self.group.arrays() if "provenance" in arr.attrs)

    def provenance(self, feature: str) -> dict[str, Any]:
        return dict(self.group[feature].attrs["provenance"])

    def ensure_feature(self, feature: str, frames: int, dim: int, dtype: str, provenance: dict[str, Any]) -> None:
        """Create the feature and mask arrays, or check that the existing ones were made the same way."""
        if feature in self.group:
            stored = self.provenance(feature)
            if json.dumps(stored, sort_keys=True) != json.dumps(provenance, sort_keys=True):
                raise ProvenanceMismatch(
                    f"{self.path}: feature {feature!r} was made with {json.dumps(stored, sort_keys=True)}, "
                    f"now asked for {json.dumps(provenance, sort_keys=True)}. The stored rows may be the only copy "
                    f"left of videos that have since vanished, so they are not overwritten: write to a new store.")
            return
        n = self.n_clips
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        arr = self.group.create_array(feature, shape=(n, frames, dim), chunks=(1, frames, dim), dtype=dtype,
                                      fill_value=fill, dimension_names=("clip", f"{feature}_frame", f"{feature}_dim"))
        self.group.create_array(f"{feature}_mask", shape=(n, frames), chunks=(1, frames), dtype="bool",
                                fill_value=False, dimension_names=("clip", f"{feature}_frame"))
        # Written last: a feature counts as existing only once both arrays do.
        arr.attrs["provenance"] = provenance

    def write_row(self, feature: str, row: int, data: np.ndarray, frame_mask: np.ndarray) -> None:
        """Data first, then the mask: a crash in between leaves the row absent, never half-present."""
        frame_mask = np.asarray(frame_mask, dtype=bool)
        if not frame_mask.any():
            raise StoreError(f"feature {feature!r} row {row}: refusing to write a row with an all-False mask")
        arr = self.group[feature]
        if data.shape != arr.shape[1:]:
            raise StoreError(f"feature {feature!r} row {row}: data shape {data.shape} != {arr.shape[1:]}")
        arr[row] = data.astype(arr.dtype, copy=False)
        self.group[f"{feature}_mask"][row] = frame_mask

    def present(self, feature: str) -> np.ndarray:
        """(clip,) bool: rows whose feature has been written."""
        if feature not in self.group:
            return np.zeros(self.n_clips, dtype=bool)
        return np.asarray(self.group[f"{feature}_mask"][:]).any(axis=1)

    def mask(self, feature: str) -> np.ndarray:
        return np.asarray(self.group[f"{feature}_mask"][:])

    def read_feature(self, feature: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        return np.asarray(self.group[feature][rows])

    # --- statistics ----------------------------------------------------------------------------
    def write_stats(self, feature: str, mean: np.ndarray, std: np.ndarray, attrs: dict[str, Any]) -> None:
        for suffix, values in (("mean", mean), ("std", std)):
            name = f"{feature}_{suffix}"
            if name in self.group:
                del self.group[name]
            arr = self.group.create_array(name, shape=values.shape, dtype="float32",
                                          dimension_names=(f"{feature}_dim",))
            arr[:] = values.astype(np.float32)
            arr.attrs.update(attrs)

    def stats(self, feature: str) -> tuple[np.ndarray, np.ndarray] | None:
        if f"{feature}_mean" not in self.group:
            return None
        return self.column(f"{feature}_mean"), self.column(f"{feature}_std")
