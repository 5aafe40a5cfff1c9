"""`avsed migrate-store`: rewrite a format-1 store (one file per clip and array) in format 2 (sharded, with
coordinates and running statistics), keeping every row, label, event, provenance and mask bit for bit.

The new store is built beside the old one under the writer lock; then the old one is renamed to
`<store>.format1` (kept: its rows may be the only copy left of videos that have vanished since) and the new
one takes its name. A kill before the final renames leaves the old store untouched; rerunning finishes it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from avsed.core.labels import ClipTiming, Event
from avsed.core.manifest import Clip, parse_clip_name
from avsed.core.stats import update_feature_stats
from avsed.core.store import DEFAULT_CLIPS_PER_SHARD, FeatureStore, StoreError, StoreLock, lock_path

OLD_SUFFIX = ".format1"


@dataclass
class MigrationReport:
    store: Path
    backup: Path
    clips: int
    features: dict[str, int]  # feature -> rows present


def _old_group(path: Path) -> zarr.Group:
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: not a feature store (no zarr.json)")
    group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    if group.attrs.get("format_version") != 1:
        raise StoreError(f"{path}: store format {group.attrs.get('format_version')!r}, not 1: nothing to migrate")
    return group


def migrate_store(path: str | Path, clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
                  progress: bool = True) -> MigrationReport:
    path = Path(path)
    backup = path.parent / (path.name + OLD_SUFFIX)
    work = path.parent / (path.name + ".format2-migrating")
    with StoreLock(path, purpose="migrate-store"):
        if not path.exists() and backup.exists() and work.exists():  # killed between the two renames
            work.rename(path)
            return _report(path, backup)
        old = _old_group(path)
        classes = tuple(old.attrs["classes"])
        timing = ClipTiming(**old.attrs["timing"])
        ids = np.asarray(old["clip_id"][:]).astype(object)
        partition = np.asarray(old["partition"][:]).astype(object)
        supervision = np.asarray(old["supervision"][:]).astype(object)
        weak = np.asarray(old["weak_labels"][:])
        events: list[list[Event]] = [[] for _ in ids]
        for c, on, off, k in zip(*(np.asarray(old[n][:]) for n in ("event_clip", "event_onset", "event_offset",
                                                                       "event_class"))):
            events[int(c)].append(Event(float(on), float(off), classes[int(k)]))
        clips = [Clip(str(cid), str(p), str(s), Path(str(cid)), parse_clip_name(str(cid)),
                      tuple(c for c, on in zip(classes, w) if on), tuple(evs))
                 for cid, p, s, w, evs in zip(ids, partition, supervision, weak, events)]
        features = sorted(name for name, arr in old.arrays() if "provenance" in arr.attrs)
        if work.exists():
            shutil.rmtree(work)  # an earlier attempt that was killed: start the copy again
        with FeatureStore.create_or_open(work, classes, timing, clips_per_shard) as new:
            rows = new.sync_clips(clips).rows
            if rows != list(range(len(clips))):
                raise StoreError(f"{path}: duplicate clip ids in the old store; cannot migrate")
            durations = np.asarray(old["duration"][:], dtype=np.float32)
            for shard in range(new.n_shards):
                r = np.asarray(new.shard_rows(shard))
                new.set_durations(r, durations[r])
            for name in features:
                arr, mask = old[name], old[f"{name}_mask"]
                new.ensure_feature(name, arr.shape[1], arr.shape[2], str(arr.dtype), dict(arr.attrs["provenance"]))
                for shard in tqdm(range(new.n_shards), desc=f"migrate {name}", unit="shard", disable=not progress):
                    r = np.asarray(new.shard_rows(shard))
                    m = np.asarray(mask[r[0]: r[-1] + 1])
                    keep = m.any(axis=1)
                    if keep.any():
                        new.write_rows(name, r[keep], np.asarray(arr[r[0]: r[-1] + 1])[keep], m[keep])
                if f"{name}_mean" in old:
                    update_feature_stats(new, name, tuple(old[f"{name}_mean"].attrs.get("partitions", ())) or
                                         ("synthetic", "weak", "unlabelled"))
            new.consolidate()
        path.rename(backup)
        work.rename(path)
        lock_path(work).unlink(missing_ok=True)
    return _report(path, backup)


def _report(path: Path, backup: Path) -> MigrationReport:
    store = FeatureStore.open(path)
    return MigrationReport(path, backup, store.n_clips,
                           {name: int(store.present(name).sum()) for name in store.feature_names()})
