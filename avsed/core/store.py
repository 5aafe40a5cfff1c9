"""The Zarr store: the interface between extraction and training (format 2: sharded, self-describing, crash-safe).

Layout (zarr v3, one flat group; every array has `dimension_names`, so `xarray.open_zarr(path)` opens it and
`ds.sel(clip=<clip id>)` works):

    clip                                          (clip,)            str   the DESED filename: the clip coordinate
    class                                         (class,)           str   class names: the class coordinate
    partition, supervision, youtube_id            (clip,)            str
    duration                                      (clip,)            float32, seconds of audio (NaN until read)
    weak_labels                                   (clip, class)      uint8, clip-level targets (strong clips: from events)
    event_clip, event_onset, event_offset, event_class  (event,)     strong annotations, rows of `clip`
    <f>                                           (clip, <f>_frame, <f>_dim)  a feature, e.g. logmel (n, 512, 64)
    <f>_mask                                      (clip, <f>_frame)  bool: frame holds real data
    <f>_frame                                     (<f>_frame,)       float32 frame centre times (s): a coordinate
    <f>_mean, <f>_std                             (<f>_dim,)         statistics of the training partitions' real frames
    <f>_shard_sums                                (shard, stat, <f>_dim)  float64 per-shard sum, sum of squares, frames
    <f>_in_stats                                  (clip,)            bool: rows the statistics include

Root attributes: `format_version`, `classes`, `timing`, `clips_per_shard`, and the committed counts `n_clips`,
`n_events` with a `generation` counter. Each feature array carries its `provenance` (extractor, version, config,
weights checksum or "random", dtype) from the moment it is created.

Files. A feature is chunked one clip per chunk inside shards of `clips_per_shard` clips (one file per shard, and
one clip can still be read alone); its mask and `duration` are chunked by shard: about 1,500 files for all of
DESED with four features. **Invariant: no two writers ever write the same shard at the same time.** Writing part of a shard
rewrites the shard file (read, merge, write), so two writers of one shard would lose each other's rows.
Extraction therefore writes a shard from exactly one place (one writer thread per process; work split
by shard between processes). Every file write is atomic (zarr's LocalStore writes a temporary file and
renames it), so a crash leaves either the old file or the new one.

Growth protocol (why a kill after any write, or a second run, can neither lose labels nor leave ghost rows):
1. One writer per store: `StoreLock` (`<store>.lock`, an OS lock released by the kernel when its holder dies,
   with the holder's host, pid and purpose for the message a second run gets). Readers never take it.
2. A new store is built in a temporary directory beside the target and renamed into place, so a store
   either exists completely (all columns, attributes, counts) or not at all.
3. A change of the clip axis or of the labels (`sync_clips`: new clips appended, corrected labels, events
   or partitions of known clips) is first written as a journal, `<store>.journal.json` (atomic), holding
   everything the change writes. Then it is applied (arrays grown, columns, labels and the whole event table
   written), then the new counts are published in the root attributes (one atomic write: the commit), then
   the journal is removed. Rows beyond `n_clips` are never read. A writer that opens a store with a journal
   replays it first (replaying is idempotent), so an interrupted change is always finished, never half-seen.
   Readers that find a journal, or whose generation changed while they read the labels, retry and then
   refuse with `StoreBusyError`.
4. A feature's data array is created with its provenance in the same write, then its mask array; a feature
   whose mask array is missing has no rows. A row's mask is written only after its data (each as one
   atomic shard write), and a row counts as present only if its mask has a True. Features are never
   rewritten with other values: rows only go from absent to present. Readers therefore read a row's mask
   before its data (training/data.py): data read after a True mask is the written data, never the fill value.
5. Statistics are marked incomplete before they change and complete (with their counts) last; incomplete
   statistics read as absent and are recomputed.
6. The consolidated metadata (for `xarray.open_zarr`) is refreshed at the end of a run; our own reads never
   use it, so a stale copy after a killed run cannot mislead the pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import zarr
from zarr.storage import LocalStore

from avsed.core.classes import DESED_CLASSES
from avsed.core.labels import ClipTiming, Event
from avsed.core.manifest import Clip
# the writer lock and the store's base error live beside it; imported from here by most callers
from avsed.core.store_lock import LOCK_SUFFIX, StoreError, StoreLock, StoreLockedError, lock_path  # noqa: F401

FORMAT_VERSION = 2
DEFAULT_CLIPS_PER_SHARD = 128
JOURNAL_SUFFIX = ".journal.json"
_COLUMN_CHUNK = 4096  # label columns: written only by the lock holder, so their chunks may span shards
_EVENT_CHUNK = 1 << 16
_FLAG_CHUNK = 1 << 16
_LABEL_COLUMNS = ("clip", "partition", "supervision", "youtube_id")
_EVENT_COLUMNS = {"event_clip": "int32", "event_onset": "float32", "event_offset": "float32", "event_class": "int16"}
_READ_RETRIES = 5
T = TypeVar("T")


class ProvenanceMismatch(StoreError):
    """The store already holds a feature made with another extractor version, config or weights."""


class StoreBusyError(StoreError):
    """A change of the store's clips or labels is in progress (or was interrupted and not yet finished)."""


