"""Per-bin mean / std of a feature over the training partitions, computed with dask over the store.

Only real frames count (the feature's frame mask); raw features stay unnormalised in the store and the
training stage standardises with these statistics (paper 3.1.2: "per frequency bin standardization ...
based on the statistics of the training data"; the visual embeddings per dimension likewise, by default).
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from pipeline.manifest import TRAINING_PARTITIONS
from pipeline.store import FeatureStore


def compute_feature_stats(store: FeatureStore, feature: str,
                          partitions: tuple[str, ...] = TRAINING_PARTITIONS) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, std, n_frames) over present rows of `partitions`, masked frames excluded."""
    rows = np.flatnonzero(np.isin(store.partitions(), partitions) & store.present(feature))
    if rows.size == 0:
        raise ValueError(f"{store.path}: no {feature!r} rows present in partitions {partitions}")
    data = da.from_zarr(store.group[feature])[rows]  # (r, T, D), one dask chunk per clip
    mask = da.from_zarr(store.group[f"{feature}_mask"])[rows][..., None]
    x = da.where(mask, data.astype(np.float64), 0.0)
    n = mask.sum()
    s1 = x.sum(axis=(0, 1))
    s2 = (x * x).sum(axis=(0, 1))
    n, s1, s2 = da.compute(n, s1, s2)
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32), int(n)


def update_feature_stats(store: FeatureStore, feature: str = "logmel",
                         partitions: tuple[str, ...] = TRAINING_PARTITIONS) -> dict:
    mean, std, n = compute_feature_stats(store, feature, partitions)
    attrs = {"partitions": list(partitions), "frames": n,
             "rows": int((np.isin(store.partitions(), partitions) & store.present(feature)).sum())}
    store.write_stats(feature, mean, std, attrs)
    return attrs
