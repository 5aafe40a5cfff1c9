"""Per-bin mean / std of a feature over the training partitions, kept up to date shard by shard.

Only real frames count (the feature's frame mask); raw features stay unnormalised in the store and the
training stage standardises with these statistics (paper 3.1.2: "per frequency bin standardization ...
based on the statistics of the training data"; the visual embeddings per dimension likewise, by default).

The store keeps each shard's partial sums (sum, sum of squares, frames; float64) and which rows they include.
A rerun recomputes only the shards whose included rows changed (new rows, or a row whose partition was corrected
in the metadata) and does nothing when none did: at DESED size a full pass reads several GB. The total is
always the sum of the shards' partials in shard order, so the statistics do not depend on the history of
runs that built them (a rerun after a kill gives the uninterrupted store's bits). Shards are read in parallel
with dask.
"""

from __future__ import annotations

import dask
import numpy as np

from avsed.core.manifest import TRAINING_PARTITIONS
from avsed.core.store import FeatureStore


def _shard_sums(store: FeatureStore, feature: str, rows: np.ndarray) -> np.ndarray:
    """[sum, sum of squares, frames] (3, dim) over the real frames of `rows` (all in one shard), float64."""
    dim = store.group[feature].shape[2]
    if rows.size == 0:
        return np.zeros((3, dim))
    lo, hi = int(rows.min()), int(rows.max()) + 1
    data = np.asarray(store.group[feature][lo:hi])[rows - lo].astype(np.float64)
    mask = np.asarray(store.group[f"{feature}_mask"][lo:hi])[rows - lo]
    x = data[mask]  # (frames, dim)
    return np.stack([x.sum(axis=0), (x * x).sum(axis=0), np.full(dim, float(len(x)))])


def update_feature_stats(store: FeatureStore, feature: str = "logmel",
                         partitions: tuple[str, ...] = TRAINING_PARTITIONS) -> dict:
    """Bring `feature`'s statistics up to date; returns their attributes plus `updated`: "none" (nothing changed),
    "incremental" (some shards recomputed) or "full". Raises ValueError if no row qualifies."""
    want = np.isin(store.partitions(), partitions) & store.present(feature)
    if not want.any():
        raise ValueError(f"{store.path}: no {feature!r} rows present in partitions {list(partitions)}")
    attrs = {"partitions": list(partitions), "rows": int(want.sum())}
    n_shards, dim = store.n_shards, store.group[feature].shape[2]
    sums = np.zeros((n_shards, 3, dim))
    state = store.stats_state(feature)
    if state is not None and store.group[f"{feature}_mean"].attrs.get("partitions") == list(partitions):
        old, have = state
        sums[: len(old)] = old[:n_shards]
        todo = np.unique(np.flatnonzero(want != have) // store.clips_per_shard)
        updated = "incremental"
        if todo.size == 0:
            return {**attrs, "frames": int(store.group[f"{feature}_mean"].attrs["frames"]), "updated": "none"}
    else:
        todo = np.unique(np.flatnonzero(want) // store.clips_per_shard)
        updated = "full"
    rows_of = {int(k): np.asarray([r for r in store.shard_rows(int(k)) if want[r]], dtype=np.int64) for k in todo}
    parts = dask.compute(*[dask.delayed(_shard_sums)(store, feature, rows_of[int(k)]) for k in todo],
                         scheduler="threads")
    for k, part in zip(todo, parts):
        sums[int(k)] = part
    store.write_stats(feature, sums, want, attrs)
    return {**attrs, "frames": int(sums[:, 2, 0].sum()), "updated": updated}