class StoreFormatError(StoreError):
    """The store was written in another format; the message names the migration command."""


# --- storage seams -------------------------------------------------------------------------------------------
# Every write the store makes goes through `_zarr_store` (zarr's atomic LocalStore), `_write_json_atomic`,
# `_remove_file` and `_rename`: the fault-injection tests replace them to stop the process after any write.

def _zarr_store(path: Path, read_only: bool = False) -> LocalStore:
    return LocalStore(str(path), read_only=read_only)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _remove_file(path: Path) -> None:
    Path(path).unlink(missing_ok=True)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def journal_path(store_path: str | Path) -> Path:
    p = Path(store_path)
    return p.parent / (p.name.rstrip("/") + JOURNAL_SUFFIX)


# --- changes of the clip axis and labels -------------------------------------------------------------------

@dataclass
class LabelChange:
    clip_id: str
    what: str  # "partition" | "weak labels" | "events"
    before: str
    after: str

    def __str__(self) -> str:
        return f"clip {self.clip_id}: {self.what} {self.before} -> {self.after}"


@dataclass
class SyncReport:
    """What `sync_clips` found: rows of the given clips, how many were new, which labels changed."""

    rows: list[int]
    new_clips: int = 0
    changes: list[LabelChange] = field(default_factory=list)
    not_in_metadata: int = 0  # clips in the store that the metadata no longer lists (kept: rows are never removed)


