"""Per-bin mean / std of a feature over the training partitions, kept up to date incrementally.

Only real frames count (the feature's frame mask); raw features stay unnormalised in the store and the
training stage standardises with these statistics (paper 3.1.2: "per frequency bin standardization ...
based on the statistics of the training data"; the visual embeddings per dimension likewise, by default).

The store keeps the running sums (sum and sum of squares, float64) and which rows they include, so a rerun adds
only the rows that became present since (rows only ever go from absent to present), and does nothing when no
row changed: at DESED size a full pass reads several GB. A row leaving the training set (its partition was
corrected in the metadata) or incomplete statistics (a killed run) make it recompute everything. Per-shard
partial sums are computed in parallel with dask and combined in shard order, so the result does not depend on
scheduling.
"""

from __future__ import annotations

import dask
import numpy as np

from pipeline.manifest import TRAINING_PARTITIONS
from pipeline.store import FeatureStore


def _shard_sums(store: FeatureStore, feature: str, rows: np.ndarray) -> np.ndarray:
    """[sum, sum of squares, frames] over the real frames of `rows` (all in one shard), float64."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    data = np.asarray(store.group[feature][lo:hi])[rows - lo].astype(np.float64)
    mask = np.asarray(store.group[f"{feature}_mask"][lo:hi])[rows - lo]
    x = data[mask]  # (frames, dim)
    return np.stack([x.sum(axis=0), (x * x).sum(axis=0), np.full(x.shape[1], float(len(x)))])


def sums_over(store: FeatureStore, feature: str, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """(running sums (2, dim), frames) over the real frames of `rows`."""
    dim = store.group[feature].shape[2]
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    shards = rows // store.clips_per_shard
    parts = [dask.delayed(_shard_sums)(store, feature, rows[shards == s]) for s in np.unique(shards)]
    total = np.zeros((3, dim))
    for part in dask.compute(*parts, scheduler="threads"):
        total += part
    return total[:2], int(total[2, 0]) if len(parts) else 0


def update_feature_stats(store: FeatureStore, feature: str = "logmel",
                         partitions: tuple[str, ...] = TRAINING_PARTITIONS) -> dict:
    """Bring `feature`'s statistics up to date; returns their attributes plus `updated`: "none" (nothing changed),
    "incremental" (new rows added to the sums) or "full" (recomputed). Raises ValueError if no row qualifies."""
    want = np.isin(store.partitions(), partitions) & store.present(feature)
    if not want.any():
        raise ValueError(f"{store.path}: no {feature!r} rows present in partitions {list(partitions)}")
    attrs = {"partitions": list(partitions), "rows": int(want.sum())}
    state = store.stats_state(feature)
    if state is not None and store.group[f"{feature}_mean"].attrs.get("partitions") == list(partitions):
        sums, have, frames = state
        if np.array_equal(have, want):
            return {**attrs, "frames": int(frames), "updated": "none"}
        if not (have & ~want).any():  # only additions
            delta, delta_frames = sums_over(store, feature, np.flatnonzero(want & ~have))
            store.write_stats(feature, sums + delta, want, int(frames) + delta_frames, attrs)
            return {**attrs, "frames": int(frames) + delta_frames, "updated": "incremental"}
    sums, frames = sums_over(store, feature, np.flatnonzero(want))
    store.write_stats(feature, sums, want, frames, attrs)
    return {**attrs, "frames": frames, "updated": "full"}