def _label_values(clip: Clip, classes: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    weak = np.zeros(len(classes), dtype=np.uint8)
    for label in clip.weak_labels:
        weak[classes.index(label)] = 1
    events = [(float(np.float32(e.onset)), float(np.float32(e.offset)), classes.index(e.label)) for e in clip.events]
    return weak, events


def _describe_labels(weak: np.ndarray, classes: tuple[str, ...]) -> str:
    return ",".join(c for c, on in zip(classes, weak) if on) or "(none)"


def _describe_events(events: list[tuple[float, float, int]], classes: tuple[str, ...]) -> str:
    return "; ".join(f"{on:g}-{off:g} {classes[k]}" for on, off, k in events) or "(none)"


class FeatureStore:
    """Read/write access to one store. Cheap to open; arrays are read lazily.

    Readers: `FeatureStore.open(path)`. Writers: `FeatureStore.create_or_open(...)` takes the store's lock for
    the life of the object (`close()` or a `with` block releases it) and finishes any interrupted change. Row
    writers that run beside the lock holder (the extraction's writer thread, Dask workers writing their own
    shards) use `FeatureStore.open(path, mode="r+")`: they may only `write_rows` / `set_durations`.
    """

    def __init__(self, path: str | Path, group: zarr.Group, lock: StoreLock | None = None):
        self.path = Path(path)
        self.group = group
        self._lock = lock

    # --- opening -------------------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, path: str | Path, classes: tuple[str, ...] = DESED_CLASSES,
                       timing: ClipTiming = ClipTiming(),
                       clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD) -> "FeatureStore":
        path = Path(path)
        lock = StoreLock(path, purpose="extract").acquire()
        try:
            _sweep_leftovers(path)
            if not (path / "zarr.json").exists():
                if path.exists() and any(path.iterdir()):
                    raise StoreError(f"{path}: exists but is not a feature store (no zarr.json); choose another path")
                _create(path, classes, timing, clips_per_shard)
            store = cls._open_group(path, "r+", lock)
            store._replay_journal()
            if tuple(store.classes) != tuple(classes):
                raise StoreError(f"{path}: store classes {store.classes} differ from {classes}; write to a new store")
            if store.timing != timing:
                raise StoreError(f"{path}: store timing {store.timing} differs from {timing}; write to a new store")
            return store
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "FeatureStore":
        store = cls._open_group(Path(path), mode, None)
        if mode == "r" and journal_path(path).exists():
            store._wait_for_journal()
        return store

    @classmethod
    def _open_group(cls, path: Path, mode: str, lock: StoreLock | None) -> "FeatureStore":
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a feature store (no zarr.json); check the path or run `avsed extract`")
        group = zarr.open_group(store=_zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3,
                                use_consolidated=False)
        version = group.attrs.get("format_version")
        if version != FORMAT_VERSION:
            hint = (f"run `avsed migrate-store {path}` (it keeps the old store beside the new one)" if version == 1
                    else "this code cannot read it")
            raise StoreFormatError(f"{path}: store format {version!r}, this code reads format {FORMAT_VERSION}; {hint}")
        return cls(path, group, lock)

    def close(self) -> None:
        """Release the writer lock (if this object holds it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # A writer dropped without close() must not hold the store for the rest of the process.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the OS releases the lock anyway
            pass

    def _require_lock(self, what: str) -> None:
        if not StoreLock.held(self.path):
            raise RuntimeError(f"{self.path}: {what} needs the store's writer lock (open with create_or_open)")

    # --- metadata ------------------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.group.attrs["classes"])

    @property
    def timing(self) -> ClipTiming:
        return ClipTiming(**self.group.attrs["timing"])

    @property
    def clips_per_shard(self) -> int:
        return int(self.group.attrs["clips_per_shard"])

    @property
    def n_clips(self) -> int:
        return int(self.group.attrs["n_clips"])

    @property
    def n_events(self) -> int:
        return int(self.group.attrs["n_events"])

    def shard_of(self, row: int) -> int:
        return int(row) // self.clips_per_shard

    def shard_rows(self, shard: int) -> range:
        s = self.clips_per_shard
        return range(shard * s, min((shard + 1) * s, self.n_clips))

    @property
    def n_shards(self) -> int:
        return -(-self.n_clips // self.clips_per_shard)

    def column(self, name: str) -> np.ndarray:
        arr = self.group[name]
        dims = arr.metadata.dimension_names or ()
        if dims[:1] == ("clip",):
            return np.asarray(arr[: self.n_clips])
        if dims[:1] == ("event",):
            return np.asarray(arr[: self.n_events])
        return np.asarray(arr[:])

    def strings(self, name: str) -> np.ndarray:
        """A string column as an object array of Python str (zarr 3 returns numpy StringDType)."""
        return self.column(name).astype(object)

    def clip_ids(self) -> np.ndarray:
        return self.strings("clip")

    def clip_index(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.clip_ids())}

    def partitions(self) -> np.ndarray:
        return self.strings("partition")

    def events(self) -> dict[str, np.ndarray]:
        return self._consistent(lambda: {name: self.column(name) for name in _EVENT_COLUMNS})

    def clip_events(self) -> list[list[Event]]:
        """Strong annotations grouped per clip row."""
        ev = self.events()
        out: list[list[Event]] = [[] for _ in range(self.n_clips)]
        classes = self.classes
        for c, on, off, k in zip(ev["event_clip"], ev["event_onset"], ev["event_offset"], ev["event_class"]):
            out[int(c)].append(Event(float(on), float(off), classes[int(k)]))
        return out

    # --- consistency for readers ---------------------------------------------------------------------------
    def _root_attrs(self) -> dict[str, Any]:
        return json.loads((self.path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})

    def _wait_for_journal(self) -> None:
        for attempt in range(_READ_RETRIES):
            if not journal_path(self.path).exists():
                self.group = zarr.open_group(store=_zarr_store(self.path, read_only=True), mode="r", zarr_format=3,
                                             use_consolidated=False)
                return
            time.sleep(0.2 * (attempt + 1))
        raise StoreBusyError(
            f"{self.path}: its clips or labels are being changed ({journal_path(self.path).name} is present): a run is "
            f"adding clips right now, or one was interrupted; wait for it, or rerun `avsed extract` to finish the change")

    def snapshot(self, read: Callable[[], T]) -> T:
        """`read()` as of one committed generation of the clips and labels (retried if a writer changed them
        meanwhile): for readers that combine several label columns. Feature rows need no snapshot: read a row's
        mask before its data (protocol step 4)."""
        return self._consistent(read)

    def _consistent(self, read):
        """Run `read` so that it sees one committed generation of the labels (seqlock against a writer)."""
        if self._lock is not None:
            return read()  # the lock holder is the only writer
        for _ in range(_READ_RETRIES):
            generation = self._root_attrs().get("generation")
            if journal_path(self.path).exists():
                self._wait_for_journal()
                continue
            value = read()
            if not journal_path(self.path).exists() and self._root_attrs().get("generation") == generation:
                return value
            self._wait_for_journal()
        raise StoreBusyError(f"{self.path}: the labels kept changing while being read; retry when the running "
                             f"extraction has passed its planning step")

    # --- growing and relabelling ---------------------------------------------------------------------------
    def sync_clips(self, clips: Iterable[Clip]) -> SyncReport:
        """Append clips not yet in the store and bring the labels of known clips in line with the metadata.

        Labels, events and partitions are metadata, not cached features: a corrected label in the tsv is a
        corrected label in the store (reported in `changes`). Features of known clips are untouched. Returns
        the row of every given clip. Makes no write when nothing changed.
        """
        self._require_lock("sync_clips")
        clips = list(clips)
        classes = self.classes
        n0 = self.n_clips
        ids = self.clip_ids()
        index = {cid: i for i, cid in enumerate(ids)}
        partition, supervision = self.strings("partition"), self.strings("supervision")
        weak = self.column("weak_labels")
        stored_events = self.events()
        per_row: dict[int, list[tuple[float, float, int]]] = {}
        for c, on, off, k in zip(stored_events["event_clip"], stored_events["event_onset"],
                                 stored_events["event_offset"], stored_events["event_class"]):
            per_row.setdefault(int(c), []).append((float(on), float(off), int(k)))

        report = SyncReport(rows=[])
        new: list[Clip] = []
        changed_rows: dict[int, Clip] = {}
        seen: set[str] = set()
        events_changed = False
        for clip in clips:
            seen.add(clip.clip_id)
            row = index.get(clip.clip_id)
            if row is None:
                row = n0 + len(new)
                index[clip.clip_id] = row
                new.append(clip)
                events_changed = events_changed or bool(clip.events)
                report.rows.append(row)
                continue
            report.rows.append(row)
            w, evs = _label_values(clip, classes)
            if (clip.partition, clip.supervision) != (partition[row], supervision[row]):
                report.changes.append(LabelChange(clip.clip_id, "partition", f"{partition[row]}/{supervision[row]}",
                                                  f"{clip.partition}/{clip.supervision}"))
                changed_rows[row] = clip
            if not np.array_equal(w, weak[row]):
                report.changes.append(LabelChange(clip.clip_id, "weak labels", _describe_labels(weak[row], classes),
                                                  _describe_labels(w, classes)))
                changed_rows[row] = clip
            if sorted(evs) != sorted(per_row.get(row, [])):
                report.changes.append(LabelChange(clip.clip_id, "events", _describe_events(per_row.get(row, []), classes),
                                                  _describe_events(evs, classes)))
                changed_rows[row] = clip
                events_changed = True
        report.new_clips = len(new)
        report.not_in_metadata = sum(1 for cid in ids if cid not in seen)
        if not new and not changed_rows:
            return report

        n1 = n0 + len(new)
        # The target generation is part of the journal, so replaying a change that was already committed is a no-op.
        journal: dict[str, Any] = {"n_clips": n1, "generation": int(self.group.attrs.get("generation", 0)) + 1,
                                   "columns": {}, "weak_rows": [], "weak_values": []}
        update_rows = sorted(changed_rows)
        for name, get in (("clip", lambda c: c.clip_id), ("partition", lambda c: c.partition),
                          ("supervision", lambda c: c.supervision), ("youtube_id", lambda c: c.youtube_id or "")):
            if name == "clip" or name == "youtube_id":
                rows, clip_list = list(range(n0, n1)), new
            else:
                rows, clip_list = update_rows + list(range(n0, n1)), [changed_rows[r] for r in update_rows] + new
            journal["columns"][name] = {"rows": rows, "values": [get(c) for c in clip_list]}
        for row, clip in [(r, changed_rows[r]) for r in update_rows] + list(zip(range(n0, n1), new)):
            journal["weak_rows"].append(row)
            journal["weak_values"].append(_label_values(clip, classes)[0].tolist())
        if events_changed:
            for row, clip in [(r, changed_rows[r]) for r in update_rows] + list(zip(range(n0, n1), new)):
                per_row[row] = _label_values(clip, classes)[1]
            table = [(row, on, off, k) for row in sorted(per_row) for on, off, k in sorted(per_row[row])]
            journal["events"] = [list(col) for col in zip(*table)] if table else [[], [], [], []]
            journal["n_events"] = len(table)
        else:
            journal["n_events"] = self.n_events
        _write_json_atomic(journal_path(self.path), journal)
        self._apply_journal(journal)
        return report

    def add_clips(self, clips: Iterable[Clip]) -> list[int]:
        """`sync_clips(clips).rows`: the row of every given clip, new clips appended."""
        return self.sync_clips(clips).rows

    def _replay_journal(self) -> None:
        path = journal_path(self.path)
        if path.exists():
            self._apply_journal(json.loads(path.read_text(encoding="utf-8")))

    def _apply_journal(self, journal: dict[str, Any]) -> None:
        """Idempotent: grow, write every column the journal holds, commit the counts, drop the journal."""
        n1, m1 = int(journal["n_clips"]), int(journal["n_events"])
        for _, arr in self.group.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims[:1] == ("clip",) and arr.shape[0] < n1:
                arr.resize((n1,) + arr.shape[1:])
        for name, col in journal["columns"].items():
            if col["rows"]:
                _write_rows_of(self.group[name], np.asarray(col["rows"]), np.asarray(col["values"], dtype=object))
        if journal["weak_rows"]:
            _write_rows_of(self.group["weak_labels"], np.asarray(journal["weak_rows"]),
                           np.asarray(journal["weak_values"], dtype=np.uint8))
        if "events" in journal:
            for (name, dtype), values in zip(_EVENT_COLUMNS.items(), journal["events"]):
                arr = self.group[name]
                if arr.shape[0] != m1:
                    arr.resize((m1,))
                if m1:
                    arr[:] = np.asarray(values, dtype=dtype)
        self.group.attrs.update({"n_clips": n1, "n_events": m1, "generation": int(journal["generation"])})
        _remove_file(journal_path(self.path))

    def set_durations(self, rows: Sequence[int] | np.ndarray, durations: Sequence[float] | np.ndarray) -> None:
        """Seconds of real audio per row; rows of one call should share a shard (one chunk write per shard)."""
        rows = np.asarray(rows, dtype=np.int64)
        durations = np.asarray(durations, dtype=np.float32)
        arr = self.group["duration"]
        for shard in np.unique(rows // self.clips_per_shard):
            sel = rows // self.clips_per_shard == shard
            _write_rows_of(arr, rows[sel], durations[sel])

    # --- features ------------------------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return sorted(name for name, arr in self.group.arrays() if "provenance" in arr.attrs)

    def provenance(self, feature: str) -> dict[str, Any]:
        return dict(self.group[feature].attrs["provenance"])

    def ensure_feature(self, feature: str, frames: int, dim: int, dtype: str, provenance: dict[str, Any],
                       frame_times: np.ndarray | None = None) -> None:
        """Create the feature (with its provenance), its mask and its frame-time coordinate, or check that the
        existing feature was made the same way (`ProvenanceMismatch` names each setting that differs)."""
        self._require_lock("ensure_feature")
        provenance = json.loads(json.dumps(provenance))  # the JSON form is what is stored and compared
        if feature in self.group and "provenance" in self.group[feature].attrs:
            stored = self.provenance(feature)
            if stored != provenance:
                diffs = "; ".join(f"{k}: store has {a!r}, now {b!r}" for k, a, b in _differences(stored, provenance))
                raise ProvenanceMismatch(
                    f"{self.path}: feature {feature!r} was made with other settings ({diffs}). The stored rows may be "
                    f"the only copy left of videos that have since vanished, so they are not overwritten: use the "
                    f"store's settings or write to a new store")
            shape = self.group[feature].shape
            if shape[1:] != (frames, dim):
                raise ProvenanceMismatch(f"{self.path}: feature {feature!r} has frames x dim {shape[1:]}, "
                                         f"now asked for {(frames, dim)}; write to a new store")
        else:
            # The frame-time coordinate is complete before the feature exists (a kill in between rewrites it).
            coord = f"{feature}_frame"
            if coord not in self.group:
                self.group.create_array(coord, shape=(frames,), dtype="float32", fill_value=0.0,
                                        dimension_names=(coord,),
                                        attributes={"units": "s", "long_name": "frame centre time"})
            times = frame_times if frame_times is not None else _default_frame_times(self.timing, frames)
            self.group[coord][:] = np.asarray(times, dtype=np.float32)
            n, s = self.n_clips, self.clips_per_shard
            fill = np.nan if np.dtype(dtype).kind == "f" else 0
            self.group.create_array(feature, shape=(n, frames, dim), chunks=(1, frames, dim), shards=(s, frames, dim),
                                    dtype=dtype, fill_value=fill, attributes={"provenance": provenance},
                                    dimension_names=("clip", f"{feature}_frame", f"{feature}_dim"))
        if f"{feature}_mask" not in self.group:
            n, s = self.group[feature].shape[0], self.clips_per_shard
            # One chunk per shard (no inner chunks): planning reads every row's mask, and 20k inner chunks cost ~0.5 ms
            # each to decode (11 s per feature at DESED size); a shard-sized chunk is one decode.
            self.group.create_array(f"{feature}_mask", shape=(n, frames), chunks=(s, frames), dtype="bool",
                                    fill_value=False, dimension_names=("clip", f"{feature}_frame"))

    def write_rows(self, feature: str, rows: Sequence[int] | np.ndarray, data: np.ndarray, masks: np.ndarray) -> None:
        """Write rows of one shard: the data first, then the masks (each one atomic shard write).

        Every row must have a True in its mask (an absent row is simply not written). Writing a shard's rows in one
        call matters at scale: each call rewrites the shard file.
        """
        rows = np.asarray(rows, dtype=np.int64)
        masks = np.asarray(masks, dtype=bool)
        if rows.size == 0:
            return
        arr = self.group[feature]
        data = np.asarray(data)
        if data.shape != (len(rows),) + arr.shape[1:] or masks.shape != (len(rows), arr.shape[1]):
            raise StoreError(f"feature {feature!r} rows {rows[:4].tolist()}...: data shape {data.shape} / mask shape "
                             f"{masks.shape} do not match ({len(rows)},) + {arr.shape[1:]}")
        shards = np.unique(rows // self.clips_per_shard)
        if len(shards) != 1:
            raise StoreError(f"feature {feature!r}: rows {rows.min()}..{rows.max()} span shards {shards.tolist()}; "
                             f"write one shard per call (no two writers may share a shard)")
        if rows.max() >= self.n_clips or rows.min() < 0:
            raise StoreError(f"feature {feature!r}: rows outside the store's {self.n_clips} committed clips")
        empty = ~masks.any(axis=1)
        if empty.any():
            raise StoreError(f"feature {feature!r} row {int(rows[empty][0])}: refusing to write a row with an all-False "
                             f"mask (a row without data is absent)")
        _write_rows_of(arr, rows, data.astype(arr.dtype, copy=False))
        _write_rows_of(self.group[f"{feature}_mask"], rows, masks)

    def write_row(self, feature: str, row: int, data: np.ndarray, frame_mask: np.ndarray) -> None:
        """One row (tests and small stores; at scale use `write_rows` with a whole shard)."""
        self.write_rows(feature, [row], np.asarray(data)[None], np.asarray(frame_mask)[None])

    def present(self, feature: str) -> np.ndarray:
        """(clip,) bool: rows whose feature has been written."""
        if feature not in self.group or f"{feature}_mask" not in self.group:
            return np.zeros(self.n_clips, dtype=bool)
        return self.mask(feature).any(axis=1)

    def mask(self, feature: str) -> np.ndarray:
        return np.asarray(self.group[f"{feature}_mask"][: self.n_clips])

    def read_feature(self, feature: str, rows: np.ndarray | slice | int = slice(None)) -> np.ndarray:
        if isinstance(rows, slice):
            rows = slice(*rows.indices(self.n_clips))
        return np.asarray(self.group[feature][rows])

    # --- statistics ----------------------------------------------------------------------------------------
    def stats(self, feature: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) of the training partitions' real frames, or None if absent or incomplete."""
        name = f"{feature}_mean"
        if name not in self.group or not self.group[name].attrs.get("complete", False):
            return None
        return np.asarray(self.group[name][:]), np.asarray(self.group[f"{feature}_std"][:])

    def stats_state(self, feature: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(per-shard partial sums (shards, 3, dim) float64: sum, sum of squares, frames; rows included (clip,) bool)
        behind complete statistics, else None."""
        if self.stats(feature) is None or f"{feature}_shard_sums" not in self.group:
            return None
        included = np.zeros(self.n_clips, dtype=bool)
        flags = np.asarray(self.group[f"{feature}_in_stats"][: self.n_clips])
        included[: len(flags)] = flags
        return np.asarray(self.group[f"{feature}_shard_sums"][:]), included

    def write_stats(self, feature: str, shard_sums: np.ndarray, included: np.ndarray,
                    attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Store per-shard partial sums (shards, 3, dim) over the real frames of the `included` rows, and the mean /
        std derived from their total. Marked incomplete first and complete last (protocol step 5).

        The total is always summed over the shards in order, so statistics updated shard by shard over many runs are
        bit-identical to statistics computed in one go (a rerun after a kill must give the uninterrupted store)."""
        self._require_lock("write_stats")
        shard_sums = np.asarray(shard_sums, dtype=np.float64)
        total = shard_sums.sum(axis=0)
        frames = int(total[2, 0])
        mean = total[0] / frames
        std = np.sqrt(np.maximum(total[1] / frames - mean * mean, 0.0))
        dim = shard_sums.shape[2]
        dims = (f"{feature}_dim",)
        arrays = {f"{feature}_mean": ((dim,), "float32", dims, None), f"{feature}_std": ((dim,), "float32", dims, None),
                  f"{feature}_shard_sums": (shard_sums.shape, "float64", ("shard", "stat", f"{feature}_dim"),
                                            (64, 3, dim)),
                  f"{feature}_in_stats": ((self.group["clip"].shape[0],), "bool", ("clip",), (_FLAG_CHUNK,))}
        for name, (shape, dtype, d, chunks) in arrays.items():
            if name in self.group and self.group[name].shape[1:] != shape[1:]:
                del self.group[name]
            if name not in self.group:
                self.group.create_array(name, shape=shape, dtype=dtype, fill_value=0, dimension_names=d,
                                        chunks=chunks or "auto")
        mean_arr = self.group[f"{feature}_mean"]
        if "complete" in mean_arr.attrs:
            mean_arr.attrs.update({"complete": False})
        sums_arr = self.group[f"{feature}_shard_sums"]
        if sums_arr.shape != shard_sums.shape:
            sums_arr.resize(shard_sums.shape)
        sums_arr[:] = shard_sums
        self.group[f"{feature}_in_stats"][: len(included)] = np.asarray(included, dtype=bool)
        self.group[f"{feature}_std"][:] = std.astype(np.float32)
        self.group[f"{feature}_std"].attrs.update(attrs)
        mean_arr[:] = mean.astype(np.float32)
        mean_arr.attrs.update({**attrs, "frames": frames, "complete": True})
        return mean.astype(np.float32), std.astype(np.float32)

    # --- end of a run ----------------------------------------------------------------------------------------
    def consolidate(self) -> None:
        """Refresh the consolidated metadata, so `xarray.open_zarr(path)` opens the store without warnings."""
        self._require_lock("consolidate")
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not (yet) part of the v3 spec; xarray reads it all the same.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(_zarr_store(self.path))
        self.group = zarr.open_group(store=_zarr_store(self.path), mode="r+", zarr_format=3, use_consolidated=False)


# --- helpers ------------------------------------------------------------------------------------------------

def _write_rows_of(arr: zarr.Array, rows: np.ndarray, values: np.ndarray) -> None:
    """arr[rows] = values in one write per contiguous span (zarr 3.1's orthogonal writes fail on sharded arrays):
    the span is read, the rows merged in, and the span written back, so rows between keep their bytes."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], np.asarray(values)[order]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo == len(rows):
        arr[lo:hi] = values
        return
    span = np.asarray(arr[lo:hi])
    if span.dtype.kind in "OTU" or values.dtype == object:
        span = span.astype(object)
    span[rows - lo] = values
    arr[lo:hi] = span


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix or "value", a, b)]


def _default_frame_times(timing: ClipTiming, frames: int) -> np.ndarray:
    if frames == timing.mel_frames:
        return np.arange(frames) * timing.hop_length / timing.sample_rate  # centred STFT: frame k centres on k * hop
    if frames == timing.video_frames:
        return timing.video_frame_times()
    return (np.arange(frames) + 0.5) * timing.clip_seconds / frames


def _create(path: Path, classes: tuple[str, ...], timing: ClipTiming, clips_per_shard: int) -> None:
    """Build an empty store in a temporary directory beside `path` and rename it into place (protocol step 2)."""
    tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(store=_zarr_store(tmp), mode="w-", zarr_format=3)
    group.attrs.update({"format_version": FORMAT_VERSION, "classes": list(classes), "timing": asdict(timing),
                        "clips_per_shard": int(clips_per_shard), "n_clips": 0, "n_events": 0, "generation": 0})
    for name in _LABEL_COLUMNS:
        group.create_array(name, shape=(0,), chunks=(_COLUMN_CHUNK,), dtype=str, fill_value="",
                           dimension_names=("clip",))
    group.create_array("class", shape=(len(classes),), dtype=str, fill_value="", dimension_names=("class",))[:] = \
        np.asarray(classes, dtype=object)
    group.create_array("duration", shape=(0,), chunks=(clips_per_shard,), dtype="float32", fill_value=np.nan,
                       dimension_names=("clip",))
    group.create_array("weak_labels", shape=(0, len(classes)), chunks=(_COLUMN_CHUNK, len(classes)), dtype="uint8",
                       fill_value=0, dimension_names=("clip", "class"))
    for name, dtype in _EVENT_COLUMNS.items():
        group.create_array(name, shape=(0,), chunks=(_EVENT_CHUNK,), dtype=dtype, fill_value=0,
                           dimension_names=("event",))
    if path.exists():  # an empty directory (checked by the caller) is replaced
        path.rmdir()
    _rename(tmp, path)


def _sweep_leftovers(path: Path) -> None:
    """Remove what killed writers leave behind (lock holder only): half-built stores, temporary files."""
    for leftover in path.parent.glob(f".{path.name}.creating-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in path.parent.glob(f".{path.name}{JOURNAL_SUFFIX}.*.tmp"):
        leftover.unlink(missing_ok=True)
    if path.is_dir():
        for leftover in path.rglob("*.partial"):  # zarr LocalStore's temporary files
            leftover.unlink(missing_ok=True)
